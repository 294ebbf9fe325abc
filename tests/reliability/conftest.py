"""Fixtures: a small model directory and one running server per test module."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.reliability.harness import Server, start
from tests.service.models import write_model_dir


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    """A 3-channel 16x16 CNN with ten labelled classes (model.onnx + model.json)."""
    return write_model_dir(tmp_path_factory.mktemp("models"), "tiny")


@pytest.fixture(scope="session")
def server_factory(tmp_path_factory, model_dir):
    """``serve(*flags, faults=...)`` starts a ready server; all are stopped at the end."""
    started: list[Server] = []

    def serve(*flags: str, faults=(), model: Path | None = None) -> Server:
        log_path = tmp_path_factory.mktemp("server") / "server.log"
        server = start(model or model_dir, log_path, *flags, faults=faults)
        started.append(server)
        return server

    yield serve
    for server in started:
        server.stop()


@pytest.fixture(scope="module")
def server(server_factory) -> Server:
    """A server with the default settings, shared by the tests of one module."""
    server = server_factory()
    yield server
    server.stop()
