"""Two models in one service against two single-model services, under the same load.

``python -m loadtests.multi_model [--seconds 10] [--clients 4] [--rounds 2] [--out DIR]``

Models: the bundled digits model (1x8x8) and a CIFAR-style net (``engine.bench.nets.cifar_net``,
3x32x32). Setups, run in alternating order in each round:

- ``shared``: one gemmserve serving both (``--model`` twice; ``/models/NAME/predict``);
- ``separate``: two gemmserve services, one model each (``/predict``).

Load: ``--clients`` closed-loop threads per model, each posting one fresh random ``.npy`` image
at a time, for ``--seconds`` after an untimed warm-up request per thread. Prints, per setup and
model, requests/s and p99 latency, and the memory of each setup's whole process tree (PSS: pages
shared between processes counted once), with the CPU count and the load average: the machine may
be shared, so read the figures as what they are.
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
import threading
import time
from contextlib import ExitStack, suppress
from pathlib import Path

import httpx
import numpy as np
import onnx
import psutil

from engine.bench.nets import cifar_net
from loadtests.service_proc import DEFAULT_MODEL, ServiceProcess

SHAPES = {"digits": (1, 8, 8), "cifar": (3, 32, 32)}


def npy(shape: tuple[int, ...], rng: np.random.Generator) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, rng.standard_normal((1, *shape)).astype(np.float32), allow_pickle=False)
    return buffer.getvalue()


def drive(url: str, shape: tuple[int, ...], clients: int, seconds: float) -> list[float]:
    """``clients`` closed-loop threads posting to ``url`` for ``seconds``; each latency (s) of a
    request answered 200 inside the window (any other answer fails the run)."""
    latencies: list[float] = []
    failures: list[str] = []
    start = threading.Barrier(clients + 1)

    def client(seed: int) -> None:
        rng = np.random.default_rng(seed)
        headers = {"Content-Type": "application/x-npy"}
        with httpx.Client(timeout=30) as http:
            http.post(url, content=npy(shape, rng), headers=headers)  # untimed: opens the block
            start.wait()
            end = time.perf_counter() + seconds
            while (began := time.perf_counter()) < end:
                r = http.post(url, content=npy(shape, rng), headers=headers)
                if r.status_code != 200:
                    failures.append(f"{r.status_code} {r.text[:100]}")
                latencies.append(time.perf_counter() - began)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    for t in threads:
        t.join()
    if failures:
        raise RuntimeError(f"{len(failures)} failed requests to {url}: {failures[0]}")
    return latencies


def tree_pss_mib(pid: int) -> float:
    """Memory of a process and all its descendants, shared pages counted once (PSS)."""
    root = psutil.Process(pid)
    total = 0
    for proc in [root, *root.children(recursive=True)]:
        with suppress(psutil.Error):  # a process that exited meanwhile
            total += proc.memory_full_info().pss
    return total / 2**20


def measure(setup: str, models: dict[str, Path], work: Path, args) -> dict:
    """Start the setup's service(s), load every model at once; per-model figures and memory."""
    flags = {"autotune_cache": work / f"{setup}-autotune", "log_level": "warning"}
    with ExitStack() as stack:
        if setup == "shared":
            names = list(models)
            service = ServiceProcess(models[names[0]], work / "shared.log", dict(flags))
            service.flags["model"] = models[names[1]]  # a second --model
            service = stack.enter_context(service)
            urls = {n: f"{service.url}/models/{n}/predict" for n in names}
            pids = [service.pid]
        else:
            urls, pids = {}, []
            for name, path in models.items():
                own = {**flags, "autotune_cache": work / f"{name}-autotune.json"}
                service = stack.enter_context(ServiceProcess(path, work / f"{name}.log", own))
                urls[name], pids = f"{service.url}/predict", [*pids, service.pid]
        results: dict[str, list[float]] = {}
        threads = [
            threading.Thread(
                target=lambda n=n: results.__setitem__(
                    n, drive(urls[n], SHAPES[n], args.clients, args.seconds)
                )
            )
            for n in models
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        memory_mib = sum(tree_pss_mib(pid) for pid in pids)
    return {"memory_mib": memory_mib, **results}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.multi_model")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=4, help="closed-loop threads per model")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="work directory (default: temp)")
    args = parser.parse_args(argv)
    work = args.out or Path(tempfile.mkdtemp(prefix="multi-model-"))
    (work / "cifar").mkdir(parents=True, exist_ok=True)
    onnx.save(cifar_net(seed=0), work / "cifar" / "model.onnx")
    models = {"digits": DEFAULT_MODEL, "cifar": work / "cifar"}
    print(f"{os.cpu_count()} CPUs; load average before: {os.getloadavg()[0]:.2f} (may be shared)")
    print("| round | setup | model | req/s | p99 ms | memory MiB (all processes) |")
    print("|---|---|---|---|---|---|")
    for round_index in range(args.rounds):
        order = ["shared", "separate"] if round_index % 2 == 0 else ["separate", "shared"]
        for setup in order:
            figures = measure(setup, models, work, args)
            for name in models:
                lat_ms = np.array(figures[name]) * 1000
                rate = len(lat_ms) / args.seconds
                p99_ms, memory_mib = np.percentile(lat_ms, 99), figures["memory_mib"]
                cells = [round_index + 1, setup, name, f"{rate:.0f}", f"{p99_ms:.1f}",
                         f"{memory_mib:.0f}"]  # fmt: skip
                print("| " + " | ".join(map(str, cells)) + " |")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
