"""Locust users for gemmserve (run by ``python -m loadtests``, or by hand:
``locust -f loadtests/locustfile.py --host http://127.0.0.1:8000 MixedClient``).

- ``MixedClient``: closed loop with think time; weighted tasks: single PNGs of varying size,
  multipart uploads of several images, ``.npy`` tensors, JSON base64, KServe v2 infer, and a trickle
  of bad inputs that must be refused with a 4xx (a success when they are, a failure otherwise).
- ``SingleImageClient``: closed loop, no think time, one PNG per request (the report's sweep).
- ``MultiModelClient``: closed loop over every ready model of a repository (``GET /models``):
  each request picks a model at random and sends ``.npy`` images of its own input shape to
  ``/models/{name}/predict``.
- ``OpenLoopClient``: open loop: requests start at Poisson arrival times whatever the latency,
  optionally in bursts (``--arrival-rate``, ``--burst-factor``, ``--burst-period-s``).

Every answer is checked: status, JSON shape and one result per image sent.
"""

from __future__ import annotations

import json
import os
import time
import urllib.request

import gevent
import numpy as np
from gevent.pool import Pool
from locust import FastHttpUser, between, constant, events, task

from loadtests.arrivals import arrival_times
from loadtests.payloads import (
    BadInput,
    Body,
    ModelShape,
    b64_body,
    bad_inputs,
    kserve_body,
    multipart_body,
    npy_body,
    png_body,
    png_pool,
)

SEED = int(os.environ.get("LOADTEST_SEED", "0"))
STATE: dict = {}  # per Locust process: PNGs at start-up, model shape and bad inputs at test start


@events.init_command_line_parser.add_listener
def _options(parser) -> None:
    group = parser.add_argument_group("gemmserve open loop")
    group.add_argument("--arrival-rate", type=float, default=20.0, help="requests/s (open loop)")
    group.add_argument("--burst-factor", type=float, default=1.0, help="1 = plain Poisson")
    group.add_argument("--burst-period-s", type=float, default=2.0, help="burst cycle length")
    group.add_argument("--max-in-flight", type=int, default=1024, help="open-loop request cap")


@events.init.add_listener
def _images(**_kwargs) -> None:
    """Encode the PNGs at start-up, before any timed run begins."""
    STATE["pngs"] = png_pool(SEED)
    # The event loop's clock is cached; after this blocking work (and a slow start-up) it lags,
    # and Locust's --run-time timer, computed from it, would fire seconds early.
    gevent.get_hub().loop.update_now()


@events.test_start.add_listener
def _model(environment, **_kwargs) -> None:
    """Ask the service for its model once; the tensors and bad inputs depend on its shape."""
    host = environment.host.rstrip("/")
    with urllib.request.urlopen(host + "/model", timeout=30) as response:
        shape = ModelShape.from_info(json.load(response))
    with urllib.request.urlopen(host + "/models", timeout=30) as response:
        listing = json.load(response)["models"]
    models = [ModelShape.from_info(m) for m in listing if m["state"] == "ready"]
    STATE.update(shape=shape, bad=bad_inputs(shape, SEED), models=models)


class ClientBase(FastHttpUser):
    """Request helpers shared by the user classes; every answer is validated."""

    abstract = True

    def on_start(self) -> None:
        self.rng = np.random.default_rng([SEED, id(self)])

    def pngs(self, count: int) -> list[bytes]:
        pool = STATE["pngs"]
        return [pool[i] for i in self.rng.integers(0, len(pool), count)]

    def post(self, path: str, name: str, body: Body, check) -> None:
        headers = {"Content-Type": body.content_type, **dict(body.headers)}
        with self.client.post(
            path, data=body.data, headers=headers, name=name, catch_response=True
        ) as response:
            try:
                problem = check(response, body)
            except (ValueError, KeyError, IndexError, TypeError) as exc:
                problem = f"unexpected answer: {type(exc).__name__}: {exc}"
            if problem:
                response.failure(problem)
            else:
                response.success()

    def predict(self, name: str, body: Body) -> None:
        self.post("/predict", name, body, check_predict)

    def infer_v2(self, count: int, binary: bool) -> None:
        shape = STATE["shape"]
        body = kserve_body(self.rng, shape, count, binary)
        name = "/v2 infer binary" if binary else "/v2 infer"
        self.post(f"/v2/models/{shape.name}/infer", name, body, check_v2)

    def send_bad(self, bad: BadInput) -> None:
        self.post(bad.path, f"bad: {bad.name}", bad.body, refused(bad))


