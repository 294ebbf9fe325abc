"""Installed dependencies carry the known CVE fixes (RELIABILITY.md "Defaults to ship"), and
pyproject.toml requires at least those versions so a fresh ``make test`` cannot go below them."""

from __future__ import annotations

import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"
MINIMUMS = {
    "python-multipart": "0.0.31",
    "starlette": "1.6",
    "pillow": "12.3",
    "h11": "0.16",
}


@pytest.mark.parametrize("name", sorted(MINIMUMS))
def test_installed_version_has_the_fix(name):
    assert Version(version(name)) >= Version(MINIMUMS[name]), (name, version(name))


def declared() -> dict[str, Requirement]:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    return {Requirement(r).name.lower(): Requirement(r) for r in project["dependencies"]}


@pytest.mark.parametrize("name", sorted(MINIMUMS))
def test_pyproject_requires_at_least_the_fix(name):
    """Every version the requirement allows is at or above the fixed release."""
    requirement = declared()[name]
    floors = [Version(s.version) for s in requirement.specifier if s.operator in (">=", "==", "~=")]
    assert floors and max(floors) >= Version(MINIMUMS[name]), str(requirement)
