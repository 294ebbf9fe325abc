"""``python -m loadtests.compare_servers``: the same closed-loop load against several servers.

64 keep-alive connections each send one ``.npy`` image, wait for the answer, and send the next.
The model (``--net``): a CIFAR-style CNN (five 3x3 convs 3->32->32->64->64->128 on 32x32, two
max-pools, global average pool, linear), or the bundled digits model. Servers: gemmserve with one
and with two HTTP workers, with ``--target-p99-ms``, with ``--max-batch-size 1``, an older
checkout of gemmserve (``--baseline DIR``), gemmserve around a stand-in engine whose batch is a
fixed sleep (a fast GPU: what the HTTP tier alone delivers), a plain FastAPI + onnxruntime server
without batching, and a no-op FastAPI endpoint (the machine's HTTP ceiling). ``--rounds``
repeats the servers in alternating order (settling effects of 10-20% on a noisy machine). Prints
throughput, p50/p99 latency, goodput (answers within ``--target-ms`` per second) and CPU per
request (every process of the server) for each, with the machine named and its load average.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import platform
import re
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import psutil
from onnx import TensorProto, helper, numpy_helper

from loadtests.service_proc import DEFAULT_MODEL, REPO, ServiceProcess, http_get

DIGITS = DEFAULT_MODEL


def cifar_cnn(seed: int = 0) -> onnx.ModelProto:
    """Five 3x3 conv+ReLU layers (3->32->32->64->64->128), max-pools after the 2nd and 4th, GAP,
    linear 128->10. He-initialised random weights."""
    rng = np.random.default_rng(seed)
    widths = [3, 32, 32, 64, 64, 128]
    nodes, inits, current = [], [], "x"
    for i, (cin, cout) in enumerate(zip(widths, widths[1:], strict=False)):
        w = rng.standard_normal((cout, cin, 3, 3)) * np.sqrt(2.0 / (cin * 9))
        inits += [numpy_helper.from_array(w.astype(np.float32), f"w{i}")]
        inits += [numpy_helper.from_array(np.zeros(cout, np.float32) + 0.01, f"b{i}")]
        nodes.append(
            helper.make_node(
                "Conv", [current, f"w{i}", f"b{i}"], [f"c{i}"], kernel_shape=[3, 3], pads=[1] * 4
            )
        )
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"]))
        current = f"r{i}"
        if i in (1, 3):
            nodes.append(
                helper.make_node(
                    "MaxPool", [current], [f"p{i}"], kernel_shape=[2, 2], strides=[2, 2]
                )
            )
            current = f"p{i}"
    fc = (rng.standard_normal((10, 128)) * np.sqrt(1.0 / 128)).astype(np.float32)
    inits += [
        numpy_helper.from_array(fc, "fc_w"),
        numpy_helper.from_array(np.zeros(10, np.float32), "fc_b"),
    ]
    nodes += [
        helper.make_node("GlobalAveragePool", [current], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "cifar_cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


# ---- load generator: raw HTTP/1.1 over asyncio streams (cheap per request, unlike a full client)


@dataclass
class LoadResult:
    requests: int
    seconds: float
    latencies_s: list[float]
    statuses: Counter
    ok_latencies_s: list[float] = field(default_factory=list)  # of the 200 answers

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds

    def percentile_ms(self, q: float) -> float:
        return (
            float(np.percentile(self.latencies_s, q) * 1000) if self.latencies_s else float("nan")
        )


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
    await reader.readexactly(int(length.group(1)) if length else 0)
    return status, bool(re.search(rb"(?i)\r\nconnection: *close", head))


async def _connection(port: int, request: bytes, until: float, out: LoadResult, record: float):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while (start := time.perf_counter()) < until:
            writer.write(request)
            status, closed = await _read_response(reader)
            if start >= record:
                out.latencies_s.append(time.perf_counter() - start)
                out.statuses[status] += 1
                if status == 200:
                    out.ok_latencies_s.append(out.latencies_s[-1])
            if closed:
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
    finally:
        writer.close()


async def drive(port: int, body: bytes, connections: int, warmup_s: float, seconds: float):
    """Closed loop: ``connections`` clients, each one request at a time; the first ``warmup_s``
    seconds are not recorded."""
    request = (
        f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-npy\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    record = time.perf_counter() + warmup_s
    until = record + seconds
    out = LoadResult(0, seconds, [], Counter())
    await asyncio.gather(
        *(_connection(port, request, until, out, record) for _ in range(connections))
    )
    out.requests = out.statuses[200]
    return out


# ---- the servers -----------------------------------------------------------------------------


class PlainServer(ServiceProcess):
    """``loadtests.plain_server`` (onnxruntime, or ``--noop``) managed like the service."""

    def __init__(self, model: Path | None, log_path: Path):
        super().__init__(model or REPO, log_path)
        self.onnx = model

    def command(self) -> list[str]:
        args = [sys.executable, "-m", "loadtests.plain_server", "--port", str(self.port)]
        return args + (["--model", str(self.onnx)] if self.onnx else ["--noop"])


class StandinService(ServiceProcess):
    """gemmserve whose engine is ``loadtests.standin_server``'s fixed sleep per batch."""

    def __init__(self, model: Path, log_path: Path, batch_ms: float, flags: dict):
        super().__init__(model, log_path, flags=flags)
        self.batch_ms = batch_ms

    def command(self) -> list[str]:
        args = super().command()
        at = args.index("service")
        return [*args[:at], "loadtests.standin_server", "--batch-ms", str(self.batch_ms), "--",
                *args[at + 1 :]]  # fmt: skip


