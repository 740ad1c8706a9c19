#!/bin/sh
# Regenerates the hash-locked dependency files from pyproject.toml (`make lock`), with uv:
#   gateway.txt, audio.txt, vision.txt  the service images (python:3.11 base)
#   triton.txt                          torch & co. for Triton's python backend (the Triton image's Python 3.12)
#   run.txt                             the local venv for `make run` (every service, the model build, honcho)
#   test.txt                            what `make test` adds, at the versions run.txt pins
#   run-nodeps.txt, test-nodeps.txt     wheels installed without their dependencies (see the .in files)
# tests/deploy checks that every lock still pins what pyproject.toml asks for.
set -eu
cd "$(dirname "$0")/.."
uv=${UV:-.venv/bin/uv}
platform=x86_64-manylinux_2_28
compile() {
  "$uv" pip compile --quiet --generate-hashes --python-platform "$platform" \
    --custom-compile-command "make lock" "$@"
}
for extra in gateway audio vision; do
  compile pyproject.toml --extra "$extra" --python-version 3.11 -o "requirements/$extra.txt"
done
compile pyproject.toml --extra model --python-version 3.12 -o requirements/triton.txt
compile pyproject.toml --python-version 3.11 -o requirements/run.txt \
  --extra gateway --extra audio --extra vision --extra model --extra run
# -c run.txt: the test venv is the run venv plus the test tools, never other versions of what runs.
compile pyproject.toml --python-version 3.11 -o requirements/test.txt --all-extras -c requirements/run.txt
# nvidia-pytriton ships manylinux_2_35 wheels only (the local machine's Debian 12 has glibc 2.36).
platform=x86_64-manylinux_2_35
for part in run test; do
  compile "requirements/$part-nodeps.in" --no-deps --python-version 3.11 -o "requirements/$part-nodeps.txt"
done
