"""``--target-p99-ms``: a request that the queue ahead would answer too late is refused at once
(429 + Retry-After), one that an idle engine can answer in time is served."""

from __future__ import annotations

import httpx
import pytest

from service.admission import Admission
from service.config import Settings
from tests.service.conftest import Server, delta, engine_held, npy_bytes, random_batch

NPY = {"Content-Type": "application/x-npy"}
BATCH_MS = 30  # every engine batch sleeps this long (and says so in its warm-up times)


@pytest.fixture(scope="module")
def slo_server(model_dir, tmp_path_factory):
    hold = tmp_path_factory.mktemp("hold") / "hold"
    args = ["--model", str(model_dir), "--target-p99-ms", "50", "--max-batch-size", "4"]
    server = Server(args, faults=["--delay-ms", str(BATCH_MS)], hold_file=hold).wait_ready()
    yield server
    server.stop()


def test_idle_engine_serves_busy_engine_refuses_what_would_miss_the_target(slo_server):
    x = npy_bytes(random_batch(1, seed=950))
    assert httpx.post(slo_server.url + "/predict", content=x, headers=NPY).status_code == 200
    before = slo_server.metrics()
    with engine_held(slo_server):  # one batch running: ours would follow it, 60+ ms from now
        refused = httpx.post(slo_server.url + "/predict", content=x, headers=NPY)
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
    assert refused.json()["error"]["code"] == "would_miss_target"
    assert (
        delta(before, slo_server.metrics(), "gemmserve_requests_rejected_total", reason="slo") == 1
    )
    assert httpx.post(slo_server.url + "/predict", content=x, headers=NPY).status_code == 200


def test_estimate_counts_the_running_batch_the_queue_in_full_batches_and_ours(model_dir):
    admission = Admission(Settings(model=model_dir, target_p99_ms=50, max_delay_ms=2))
    admission.set_costs({1: 0.010, 2: 0.012, 4: 0.020}, max_batch_size=4)
    # running 3 (bucket 4: 20 ms), then 9 queued + 1 ours = two full batches (40) + one of 2 (12)
    assert admission.estimate_s(1, depth=9, running=3, slowdown=1.0) == pytest.approx(0.074)
    assert admission.estimate_s(1, depth=0, running=0, slowdown=2.0) == pytest.approx(0.022)
