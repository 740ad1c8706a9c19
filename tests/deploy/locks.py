"""Reading the hash-locked requirement files in requirements/ (the images' and the local venv's)."""

from __future__ import annotations

import re

from packaging.utils import canonicalize_name

from tests.deploy import tools


def pins(name: str) -> dict[str, str]:
    """name -> pinned version of requirements/<name>.txt, checking every pin carries hashes."""
    text = (tools.REPO / "requirements" / f"{name}.txt").read_text(encoding="utf-8")
    found: dict[str, str] = {}
    for block in re.split(r"\n(?=[A-Za-z0-9])", text):
        head = block.strip().splitlines()[0] if block.strip() else ""
        if not head or head.startswith("#"):
            continue
        match = re.match(r"([A-Za-z0-9_.\-\[\]]+)==([^\s;\\]+)", head)
        assert match, f"requirements/{name}.txt: {head!r} is not pinned with =="
        assert "--hash=sha256:" in block, f"requirements/{name}.txt: {match.group(1)} has no hash"
        found[canonicalize_name(match.group(1))] = match.group(2)
    return found
