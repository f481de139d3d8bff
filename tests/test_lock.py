"""The lock in requirements/ is whole, agrees with pyproject.toml, and is what the tests run on.

A dependency added to pyproject.toml without `tools/lock.sh`, a range that the locked
release no longer satisfies, an entry without hashes, or a package installed by hand
beside the lock fails here, before it reaches a fresh machine.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version
from support import REPO

sys.path.insert(0, str(REPO / "tools"))
import lock  # noqa: E402  (tools/ is not a package)


def _pyproject_requirements() -> list[Requirement]:
    """korani's own requirements and those of every extra, self-references (korani[hf]) left out."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    specs = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        specs += extra
    return [r for r in map(Requirement, specs) if canonicalize_name(r.name) != "korani"]


def test_every_locked_entry_is_exact_and_hashed():
    for path in (lock.LOCK, lock.TORCH):
        entries = lock.blocks(path.read_text(encoding="utf-8"))
        assert entries, path
        for block in entries:
            assert "==" in block[0], block[0]
            assert any(line.strip().startswith("--hash=sha256:") for line in block), block[0]


def test_every_requirement_of_pyproject_is_locked_within_its_range():
    pins = lock.pins()
    problems = []
    for requirement in _pyproject_requirements():
        name = canonicalize_name(requirement.name)
        if name not in pins:
            problems.append(f"{requirement}: not in the lock (run tools/lock.sh)")
            continue
        version = Version(lock.public(pins[name]))
        if not requirement.specifier.contains(version, prereleases=True):
            problems.append(f"{requirement}: locked at {pins[name]}")
    assert not problems, problems


def test_the_build_tools_agree_with_the_lock():
    """setuptools builds korani (install.sh, --no-build-isolation) and the sdists: one version."""
    build = {}
    for line in (REPO / "requirements" / "build-constraints.txt").read_text(encoding="utf-8").splitlines():
        if "==" in line and not line.startswith(("#", " ")):
            name, _, version = line.partition("==")
            build[canonicalize_name(name)] = version.strip()
    pins = lock.pins()
    assert "scikit-build-core" in build and "setuptools" in build
    assert {n: v for n, v in build.items() if n in pins and pins[n] != v} == {}


def test_the_environment_the_tests_run_in_is_the_lock():
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools" / "lock.py"), "check"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
