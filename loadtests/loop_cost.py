"""``python -m loadtests.loop_cost``: an HTTP worker's CPU per ``POST /predict``, without sockets.

A real engine process is started; one worker's ASGI app runs in this process and is called
directly by ``--tasks`` concurrent coroutines, each sending one image of the model's input shape
per request (``--body npy``: a ``.npy`` tensor; ``png``: a small PNG), for ``--seconds``. The
figures are this process's CPU time (event loop and decode threads: the front end's whole cost)
and the event-loop thread's alone, divided by the requests answered. uvicorn's HTTP parsing and
the socket I/O are left out; the engine's CPU is in its own process and not counted.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from loadtests.service_proc import DEFAULT_MODEL

CONTENT_TYPES = {"npy": b"application/x-npy", "png": b"image/png"}


def _scope(body: bytes, content_type: bytes) -> dict:
    headers = [(b"host", b"loop-cost"), (b"content-type", content_type),
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


async def _clients(app, body: bytes, kind: str, tasks: int, seconds: float) -> Counter:
    scope, until = _scope(body, CONTENT_TYPES[kind]), time.perf_counter() + seconds
    statuses: Counter = Counter()

    async def client() -> None:
        while time.perf_counter() < until:
            statuses[await _request(app, scope, body)] += 1

    await asyncio.gather(*(client() for _ in range(tasks)))
    return statuses


def payload(kind: str, input_shape: tuple[int, ...]) -> bytes:
    """One random image of the model's (C, H, W) input: a .npy tensor or a PNG."""
    rng = np.random.default_rng(1)
    buffer = io.BytesIO()
    if kind == "npy":
        np.save(buffer, rng.standard_normal(input_shape).astype(np.float32), allow_pickle=False)
    else:
        channels, height, width = input_shape
        pixels = rng.integers(0, 256, (height, width, channels), dtype=np.uint8)
        Image.fromarray(pixels[..., 0] if channels == 1 else pixels).save(buffer, format="PNG")
    return buffer.getvalue()


async def _measure_app(app, kind: str, tasks: int, seconds: float, warmup_s: float):
    runtime = app.state.runtime
    while not runtime.lifecycle.ready:
        await asyncio.sleep(0.05)
    body = payload(kind, runtime.description.input_shape)
    await _clients(app, body, kind, tasks, warmup_s)
    started, cpu, loop_cpu = time.perf_counter(), time.process_time(), time.thread_time()
    statuses = await _clients(app, body, kind, tasks, seconds)
    wall = time.perf_counter() - started
    return wall, time.process_time() - cpu, time.thread_time() - loop_cpu, statuses


async def measure(model: Path, tasks: int, seconds: float, warmup_s: float, flags: list[str],
                  kind: str = "npy"):  # fmt: skip
    """(requests/s, front-end CPU s per request, of which the loop's, status counts)."""
    from service.__main__ import parse_settings
    from service.app import create_app
    from service.supervisor import standalone_engine

    settings = parse_settings(["--model", str(model), "--log-level", "warning", *flags])
    with (
        tempfile.TemporaryDirectory(prefix="loop-cost-") as private,
        standalone_engine(settings, Path(private)) as link,
    ):
        app = create_app(settings, link)
        async with app.router.lifespan_context(app):
            wall, cpu, loop_cpu, statuses = await _measure_app(app, kind, tasks, seconds, warmup_s)
    answered = max(sum(statuses.values()), 1)
    return answered / wall, cpu / answered, loop_cpu / answered, statuses


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--tasks", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup-s", type=float, default=1.0)
    parser.add_argument("--body", choices=sorted(CONTENT_TYPES), default="npy")
    parser.add_argument("--autotune-cache", help="passed to the service")
    args = parser.parse_args(argv)
    flags = ["--autotune-cache", args.autotune_cache] if args.autotune_cache else []
    try:  # the loop uvicorn picks when it is installed
        from uvloop import run
    except ImportError:
        run = asyncio.run
    rate, cpu_s, loop_s, statuses = run(
        measure(args.model, args.tasks, args.seconds, args.warmup_s, flags, args.body)
    )
    print(f"{args.model.name} ({args.body}): {rate:,.0f} req/s through one worker's app, "
          f"front-end CPU {cpu_s * 1e6:,.0f} us per request (event loop {loop_s * 1e6:,.0f} us), "
          f"statuses {dict(statuses)}")  # fmt: skip


if __name__ == "__main__":
    main()
