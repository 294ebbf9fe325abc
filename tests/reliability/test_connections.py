"""RELIABILITY.md cases 17 and 18: slow or idle connections, junk hosts, paths and queries."""

from __future__ import annotations

import contextlib
import random
import string
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.reliability import rawhttp
from tests.reliability.harness import Bystanders, assert_error, http, metric_samples

MAX_CONCURRENCY = 12
KEEP_ALIVE_S = 2  # also the deadline for a whole request head


@pytest.fixture(scope="module")
def server(server_factory):
    # One worker: the concurrency limit is each worker's (uvicorn's, per process), and which
    # worker accepts a connection is the kernel's choice.
    flags = ["--max-concurrency", str(MAX_CONCURRENCY), "--keep-alive-s", str(KEEP_ALIVE_S)]
    server = server_factory(*flags, "--workers", "1")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def bystanders(server):
    return Bystanders(server.url, count=6, seed=17)


def good_status(server, bystanders) -> int:
    """Status of one good request on a fresh connection (200 with the right answer, or 503)."""
    with httpx.Client(timeout=10) as client:
        response = client.post(
            server.url + "/predict?raw=true",
            content=bystanders.images[0],
            headers={"content-type": "image/png"},
        )
    if response.status_code == 200:
        assert response.json()["results"][0]["output"] == pytest.approx(
            list(bystanders.expected[0]), rel=1e-4, abs=1e-5
        )
    return response.status_code


def test_idle_keep_alive_connection_is_closed(server):
    """Case 17: a connection left idle after its answer is closed after the keep-alive time."""
    with rawhttp.connect(server.port, timeout_s=KEEP_ALIVE_S * 5 + 5) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        assert rawhttp.parse(rawhttp.read_response(sock)).status == 200
        assert rawhttp.closed_by_server(sock)


SILENT = b""
PARTIAL_HEAD = b"POST /predict HTTP/1.1\r\nHost: t\r\nContent-Type: ima"
SLOW_BODY = b"POST /predict HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n\x89PNG"


@pytest.mark.parametrize(
    "opening", [SILENT, PARTIAL_HEAD, SLOW_BODY], ids=["silent", "partial-head", "slow-body"]
)
def test_slowloris_gets_503_not_a_hang_and_the_service_recovers(server, bystanders, opening):
    """Case 17: connections that never finish hold at most ``max_concurrency`` slots; past that a
    good request gets a prompt 503 (never a hang), and once they go the service answers again."""
    with contextlib.ExitStack() as stack:
        for _ in range(MAX_CONCURRENCY * 3):
            sock = stack.enter_context(rawhttp.connect(server.port))
            sock.sendall(opening)
        status = good_status(server, bystanders)
    assert status in (200, 503)
    wait_until_admitted(server)
    with ThreadPoolExecutor(4) as pool:
        after = list(pool.map(lambda _: good_status(server, bystanders), range(8)))
    assert after == [200] * 8


@pytest.mark.parametrize("opening", [SILENT, PARTIAL_HEAD], ids=["silent", "partial-head"])
def test_connection_without_a_complete_head_is_closed(server, opening):
    """Case 17: a request head (line and headers) must arrive within the keep-alive time, so
    slowloris connections cannot hold their slots for ever."""
    with rawhttp.connect(server.port, timeout_s=KEEP_ALIVE_S * 5 + 5) as sock:
        sock.sendall(opening)
        for _ in range(3 if opening else 0):  # trickling headers does not extend the deadline
            time.sleep(KEEP_ALIVE_S / 4)
            with contextlib.suppress(OSError):
                sock.sendall(b"ge/png\r\nX-Slow: 1\r\n" if _ == 0 else b"X-Slow: 1\r\n")
        assert rawhttp.closed_by_server(sock)


def test_limit_concurrency_refusal_is_503(server):
    """Case 17: the refusal past ``max_concurrency`` is a plain 503 (uvicorn's), so load balancers
    retry elsewhere; requests are admitted again once the slots free up."""
    with contextlib.ExitStack() as stack:
        for _ in range(MAX_CONCURRENCY + 2):
            stack.enter_context(rawhttp.connect(server.port)).sendall(b"GET /h")
        with httpx.Client(timeout=10) as client:
            assert client.get(server.url + "/healthz").status_code == 503
    wait_until_admitted(server)