def engine_figures(url: str) -> tuple[float, float, float] | None:
    """From the service's /metrics: mean engine batch size, images per second of engine time
    (what the engine alone sustained inside the service), and the engine's slowdown (batch
    time in service over warm-up time; 0 where the service does not report it)."""
    text = http_get(url + "/metrics")[1].decode()
    slowdown = re.search(r"^gemmserve_engine_slowdown_ratio (\S+)$", text, re.M)
    # Summed over every model (one series per ``model`` label; none in older versions).
    pattern = r"^gemmserve_(batch_size|inference_duration_seconds)_(sum|count)(?:\{[^}]*\})? (\S+)$"
    found: dict[tuple[str, str], float] = {}
    for metric, kind, value in re.findall(pattern, text, re.M):
        found[metric, kind] = found.get((metric, kind), 0.0) + float(value)
    batches, images = found.get(("batch_size", "count")), found.get(("batch_size", "sum"))
    engine_s = found.get(("inference_duration_seconds", "sum"))
    if not batches or not engine_s:
        return None
    return images / batches, images / engine_s, float(slowdown.group(1)) if slowdown else 0.0


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds so far of process ``pid`` and its children (a supervisor's
    engine and workers), all threads; None when it cannot be read."""
    try:
        root = psutil.Process(pid)
        return sum(sum(p.cpu_times()[:2]) for p in (root, *root.children(recursive=True)))
    except psutil.Error:
        return None


async def measure(server: ServiceProcess, body: bytes, args) -> tuple[LoadResult, float | None]:
    """The load's result, and the server's CPU milliseconds per answered request while recorded
    (the server's whole process: event loop, decoders, engine, BLAS threads)."""
    load = asyncio.ensure_future(
        drive(server.port, body, args.connections, args.warmup_s, args.seconds)
    )
    await asyncio.sleep(args.warmup_s)
    before = process_cpu_s(server.pid)
    result = await load
    after = process_cpu_s(server.pid)
    if before is None or after is None or not result.requests:
        return result, None
    return result, 1000 * (after - before) / result.requests


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError, AttributeError):  # no /proc/cpuinfo, or no model name
        cpu = re.search(r"model name\s*:\s*(.*)", Path("/proc/cpuinfo").read_text()).group(1)
    return (
        f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, NumPy {np.__version__}"
    )


def load_average() -> str:
    return ", ".join(f"{v:.2f}" for v in os.getloadavg())


def servers(args: argparse.Namespace, model_dir: Path) -> dict[str, ServiceProcess]:
    """Every server this run may measure, by name."""
    logs = model_dir.parent
    # One autotune cache for every gemmserve run: the same algorithms per bucket, tuned once.
    cache = {"autotune_cache": logs / "autotune.json"}

    def gemmserve(log: str, **flags) -> ServiceProcess:
        return ServiceProcess(model_dir, logs / log, flags={**cache, **flags}, device=args.device)

    found = {
        "gemmserve --workers 1": gemmserve("w1.log", workers=1),
        "gemmserve --workers 2": gemmserve("w2.log", workers=2),
        f"gemmserve --workers 2 --target-p99-ms {args.target_ms:g}": gemmserve(
            "slo.log", workers=2, target_p99_ms=args.target_ms
        ),
        "gemmserve --max-batch-size 1": gemmserve("single.log", max_batch_size=1),
        "plain FastAPI + onnxruntime": PlainServer(model_dir / "model.onnx", logs / "plain.log"),
        "no-op FastAPI endpoint": PlainServer(None, logs / "noop.log"),
    }
    for workers in (1, 2):
        found[f"stand-in engine ({args.standin_batch_ms:g} ms/batch), --workers {workers}"] = (
            StandinService(model_dir, logs / f"standin{workers}.log", args.standin_batch_ms,
                           {**cache, "workers": workers})
        )  # fmt: skip
    if args.baseline:
        found["gemmserve, one process (baseline checkout)"] = ServiceProcess(
            model_dir, logs / "baseline.log", flags=cache, cwd=args.baseline
        )
    return found


