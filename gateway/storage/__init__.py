"""Where kept media goes: one Store interface (base.py) with a filesystem and an S3 implementation.

    keys.py         the key layout, markers and the checks on keys and refs (pure; no storage touched)
    base.py         the Store protocol, StoredObject and the errors every store raises
    filesystem.py   STORAGE=filesystem: files under MEDIA_ROOT
    s3.py           STORAGE=minio: an S3 bucket (MinIO, SeaweedFS, AWS) with the minio SDK
    s3_metadata.py  an object's metadata as S3 headers within their 2 KB
    factory.py      ``open_store(settings)``: the one STORAGE names, checked

Nothing is imported here, so a module that needs only the key rules does not load a store with them.
"""
