"""``python -m loadtests.loop_cost``: event-loop CPU per ``POST /predict``, without sockets.

The service's ASGI app is called directly by ``--tasks`` concurrent coroutines, each sending
one ``.npy`` image of the model's input shape per request, for ``--seconds``. The figure is the
event-loop thread's CPU time divided by the requests answered: what the routes, middleware,
decode hop and batcher cost the loop per request, with uvicorn's HTTP parsing and the socket
I/O left out. On a small model that loop time, not the engine, bounds the service's throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import time
from collections import Counter
from pathlib import Path

import numpy as np

from loadtests.service_proc import DEFAULT_MODEL


def _scope(body: bytes) -> dict:
    headers = [(b"host", b"loop-cost"), (b"content-type", b"application/x-npy"),
               (b"content-length", str(len(body)).encode())]  # fmt: skip
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
            "scheme": "http", "path": "/predict", "raw_path": b"/predict", "root_path": "",
            "query_string": b"", "headers": headers, "client": ("127.0.0.1", 1),
            "server": ("127.0.0.1", 80), "state": {}}  # fmt: skip


async def _request(app, scope: dict, body: bytes) -> int:
    delivered, statuses = False, []

    async def receive() -> dict:
        nonlocal delivered
        if delivered:  # the app only asks again to watch for a disconnect
            await asyncio.Event().wait()
        delivered = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    await app(dict(scope), receive, send)
    return statuses[0]


async def _clients(app, body: bytes, tasks: int, seconds: float) -> Counter:
    scope, statuses, until = _scope(body), Counter(), time.perf_counter() + seconds

    async def client() -> None:
        while time.perf_counter() < until:
            statuses[await _request(app, scope, body)] += 1

    await asyncio.gather(*(client() for _ in range(tasks)))
    return statuses


async def measure(model: Path, tasks: int, seconds: float, warmup_s: float, flags: list[str]):
    """(requests/s, loop CPU seconds per request, status counts) for one in-process run."""
    from service.__main__ import parse_settings
    from service.app import create_app

    app = create_app(parse_settings(["--model", str(model), "--log-level", "warning", *flags]))
    async with app.router.lifespan_context(app):
        runtime = app.state.runtime
        while not runtime.lifecycle.ready:
            await asyncio.sleep(0.05)
        shape = runtime.model.input_shape
        x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
        buffer = io.BytesIO()
        np.save(buffer, x, allow_pickle=False)
        body = buffer.getvalue()
        await _clients(app, body, tasks, warmup_s)
        started, cpu = time.perf_counter(), time.thread_time()
        statuses = await _clients(app, body, tasks, seconds)
        wall, cpu = time.perf_counter() - started, time.thread_time() - cpu
    answered = sum(statuses.values())
    return answered / wall, cpu / max(answered, 1), statuses


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--tasks", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup-s", type=float, default=1.0)
    parser.add_argument("--autotune-cache", help="passed to the service")
    args = parser.parse_args(argv)
    flags = ["--autotune-cache", args.autotune_cache] if args.autotune_cache else []
    try:  # the loop uvicorn picks when it is installed
        from uvloop import run
    except ImportError:
        run = asyncio.run
    rate, cpu_s, statuses = run(measure(args.model, args.tasks, args.seconds, args.warmup_s, flags))
    print(f"{args.model.name}: {rate:,.0f} req/s in process, event loop CPU "
          f"{cpu_s * 1e6:,.0f} us per request, statuses {dict(statuses)}")  # fmt: skip


if __name__ == "__main__":
    main()
