#!/bin/sh
# Regenerates the images' hash-locked dependency files from pyproject.toml (`make lock`), with uv:
#   gateway.txt, audio.txt, vision.txt  the service images (python:3.11 base)
#   triton.txt                          torch & co. for Triton's python backend (the Triton image's Python 3.12)
# tests/deploy checks that every lock still pins what pyproject.toml asks for.
set -eu
cd "$(dirname "$0")/.."
uv=${UV:-.venv/bin/uv}
compile() {
  "$uv" pip compile pyproject.toml --quiet --generate-hashes --python-platform x86_64-manylinux_2_28 \
    --custom-compile-command "make lock" "$@"
}
for extra in gateway audio vision; do
  compile --extra "$extra" --python-version 3.11 -o "requirements/$extra.txt"
done
compile --extra model --python-version 3.12 -o requirements/triton.txt
