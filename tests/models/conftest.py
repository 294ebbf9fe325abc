"""Fixtures for the bundled digits model: its files, its data split, and a real server for it."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]
DIGITS_DIR = REPO / "models" / "digits"
MIN_ACCURACY = 0.97


def _load_digits_data() -> ModuleType:
    # models/ is a folder of scripts, not a package: load the shared data module by path.
    spec = importlib.util.spec_from_file_location("digits_data", REPO / "models" / "digits_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


digits_data = _load_digits_data()


@pytest.fixture(scope="session")
def model_json() -> dict:
    return json.loads((DIGITS_DIR / "model.json").read_text())


@pytest.fixture(scope="session")
def split():
    return digits_data.load_split()


@pytest.fixture(scope="session")
def held_out_pngs(split) -> list[bytes]:
    """The held-out images as 32x32 dark-on-white PNGs."""
    return [digits_data.render_png(image, scale=4) for image in split.held_out_images]


@pytest.fixture(scope="session")
def digits_server():
    """`python -m service --model models/digits` on a free loopback port."""
    try:
        import service.app  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"the service is not importable yet: {exc}")
    from tests.service.conftest import Server

    server = Server(["--model", "models/digits"]).wait_ready()
    yield server
    server.stop()
