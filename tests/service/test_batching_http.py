"""Dynamic batching under concurrent clients, and the injected faults of RELIABILITY.md
(poison input in a batch, out-of-memory, queue full, deadline, disconnect)."""

from __future__ import annotations

import asyncio
import socket
import threading

import httpx
import numpy as np

from tests.service.conftest import (
    POISON,
    delta,
    engine_held,
    npy_bytes,
    random_batch,
    wait_for,
)

RTOL, ATOL = 1e-4, 1e-5
NPY = {"Content-Type": "application/x-npy"}


async def _post_all(url: str, bodies: list[bytes], headers=None) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=len(bodies) + 4)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        tasks = [
            client.post(url + "/predict?raw=true", content=b, headers={**NPY, **(headers or {})})
            for b in bodies
        ]
        return await asyncio.gather(*tasks)


def post_concurrently(url: str, inputs: np.ndarray, headers=None) -> list[httpx.Response]:
    """One request per image, all at once."""
    return asyncio.run(_post_all(url, [npy_bytes(x) for x in inputs], headers))


def post_behind_held_engine(server, inputs: np.ndarray, queued: int) -> list[httpx.Response]:
    """Post one request per image while the engine is held; release it once ``queued`` images
    wait, so they form one batch."""
    done: dict = {}
    with engine_held(server):
        worker = threading.Thread(
            target=lambda: done.update(responses=post_concurrently(server.url, inputs))
        )
        worker.start()
        wait_for(server, "gemmserve_queue_depth", lambda v: v >= queued)
    worker.join()
    return done["responses"]


def check_answers(responses, inputs, reference, skip=()):
    for i, (response, x) in enumerate(zip(responses, inputs, strict=True)):
        if i in skip:
            continue
        assert response.status_code == 200, response.text
        got = np.array(response.json()["results"][0]["output"], np.float32)
        np.testing.assert_allclose(got, reference(x[None])[0], rtol=RTOL, atol=ATOL)


def test_48_concurrent_clients_get_their_own_answers(server, reference):
    inputs = random_batch(48, seed=100)
    responses = post_concurrently(server.url, inputs)
    check_answers(responses, inputs, reference)


def test_batches_form_under_load(fault_server, reference):
    before = fault_server.metrics()
    inputs = random_batch(20, seed=101)
    responses = post_concurrently(fault_server.url, inputs)
    check_answers(responses, inputs, reference)
    after = fault_server.metrics()
    batches = delta(before, after, "gemmserve_batch_size_count")
    assert delta(before, after, "gemmserve_images_total") == 20
    assert batches < 20  # some batch held more than one image
    assert delta(before, after, "gemmserve_batch_size_bucket", le="1.0") < batches


def test_poison_input_fails_alone(fault_server, reference):
    before = fault_server.metrics()
    inputs = random_batch(8, seed=102)
    inputs[5, 0, 0, 0] = POISON
    responses = post_behind_held_engine(fault_server, inputs, queued=8)
    assert responses[5].status_code == 500
    assert responses[5].json()["error"]["code"] == "inference_failed"
    check_answers(responses, inputs, reference, skip={5})
    after = fault_server.metrics()
    assert delta(before, after, "gemmserve_batch_splits_total", reason="error") > 0


def test_out_of_memory_splits_and_answers_all(fault_server, reference):
    before = fault_server.metrics()
    inputs = random_batch(14, seed=103)
    responses = post_behind_held_engine(fault_server, inputs, queued=14)
    check_answers(responses, inputs, reference)
    after = fault_server.metrics()
    assert delta(before, after, "gemmserve_batch_splits_total", reason="oom") > 0


def test_queue_full_is_429_with_retry_after(fault_server, reference):
    inputs = random_batch(60, seed=104)
    responses = post_behind_held_engine(fault_server, inputs, queued=24)
    refused = [i for i, r in enumerate(responses) if r.status_code == 429]
    assert refused, "a queue of 24 cannot hold 60 waiting requests"
    for i in refused:
        assert responses[i].headers["Retry-After"] == "1"
        assert responses[i].json()["error"]["code"] == "queue_full"
    check_answers(responses, inputs, reference, skip=set(refused))


def test_deadline_passes_while_queued_is_504_and_never_runs(fault_server):
    before = fault_server.metrics()
    with engine_held(fault_server):
        response = httpx.post(
            fault_server.url + "/predict",
            content=npy_bytes(random_batch(1)),
            headers={**NPY, "X-Timeout-Ms": "100"},
            timeout=10,
        )
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "deadline_exceeded"
    after = fault_server.metrics()
    assert delta(before, after, "gemmserve_images_total") == 1  # only the slow blocker ran
    assert delta(before, after, "gemmserve_requests_rejected_total", reason="deadline") == 1


def test_disconnected_client_costs_no_engine_time(fault_server, reference):
    before = fault_server.metrics()
    body = npy_bytes(random_batch(1))
    head = (
        "POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-npy\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    with engine_held(fault_server):
        with socket.create_connection(("127.0.0.1", fault_server.port)) as sock:
            sock.sendall(head.encode() + body)
            wait_for(fault_server, "gemmserve_queue_depth", lambda v: v == 1)
        # Only the held blocker stays in flight once the server saw the client leave.
        wait_for(fault_server, "gemmserve_requests_in_flight", lambda v: v == 1)
    after = fault_server.metrics()
    assert delta(before, after, "gemmserve_images_total") == 1
    assert delta(before, after, "gemmserve_requests_rejected_total", reason="cancelled") == 1
    inputs = random_batch(3, seed=7)  # and the batcher keeps serving
    check_answers(post_concurrently(fault_server.url, inputs), inputs, reference)