def run_all(args: argparse.Namespace, model_dir: Path, body: bytes) -> list[tuple]:
    chosen = {
        name: server
        for name, server in servers(args, model_dir).items()
        if not args.only or any(o in name for o in args.only)
    }
    rows = []
    for round_index in range(args.rounds):
        names = list(chosen) if round_index % 2 == 0 else list(reversed(chosen))
        for name in names:
            with chosen[name] as server:
                result, cpu_ms = asyncio.run(measure(server, body, args))
                gemmserve = "gemmserve" in name or "stand-in" in name
                figures = engine_figures(server.url) if gemmserve else None
                rows.append((name, result, cpu_ms, figures))
            print(f"  round {round_index + 1} {name}: {result.throughput:.0f} req/s, "
                  f"load {load_average()}", file=sys.stderr)  # fmt: skip
    return rows


def table(rows, target_ms: float) -> str:
    lines = [
        f"| server | req/s | p50 ms | p99 ms | goodput (<= {target_ms:g} ms)/s | non-200 | "
        "CPU ms/req | mean batch | engine img/s | engine slowdown |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r, cpu_ms, figures in rows:
        bad = sum(n for s, n in r.statuses.items() if s != 200)
        p50, p99 = r.percentile_ms(50), r.percentile_ms(99)
        good = sum(1 for t in r.ok_latencies_s if t * 1000 <= target_ms) / r.seconds
        cpu = "" if cpu_ms is None else f"{cpu_ms:.2f}"
        engine = "| | |"
        if figures is not None:
            engine = f"| {figures[0]:.1f} | {figures[1]:,.0f} | {figures[2]:.2f} |"
        lines.append(
            f"| {name} | {r.throughput:,.0f} | {p50:.1f} | {p99:.1f} | {good:,.0f} | {bad} "
            f"| {cpu} {engine}"
        )
    return "\n".join(lines)


def model_and_body(net: str, tmp: Path) -> tuple[Path, bytes]:
    """A model directory for ``net`` and one random .npy image of its input shape."""
    if net == "digits":
        model_dir, shape = DIGITS, (1, 8, 8)
    else:
        model_dir, shape = tmp / "cifar", (3, 32, 32)
        model_dir.mkdir()
        onnx.save(cifar_cnn(), model_dir / "model.onnx")
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    buffer = io.BytesIO()
    np.save(buffer, x, allow_pickle=False)
    return model_dir, buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--net", choices=["cifar", "digits"], default="cifar")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--warmup-s", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=1, help="alternate the order each round")
    parser.add_argument("--target-ms", type=float, default=50.0, help="for goodput and the SLO")
    parser.add_argument("--standin-batch-ms", type=float, default=2.0,
                        help="the stand-in engine's sleep per batch (a fast GPU)")  # fmt: skip
    parser.add_argument("--baseline", type=Path, help="another gemmserve checkout to measure")
    parser.add_argument("--only", nargs="*", help="run only servers whose name contains these")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"),
                        help="the device gemmserve runs on")  # fmt: skip
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gemmserve-compare-") as tmp:
        work = Path(tmp) / "work"
        work.mkdir()
        model_dir, body = model_and_body(args.net, work)
        # Logs and the cache beside the model; the bundled model's directory stays untouched.
        if model_dir == DIGITS:
            model_dir = work / "digits"
            shutil.copytree(DIGITS, model_dir, ignore=shutil.ignore_patterns("*.autotune.json"))
        rows = run_all(args, model_dir, body)
    print(f"Machine: {machine()}; load average after the run: {load_average()}")
    print(
        f"Load: {args.connections} connections, closed loop, {args.seconds:.0f} s measured "
        f"after {args.warmup_s:.0f} s warm-up, one {args.net} .npy image per request, gemmserve "
        f"on --device {args.device}"
    )
    print(table(rows, args.target_ms))


if __name__ == "__main__":
    main()
