"""python -m gateway.media: list and get, for whichever store the environment configures (both are tested)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.config import Settings
from gateway.media import main
from gateway.storage.factory import open_store
from gateway.storage.base import Store
from gateway.storage.keys import AUDIO, IMAGES, MediaRef
from tests.fixtures.s3 import SeaweedS3, new_bucket_name

WHEN = datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC)
A = "15551234567"
B = "4915123456789"


def sid(n: int) -> str:
    return "MM" + f"{n:032x}"


@pytest.fixture(params=["filesystem", "minio"])
def configured(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Store]:
    """A store with a few objects of two senders, and the environment that points gateway.media at it."""
    if request.param == "filesystem":
        env = {"STORAGE": "filesystem", "MEDIA_ROOT": str(tmp_path / "media")}
    else:
        server: SeaweedS3 = request.getfixturevalue("s3_server")
        env = {key: str(value) for key, value in server.gateway_env(new_bucket_name()).items()}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    store = open_store(Settings.from_env(env))
    items = [
        (MediaRef(A, AUDIO, sid(1), 0), "audio/wav", {"audio": {"duration_ms": 4120}}, 0),
        (MediaRef(A, IMAGES, sid(2), 0), "image/jpeg", {"faces": [{"confidence": 0.9}] * 3}, 60),
        (MediaRef(A, IMAGES, sid(2), 1), "image/png", {"faces": [{"confidence": 0.8}]}, 60),
        (MediaRef(B, AUDIO, sid(3), 0), "audio/wav", {"audio": {"duration_ms": 185_000}}, 30),
    ]
    for ref, content_type, metadata, seconds in items:
        when = WHEN + timedelta(seconds=seconds)
        store.put(ref, f"data {ref.message_sid} {ref.index}".encode(), content_type=content_type,
                  metadata={**metadata, "received_at": when.strftime("%Y-%m-%dT%H:%M:%SZ")}, received_at=when)
    try:
        yield store
    finally:
        store.close()


def lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return capsys.readouterr().out.splitlines()


def test_list_everything_newest_first(configured: Store, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list"]) == 0
    header, *rows = lines(capsys)
    assert header.split() == ["KEY", "SIZE", "DETAIL", "RECEIVED", "AT"]
    assert [row.split()[0].rsplit("/", 1)[1] for row in rows] == [
        f"20250304T050707Z_{sid(2)}_1.png", f"20250304T050707Z_{sid(2)}_0.jpg",
        f"20250304T050637Z_{sid(3)}_0.wav", f"20250304T050607Z_{sid(1)}_0.wav",
    ]
    png, jpg, long_wav, wav = (row.split(maxsplit=2) for row in rows)
    assert png[1] == str(len(f"data {sid(2)} 1")) and png[2].split("  ")[0].strip() == "1 face"
    assert jpg[2].startswith("3 faces") and jpg[2].endswith("2025-03-04T05:07:07Z")
    assert long_wav[0].startswith(f"whatsapp/{B}/audio/") and long_wav[2].startswith("3 min 05 s")
    assert wav[2].startswith("4.1 s") and wav[2].endswith("2025-03-04T05:06:07Z")


def test_list_one_sender_and_kind(configured: Store, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", "--sender", f"+{A}", "--kind", "images"]) == 0
    rows = lines(capsys)[1:]
    assert len(rows) == 2 and all(row.startswith(f"whatsapp/{A}/images/") for row in rows)
    assert main(["list", "--sender", "15550000000"]) == 0
    assert lines(capsys) == ["nothing stored for 15550000000"]


def test_get_writes_the_object(configured: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                               monkeypatch: pytest.MonkeyPatch) -> None:
    key = configured.list(B)[0].key
    out = tmp_path / "out.wav"
    assert main(["get", key, "-o", str(out)]) == 0
    assert out.read_bytes() == f"data {sid(3)} 0".encode()
    monkeypatch.chdir(tmp_path)
    assert main(["get", key]) == 0
    assert (tmp_path / key.rsplit("/", 1)[1]).read_bytes() == out.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "media") == sorted([out.name, key.rsplit("/", 1)[1]])


def test_get_to_stdout(configured: Store, capfdbinary: pytest.CaptureFixture[bytes]) -> None:
    key = configured.list(A, AUDIO)[0].key
    assert main(["get", key, "-o", "-"]) == 0
    assert hashlib.sha256(capfdbinary.readouterr().out).digest() == hashlib.sha256(f"data {sid(1)} 0".encode()).digest()


def test_get_of_a_missing_or_malformed_key(configured: Store, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["get", f"whatsapp/{A}/audio/20250304T050607Z_{sid(9)}_0.wav", "-o", "/dev/null"]) == 1
    assert "no object" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        main(["get", "../../etc/passwd"])
    assert exited.value.code == 2
    with pytest.raises(SystemExit):
        main(["list", "--sender", "../x"])


def test_unusable_storage_is_a_clear_error(s3_server: SeaweedS3, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    for key, value in s3_server.gateway_env(new_bucket_name(), create_bucket=False, MINIO_SECRET_KEY="wrong").items():
        monkeypatch.setenv(key, str(value))
    assert main(["list"]) == 1
    assert "refused MINIO_SECRET_KEY" in capsys.readouterr().err
    monkeypatch.setenv("MINIO_SECRET_KEY", s3_server.gateway_env("x", create_bucket=False)["MINIO_SECRET_KEY"])  # right key, no bucket
    assert main(["list"]) == 1
    assert "does not exist" in capsys.readouterr().err
    monkeypatch.setenv("STORAGE", "s3")
    assert main(["list"]) == 2
