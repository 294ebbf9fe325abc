"""A service subprocess on the bundled model, shared by the load-test payload tests."""

from __future__ import annotations

import json

import pytest

from loadtests.payloads import ModelShape
from loadtests.service_proc import CLEAN_EXIT_CODES, DEFAULT_MODEL, ServiceProcess, http_get


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    """``python -m service`` on a free loopback port; must stop cleanly on SIGTERM."""
    log_path = tmp_path_factory.mktemp("svc") / "service.log"
    proc = ServiceProcess(DEFAULT_MODEL, log_path, {"autotune_mode": "off"}).start()
    yield proc
    assert proc.stop() in CLEAN_EXIT_CODES, proc.log_tail()


@pytest.fixture(scope="module")
def shape(service) -> ModelShape:
    status, body = http_get(service.url + "/model")
    assert status == 200
    return ModelShape.from_info(json.loads(body))
