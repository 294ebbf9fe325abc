"""RELIABILITY.md cases 21 and 22: a corrupt, foreign or unwritable autotune cache.

Cases 19 (loading) and 20 (SIGTERM under load) are in tests/service/test_lifecycle.py.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.reliability.harness import (
    Server,
    http,
    predict_png,
    random_pngs,
    raw_output,
)


@pytest.fixture(scope="module")
def reference(server):
    """Images and the answers a plain server gives them."""
    images = random_pngs(6, seed=19)
    return images, [raw_output(predict_png(server.url, image)) for image in images]


def assert_same_answers(url: str, reference, rtol=1e-4, atol=1e-5) -> None:
    images, expected = reference
    for image, want in zip(images, expected, strict=True):
        np.testing.assert_allclose(raw_output(predict_png(url, image)), want, rtol=rtol, atol=atol)


def cache_status(url: str) -> str:
    return http.get(url + "/model").json()["autotune"]["cache_status"]


def start_with_cache(server_factory, cache: Path) -> Server:
    return server_factory("--autotune-cache", str(cache), "--autotune-mode", "tune-missing")


FOREIGN_HEADER = {
    "schema": 1,
    "engine_version": "0.0.1",
    "kernel_hash": "0" * 64,
    "device": {"cpu": "another machine"},
}


@pytest.mark.parametrize(
    "content,status",
    [
        (np.random.default_rng(21).bytes(4096), "corrupt"),
        (json.dumps({"header": FOREIGN_HEADER, "entries": {"k": {"winner": "x"}}}).encode(),
         "foreign"),
    ],
    ids=["random-bytes", "foreign-header"],  # other corrupt shapes: tests/engine/test_autotune.py
)  # fmt: skip
def test_corrupt_or_foreign_cache_is_ignored_and_kept(
    server_factory, tmp_path, reference, content, status
):
    """Case 21: the service starts, warns, answers right, and leaves the file byte for byte."""
    cache = tmp_path / "autotune.json"
    cache.write_bytes(content)
    server = start_with_cache(server_factory, cache)
    try:
        assert cache_status(server.url) == status
        assert_same_answers(server.url, reference, rtol=1e-3, atol=1e-4)
        assert cache.read_bytes() == content
        assert "autotune cache" in server.log() and "ignored" in server.log()
        assert "Traceback" not in server.log()
    finally:
        server.stop()
    assert cache.read_bytes() == content


def read_only_dir(tmp_path: Path) -> Path:
    """A directory this process cannot write to (root ignores modes: use read-only /sys)."""
    directory = tmp_path / "read-only"
    directory.mkdir()
    directory.chmod(0o555)
    if os.access(directory, os.W_OK):
        directory = Path("/sys")
    probe = subprocess.run(["touch", str(directory / "probe")], capture_output=True)
    if probe.returncode == 0:
        pytest.skip("no read-only directory available here")
    return directory


def test_read_only_cache_directory_keeps_results_in_memory(server_factory, tmp_path, reference):
    """Case 22: tuning runs, its results stay in memory, a warning says so, the service starts."""
    directory = read_only_dir(tmp_path)
    cache = directory / "gemmserve-autotune.json"
    server = start_with_cache(server_factory, cache)
    try:
        info = http.get(server.url + "/model").json()["autotune"]
        assert info["entries"] > 0, info
        assert not cache.exists()
        assert "not written" in server.log() and "kept in memory" in server.log()
        assert_same_answers(server.url, reference, rtol=1e-3, atol=1e-4)
    finally:
        server.stop()
