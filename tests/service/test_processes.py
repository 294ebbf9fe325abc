"""The process model over real HTTP: a supervisor, one engine process and HTTP workers.

Each case kills or stops real processes: the engine (kill -9) with requests in flight, a worker
(kill -9) under load, and the whole service (SIGTERM) under load. After each, nothing is left
behind: no orphan process and no shared-memory segment of the service in /dev/shm.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest

from tests.service.conftest import (
    Server,
    delta,
    engine_held,
    metric,
    npy_bytes,
    random_batch,
    wait_for,
)
from tests.service.test_batching_http import check_answers, post_concurrently

NPY = {"Content-Type": "application/x-npy"}
SHM = Path("/dev/shm")


def processes(server) -> dict:
    return httpx.get(server.url + "/model", timeout=10).json()["processes"]


def alive(pid: int) -> bool:
    """A running process (a zombie, dead but not yet reaped, counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def segments(supervisor_pid: int) -> set[str]:
    """The service's shared-memory segments now in /dev/shm."""
    return {p.name for p in SHM.glob(f"gemmserve-{supervisor_pid}-*")}


def expected_segments(supervisor_pid: int, workers: list[int]) -> set[str]:
    """The board and one arena per live worker (its first, for the one model): nothing else."""
    prefix = f"gemmserve-{supervisor_pid}-"
    return {prefix + "board"} | {f"{prefix}w{i}-{pid}-0" for i, pid in enumerate(workers)}


def wait_until(predicate, timeout_s: float = 60, what: str = "condition") -> None:
    end = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < end, f"{what} never happened"
        time.sleep(0.05)


def post(server, x: np.ndarray) -> httpx.Response:
    return httpx.post(
        server.url + "/predict?raw=true", content=npy_bytes(x), headers=NPY, timeout=60
    )


@contextlib.contextmanager
def queued(server, inputs: np.ndarray) -> Iterator[list]:
    """While the block runs, one request per image waits in the queue behind a held engine;
    their responses are in the list once the block is over."""
    responses: list = []
    with engine_held(server):
        sender = threading.Thread(
            target=lambda: responses.extend(post_concurrently(server.url, inputs))
        )
        sender.start()
        wait_for(server, "gemmserve_queue_depth", lambda v: v == len(inputs))
        yield responses
    sender.join(30)


@pytest.fixture
def crash_server(model_dir, tmp_path):
    """A fresh two-worker service around the fault-injecting engine (held by a file)."""
    args = ["--model", str(model_dir), "--workers", "2", "--max-batch-size", "8"]
    server = Server(args, faults=[], hold_file=tmp_path / "hold").wait_ready()
    yield server
    server.stop()


def test_model_lists_every_process_and_they_are_the_supervisors_children(server):
    found = processes(server)
    assert found["supervisor"] == server.proc.pid
    assert len(found["workers"]) == 2 and len(set(found["workers"])) == 2
    for pid in (found["engine"], *found["workers"]):
        assert alive(pid) and parent_of(pid) == server.proc.pid
    # Each worker makes its arena once it has the model (the one that answered /readyz first may
    # not be the only one ready yet).
    wait_until(
        lambda: segments(server.proc.pid) == expected_segments(server.proc.pid, found["workers"]),
        what="one arena per worker and the board, nothing else",
    )


def test_metrics_are_the_whole_services(server):
    """Counts from every worker in one scrape, whichever worker answers it."""
    before = server.metrics()
    inputs = random_batch(12, seed=900)
    for x in inputs:  # a new connection each: the kernel spreads them over the workers
        assert post(server, x[None]).status_code == 200
    after = server.metrics()
    assert delta(before, after, "gemmserve_request_duration_seconds_count", route="/predict") == 12
    assert delta(before, after, "gemmserve_images_total") == 12
    assert metric(after, "gemmserve_up", process="worker") == 2
    assert metric(after, "gemmserve_up", process="engine") == 1
    assert metric(after, "gemmserve_up", process="supervisor") == 1


def test_engine_killed_with_requests_in_flight(crash_server, reference):
    server = crash_server
    old = processes(server)
    inputs = random_batch(6, seed=901)
    with queued(server, inputs) as responses:
        os.kill(old["engine"], signal.SIGKILL)
        killed = time.monotonic()
    assert time.monotonic() - killed < 10  # answered at once, not at their deadline
    for response in responses:
        assert response.status_code == 503, response.text
        assert response.headers["Retry-After"] and response.json()["error"]["code"]
    assert httpx.get(server.url + "/readyz").status_code == 503
    server.wait_ready()
    new = processes(server)
    assert new["engine"] != old["engine"] and new["workers"] == old["workers"]
    metrics = server.metrics()
    assert metric(metrics, "gemmserve_autotune_choices", source="misses") == 0  # nothing re-tuned
    assert metric(metrics, "gemmserve_autotune_choices", source="hits") > 0
    check_answers(post_concurrently(server.url, inputs), inputs, reference)
    assert segments(server.proc.pid) == expected_segments(server.proc.pid, new["workers"])


def test_worker_killed_under_load_is_replaced_while_the_other_serves(crash_server, reference):
    server = crash_server
    old = processes(server)
    inputs = random_batch(40, seed=902)
    stop = threading.Event()
    statuses: list[int] = []

    def client() -> None:
        while not stop.is_set():
            try:  # a connection the killed worker held is lost with it: that is all
                statuses.append(post(server, inputs[len(statuses) % 40][None]).status_code)
            except httpx.TransportError:
                statuses.append(-1)

    with ThreadPoolExecutor(4) as pool:
        for _ in range(4):
            pool.submit(client)
        wait_until(lambda: len(statuses) > 20, what="load")
        os.kill(old["workers"][0], signal.SIGKILL)
        killed_at = len(statuses)
        wait_until(lambda: processes(server)["workers"][0] != old["workers"][0], what="restart")
        new = processes(server)
        # Until the new worker has its arena (it has connected to the engine: ready), the other
        # worker alone answers.
        wait_until(
            lambda: segments(server.proc.pid) == expected_segments(server.proc.pid, new["workers"]),
            what="the new worker ready, the dead worker's arena removed",
        )
        served_meanwhile = statuses[killed_at:]
        stop.set()
    assert served_meanwhile.count(200) > 0  # the other worker kept answering
    assert set(statuses) <= {200, -1} and statuses.count(-1) <= 4
    assert new["workers"][1] == old["workers"][1] and new["engine"] == old["engine"]
    wait_until(lambda: alive(new["workers"][0]), what="new worker")
    check_answers(post_concurrently(server.url, inputs[:8]), inputs[:8], reference)


def test_sigterm_under_load_drains_and_leaves_nothing_behind(crash_server, reference):
    server = crash_server
    found = processes(server)
    environ = Path(f"/proc/{found['engine']}/environ").read_text().split("\0")
    metrics_dir = next(v.split("=", 1)[1] for v in environ if v.startswith("PROMETHEUS_MULTIPROC"))
    children = psutil.Process(server.proc.pid).children(recursive=True)
    inputs = random_batch(16, seed=903)
    with queued(server, inputs) as responses:
        server.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: httpx.get(server.url + "/readyz").status_code == 503, what="draining")
        late = post(server, inputs[0][None])
        assert late.status_code == 503 and late.headers["Retry-After"]
    check_answers(responses, inputs, reference)  # every admitted request finished
    assert server.proc.wait(40) == -signal.SIGTERM  # as uvicorn ends after a graceful stop
    assert {found["engine"], *found["workers"]} <= {c.pid for c in children}
    for child in children:  # multiprocessing's resource tracker ends when it sees its pipe close
        wait_until(lambda c=child: not alive(c.pid), timeout_s=10, what=f"{child} gone")
    assert segments(server.proc.pid) == set()
    assert not Path(metrics_dir).exists()


def test_sigterm_while_the_model_loads_stops_at_once(model_dir):
    server = Server(["--model", str(model_dir)], faults=["--load-delay-s", "60"])
    server.wait_listening()
    assert httpx.get(server.url + "/readyz").status_code == 503
    children = psutil.Process(server.proc.pid).children(recursive=True)
    assert len(children) >= 3  # the engine, two workers (and multiprocessing's tracker)
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(20) == -signal.SIGTERM  # not after the 60 s load
    for child in children:
        wait_until(lambda c=child: not alive(c.pid), timeout_s=10, what=f"{child} gone")
    assert segments(server.proc.pid) == set()
    server.stop()
