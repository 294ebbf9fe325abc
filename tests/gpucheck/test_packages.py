"""The wheelhouse: its list agrees with pyproject.toml, and ``gpucheck.packages`` really installs
wheels offline into a target folder and imports them from there."""

from __future__ import annotations

import tomllib
import zipfile

from packaging.requirements import Requirement

from gpucheck.packages import main as packages_main
from gpucheck.steps import REPO, REQUIREMENTS, SERVICE_MODULES


def requirements(lines) -> dict[str, Requirement]:
    found = [Requirement(line) for line in lines if line.strip() and not line.startswith("#")]
    return {r.name.lower(): r for r in found}


def test_wheelhouse_list_has_pyprojects_minimum_versions():
    listed = requirements(REQUIREMENTS.read_text().splitlines())
    project = requirements(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
                           ["dependencies"])  # fmt: skip
    for name in ("fastapi", "starlette", "uvicorn", "pydantic", "pydantic-settings",
                 "python-multipart", "h11"):  # fmt: skip
        assert str(listed[name].specifier) == str(project[name].specifier), name
    assert "httptools" in listed  # uvicorn[standard]'s parser, which the service's protocol uses


def test_nothing_to_install_where_the_service_already_imports(tmp_path, capsys):
    assert packages_main(["--target", str(tmp_path / "site")]) == 0
    assert capsys.readouterr().out.startswith(f"already importable here: {SERVICE_MODULES[0]}")
    assert not (tmp_path / "site").exists()


def test_missing_wheelhouse_is_a_failure_saying_what_to_do(tmp_path, capsys):
    argv = ["--target", str(tmp_path / "site"), "--wheelhouse", str(tmp_path / "none"),
            "--modules", "gpucheck_probe"]  # fmt: skip
    assert packages_main(argv) == 1
    assert "run `make gpu-wheelhouse`" in capsys.readouterr().out


def write_wheel(folder, value: int) -> None:
    """A minimal pure-Python wheel of ``gpucheck_probe`` (what pip needs of one: the package,
    METADATA, WHEEL, RECORD)."""
    info = "gpucheck_probe-1.0.dist-info"
    files = {
        "gpucheck_probe/__init__.py": f"VALUE = {value}\n",
        f"{info}/METADATA": "Metadata-Version: 2.1\nName: gpucheck-probe\nVersion: 1.0\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n",
    }
    files[f"{info}/RECORD"] = "".join(f"{name},,\n" for name in [*files, f"{info}/RECORD"])
    folder.mkdir()
    with zipfile.ZipFile(folder / "gpucheck_probe-1.0-py3-none-any.whl", "w") as wheel:
        for name, text in files.items():
            wheel.writestr(name, text)


def test_offline_install_into_a_target_and_import_from_it(tmp_path, capsys):
    write_wheel(tmp_path / "wheels", 42)
    listed = tmp_path / "wheelhouse.txt"
    listed.write_text("gpucheck-probe>=1.0\n")
    target = tmp_path / "site"
    argv = ["--target", str(target), "--wheelhouse", str(tmp_path / "wheels"),
            "--requirements", str(listed), "--modules", "gpucheck_probe"]  # fmt: skip
    assert packages_main(argv) == 0, capsys.readouterr().out
    assert "installed 1 distributions" in capsys.readouterr().out
    assert (target / "gpucheck_probe" / "__init__.py").read_text() == "VALUE = 42\n"