def wait_until_admitted(server, timeout_s: float = 15) -> None:
    """Until the server has seen the held connections close and admits requests again."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        with httpx.Client(timeout=10) as client:
            if client.get(server.url + "/healthz").status_code == 200:
                return
        time.sleep(0.05)
    raise AssertionError("the service never admitted requests again")


def junk(rng: random.Random, size: int) -> str:
    return "".join(rng.choice(string.ascii_letters + string.digits + "-._~") for _ in range(size))


METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "FOO"]


def junk_request(port: int, rng: random.Random, method: str, target_kind: int) -> int:
    """One request with a random path of a kind, host and query string; returns its status."""
    path = "/" + "/".join(junk(rng, rng.randint(1, 12)) for _ in range(rng.randint(1, 4)))
    target = [path, "/predict", "/v2/models/" + junk(rng, 8), "/metrics"][target_kind]
    query = "&".join(f"{junk(rng, 6)}={junk(rng, 20)}" for _ in range(rng.randint(0, 30)))
    host = rng.choice([junk(rng, 40), "[::1", "a" * 2000, "ex ample", "é.example"])
    line = f"{method} {target}?{query} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\n"
    with rawhttp.connect(port) as sock:
        sock.sendall(line.encode("utf-8") + b"Connection: close\r\n\r\n")
        answer = rawhttp.read_response(sock)
    return rawhttp.parse(answer).status if answer else 0


def junk_requests(port: int, rng: random.Random, count: int) -> list[int]:
    """``count`` junk requests of random kinds; returns the statuses."""
    return [junk_request(port, rng, rng.choice(METHODS), rng.randrange(4)) for _ in range(count)]


def every_kind_of_junk(port: int, rng: random.Random) -> list[int]:
    """One junk request of each method and target kind: every refusal the service gives."""
    return [junk_request(port, rng, m, kind) for m in METHODS for kind in range(4)]


def label_sets(url: str) -> set:
    """Label sets of the request histogram (scraped twice: a scrape counts itself afterwards)."""
    metric_samples(url, "gemmserve_request_duration_seconds_count")
    return set(metric_samples(url, "gemmserve_request_duration_seconds_count"))


def test_junk_hosts_paths_and_queries_do_not_grow_label_sets(server, bystanders):
    """Case 18: 404/405/400 (never 5xx), and /metrics label sets stay the same size."""
    rng = random.Random(18)
    every_kind_of_junk(server.port, rng)  # each (route, status) that junk can produce, once
    before = label_sets(server.url)
    statuses = bystanders.run(lambda: junk_requests(server.port, rng, 300))
    after = label_sets(server.url)
    assert set(statuses) <= {200, 400, 404, 405, 413, 415, 422}, sorted(set(statuses))
    assert after == before, sorted(after - before)
    routes = {dict(labels)["route"] for labels in after}
    templates = set(http.get(server.url + "/openapi.json").json()["paths"])
    assert routes <= templates | {"unmatched", "/openapi.json", "/docs", "/redoc",
                                  "/docs/oauth2-redirect"}  # fmt: skip


def test_random_path_gets_json_404(server):
    """Case 18: an unknown path is a JSON 404 (the service's error shape)."""
    assert_error(http.get(server.url + "/no/such/path/" + "x" * 500), 404, "not_found")


@pytest.mark.parametrize("size", [8_000, 100_000, 1_000_000])
def test_huge_query_string_is_refused_or_ignored(server, size):
    """Case 18: a query string of 8 KB..1 MB is answered 400/404/422 (or ignored), never 5xx."""
    target = "/predict?top_k=3&" + "x" * size
    request = f"POST {target} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode()
    answer = rawhttp.exchange(server.port, request)
    status = rawhttp.parse(answer).status if answer else 0
    assert status in (400, 404, 414, 415, 422, 431), answer[:200]