class MixedClient(ClientBase):
    """A realistic mix of clients, with think time between requests (closed loop)."""

    wait_time = between(0.01, 0.1)

    @task(10)
    def single_png(self) -> None:
        self.predict("/predict png", png_body(self.pngs(1)[0]))

    @task(3)
    def multipart(self) -> None:
        self.predict("/predict multipart", multipart_body(self.pngs(int(self.rng.integers(2, 9)))))

    @task(3)
    def npy(self) -> None:
        count = int(self.rng.integers(1, 9))
        self.predict("/predict npy", npy_body(self.rng, STATE["shape"], count))

    @task(1)
    def b64_json(self) -> None:
        self.predict("/predict b64", b64_body(self.pngs(int(self.rng.integers(1, 4)))))

    @task(2)
    def kserve(self) -> None:
        self.infer_v2(int(self.rng.integers(1, 5)), binary=False)

    @task(1)
    def kserve_binary(self) -> None:
        self.infer_v2(int(self.rng.integers(1, 9)), binary=True)

    @task(1)
    def bad_input(self) -> None:
        bad = STATE["bad"]
        self.send_bad(bad[int(self.rng.integers(0, len(bad)))])


class SingleImageClient(ClientBase):
    """One PNG per request, back to back: the closed-loop client of the report's sweep."""

    wait_time = constant(0)

    @task
    def single_png(self) -> None:
        self.predict("/predict png", png_body(self.pngs(1)[0]))


class MultiModelClient(ClientBase):
    """Every ready model of the service, one at random per request, with little think time."""

    wait_time = between(0.0, 0.05)

    @task
    def npy_any_model(self) -> None:
        models = STATE["models"]
        shape = models[int(self.rng.integers(len(models)))]
        body = npy_body(self.rng, shape, int(self.rng.integers(1, 5)))
        name = f"/models/{{name}}/predict npy ({shape.name})"
        self.post(f"/models/{shape.name}/predict", name, body, check_predict)


class OpenLoopClient(ClientBase):
    """Open loop: single-PNG requests start on a Poisson (optionally bursty) schedule, each in
    its own greenlet, so a slow answer never delays the next arrival. Run it as one user."""

    wait_time = constant(0)
    fixed_count = 1  # one scheduler whatever the user count; the rate is set by --arrival-rate
    concurrency = 256  # connection pool shared by this user's in-flight requests

    def on_start(self) -> None:
        super().on_start()
        options = self.environment.parsed_options
        self.in_flight = Pool(options.max_in_flight)
        self.schedule = arrival_times(
            self.rng, options.arrival_rate, options.burst_factor, options.burst_period_s
        )
        self.t0 = time.monotonic()

    def on_stop(self) -> None:
        self.in_flight.join(timeout=5)

    @task
    def arrive(self) -> None:
        gevent.sleep(max(0.0, self.t0 + next(self.schedule) - time.monotonic()))
        if self.in_flight.full():
            # Counted, not hidden: the client could not keep the promised arrival rate.
            self.environment.events.request.fire(
                request_type="POST",
                name="/predict png (open loop)",
                response_time=0,
                response_length=0,
                exception=RuntimeError("client saturated: max in-flight reached"),
            )
            return
        body = png_body(self.pngs(1)[0])
        self.in_flight.spawn(self.predict, "/predict png (open loop)", body)


def error_json(response) -> str | None:
    """Problem with an error body (the contract: JSON with an ``error`` key), or None."""
    try:
        payload = json.loads(response.content or b"")
    except ValueError:
        return f"error body is not JSON: {response.content[:80]!r}"
    return None if isinstance(payload, dict) and "error" in payload else "no 'error' key"


def http_problem(response) -> str:
    """A non-200 answer, or the connection error when there was no answer (status 0)."""
    if response.status_code == 0:
        return f"no answer: {response.error!r}"
    return f"HTTP {response.status_code}: {(response.content or b'')[:120]!r}"


def check_predict(response, body: Body) -> str | None:
    """One result with predictions per image sent."""
    if response.status_code != 200:
        return http_problem(response)
    results = json.loads(response.content)["results"]
    if len(results) != body.images:
        return f"{len(results)} results for {body.images} images"
    if not all(result["predictions"] for result in results):
        return "a result without predictions"
    return None


def check_v2(response, body: Body) -> str | None:
    """One output row of ``classes`` values per image sent (JSON numbers or binary tensor)."""
    if response.status_code != 200:
        return http_problem(response)
    header_length = response.headers.get("Inference-Header-Content-Length")
    content = response.content
    split = int(header_length) if header_length else len(content)
    output = json.loads(content[:split])["outputs"][0]
    values = len(output["data"]) if "data" in output else (len(content) - split) // 4
    expected = [body.images, STATE["shape"].classes]
    if output["shape"] != expected or values != body.images * expected[1]:
        return f"output shape {output['shape']} with {values} values, expected {expected}"
    return None


def refused(bad: BadInput):
    """A check that passes when the service refused ``bad`` with an allowed 4xx and JSON error."""

    def check(response, _body: Body) -> str | None:
        if response.status_code not in bad.statuses:
            allowed = sorted(bad.statuses)
            return f"{bad.name}: HTTP {response.status_code}, expected one of {allowed}"
        return error_json(response)

    return check
