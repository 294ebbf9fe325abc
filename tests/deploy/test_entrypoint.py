"""The image starts the server as `make run` does: same module, same settings, two exceptions."""

from __future__ import annotations

import os
import posixpath
from pathlib import Path

import pytest

from tests.deploy.files import ROOT, copied_files, make_run_command
from tests.deploy.project import STAGE, VOLUME_DIR, image_argv, image_env

# What differs on purpose: a container listens on all interfaces (Compose publishes loopback
# only), and the autotune cache lives in the volume so restarts skip tuning.
IMAGE_ONLY = {"host": "0.0.0.0", "autotune_cache": f"{VOLUME_DIR}/autotune.json"}


def _module_args(argv: list[str]) -> list[str]:
    """The arguments after ``python -m service``."""
    assert Path(argv[0]).name.startswith("python"), argv
    assert argv[1:3] == ["-m", "service"], argv
    return argv[3:]


def _settings(argv: list[str], env: dict[str, str], monkeypatch):
    """What the service itself makes of these flags and this environment."""
    main = pytest.importorskip("service.__main__")
    for key in [k for k in os.environ if k.startswith("GEMMSERVE_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(ROOT)
    return main.parse_settings(argv).model_dump(mode="json")


def _in_repository(image_path: str) -> str:
    """The repository directory a model directory in the image was copied from."""
    copied = copied_files(STAGE["runtime"])
    inside = {src for dest, src in copied.items() if posixpath.dirname(dest) == image_path}
    assert inside, f"{image_path} is not a directory the Dockerfile fills"
    (directory,) = {posixpath.dirname(src) for src in inside}
    return directory


@pytest.mark.parametrize("variant", ["gpu", "cpu"])
def test_image_serves_with_the_settings_of_make_run(variant: str, monkeypatch) -> None:
    make_argv = make_run_command((ROOT / "Makefile").read_text())
    make = _settings(_module_args(make_argv), {}, monkeypatch)

    env = image_env(variant)
    model_in_image = env.pop("GEMMSERVE_MODEL")
    assert posixpath.isabs(model_in_image)
    env["GEMMSERVE_MODEL"] = _in_repository(model_in_image)
    image = _settings(_module_args(image_argv()), env, monkeypatch)

    image_models = [Path(ROOT, path).resolve() for path in image.pop("model")]
    assert image_models == [Path(ROOT, path).resolve() for path in make.pop("model")]
    for name, expected in IMAGE_ONLY.items():
        assert image.pop(name) == expected
        make.pop(name)
    assert image == make


def test_image_gives_no_flag_so_every_setting_stays_an_environment_variable() -> None:
    # Flags would win over GEMMSERVE_* and silently ignore what Compose or Kubernetes set.
    assert _module_args(image_argv()) == []
