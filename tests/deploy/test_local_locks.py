"""The local venv installs from hash-locked files, `make run` only what running needs.

The venv once installed from pyproject's open ranges, and a new python-dotenv release broke `make run` on
every fresh clone. Now `make run` installs requirements/run.txt and `make test` adds requirements/test.txt,
both compiled by `make lock` (requirements/lock.sh) and installed with --require-hashes.
"""

from __future__ import annotations

import re
import subprocess
import tomllib

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.deploy import locks, tools

PROJECT = tomllib.loads((tools.REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
RUN_EXTRAS = ("gateway", "audio", "vision", "model", "run")


def _asked(extras: tuple[str, ...]) -> list[Requirement]:
    lines = [*PROJECT["dependencies"]]
    for extra in extras:
        lines += PROJECT["optional-dependencies"][extra]
    return [Requirement(line) for line in lines]


def _recipe(target: str) -> str:
    """The commands make would run for ``target`` in a venv that has nothing yet (dry run, nothing executed)."""
    done = subprocess.run(
        ["make", "-n", "-B", target, "VENV=/nonexistent-venv"], cwd=tools.REPO, capture_output=True, text=True, check=True
    )
    return done.stdout


@pytest.mark.parametrize(("lock", "extras"), [("run", RUN_EXTRAS), ("test", (*RUN_EXTRAS, "dev"))])
def test_lock_pins_everything_pyproject_asks_for(lock: str, extras: tuple[str, ...]) -> None:
    pins = locks.pins(lock)
    for requirement in _asked(extras):
        key = canonicalize_name(requirement.name)
        assert key in pins, f"requirements/{lock}.txt lacks {requirement.name}: run `make lock`"
        assert requirement.specifier.contains(pins[key], prereleases=True), (
            f"requirements/{lock}.txt pins {requirement.name}=={pins[key]}, outside {requirement.specifier}: run `make lock`"
        )


def test_the_test_venv_runs_the_versions_make_run_installs() -> None:
    run, test = locks.pins("run"), locks.pins("test")
    changed = {name: (version, test.get(name)) for name, version in run.items() if test.get(name) != version}
    assert not changed, f"requirements/test.txt differs from run.txt on {changed}: run `make lock`"


def test_make_run_installs_no_test_tool() -> None:
    dev = {canonicalize_name(Requirement(line).name) for line in PROJECT["optional-dependencies"]["dev"]}
    # Also needed to run: tritonclient by the vision service, packaging by several runtime packages.
    leaked = (dev & set(locks.pins("run"))) - {"tritonclient", "packaging"}
    assert not leaked, f"requirements/run.txt installs test-only packages: {sorted(leaked)}"
    nodeps = (tools.REPO / "requirements" / "run-nodeps.txt").read_text(encoding="utf-8")
    assert "ultralytics" not in nodeps and "insightface" not in nodeps


@pytest.mark.parametrize("name", ["run-nodeps", "test-nodeps"])
def test_wheels_installed_without_dependencies_are_pinned_with_hashes(name: str) -> None:
    assert locks.pins(name)


def test_make_run_installs_only_the_run_locks_with_hashes() -> None:
    recipe = _recipe("run")
    installs = [line for line in recipe.splitlines() if "pip install" in line]
    assert installs, recipe
    for line in installs:
        assert "--require-hashes" in line or re.search(r"--no-deps -e \.$", line), line
    assert "requirements/run.txt" in recipe and "requirements/run-nodeps.txt" in recipe
    assert "requirements/test" not in recipe


def test_make_test_adds_the_test_locks_with_hashes() -> None:
    recipe = _recipe("test")
    assert "--require-hashes -r requirements/test.txt" in recipe
    assert "--require-hashes --no-deps -r requirements/test-nodeps.txt" in recipe
    assert re.search(r"^\S*python -m pytest$", recipe, re.M), "make test runs the suite as the README says"
