"""``python -m loadtests.compare_servers``: the same closed-loop load against four servers.

64 keep-alive connections each send one ``.npy`` image of a CIFAR-style CNN (five 3x3 convs
3->32->32->64->64->128 on 32x32, two max-pools, global average pool, linear), wait for the answer,
and send the next. Servers: gemmserve with dynamic batching, gemmserve with ``--max-batch-size 1``,
a plain FastAPI + onnxruntime server without batching, and a no-op FastAPI endpoint (the machine's
HTTP ceiling). Prints throughput and p50/p99 latency for each, with the machine named.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import platform
import re
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from loadtests.service_proc import REPO, ServiceProcess, http_get


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


def engine_figures(url: str) -> tuple[float, float] | None:
    """From the service's /metrics: mean engine batch size, and images per second of engine time
    (what the engine alone sustained inside the service)."""
    text = http_get(url + "/metrics")[1].decode()
    pattern = r"^gemmserve_(batch_size|inference_duration_seconds)_(sum|count) (\S+)$"
    found = {(m, k): float(v) for m, k, v in re.findall(pattern, text, re.M)}
    batches, images = found.get(("batch_size", "count")), found.get(("batch_size", "sum"))
    engine_s = found.get(("inference_duration_seconds", "sum"))
    if not batches or not engine_s:
        return None
    return images / batches, images / engine_s


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` so far, all threads (Linux), else None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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


def run_all(args: argparse.Namespace, model_dir: Path) -> list[tuple]:
    x = np.random.default_rng(1).standard_normal((3, 32, 32)).astype(np.float32)
    buffer = io.BytesIO()
    np.save(buffer, x, allow_pickle=False)
    body = buffer.getvalue()
    logs = model_dir.parent
    # One autotune cache for both service runs: the same algorithms per bucket in each, tuned once.
    cache = {"autotune_cache": logs / "cifar.autotune.json"}
    device = args.device
    servers = {
        "gemmserve (batching)": ServiceProcess(
            model_dir, logs / "batching.log", flags=cache, device=device
        ),
        "gemmserve --max-batch-size 1": ServiceProcess(
            model_dir, logs / "single.log", flags={**cache, "max_batch_size": 1}, device=device
        ),
        "plain FastAPI + onnxruntime": PlainServer(model_dir / "model.onnx", logs / "plain.log"),
        "no-op FastAPI endpoint": PlainServer(None, logs / "noop.log"),
    }
    rows = []
    for name, server in servers.items():
        if args.only and not any(o in name for o in args.only):
            continue
        with server:
            result, cpu_ms = asyncio.run(measure(server, body, args))
            figures = engine_figures(server.url) if "gemmserve" in name else None
            rows.append((name, result, cpu_ms, figures))
        print(f"  measured {name}: {result.throughput:.0f} req/s", file=sys.stderr)
    return rows


def table(rows) -> str:
    lines = [
        "| server | req/s | p50 ms | p99 ms | non-200 | CPU ms/req | mean batch | engine img/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r, cpu_ms, figures in rows:
        bad = sum(n for s, n in r.statuses.items() if s != 200)
        p50, p99 = r.percentile_ms(50), r.percentile_ms(99)
        cpu = "" if cpu_ms is None else f"{cpu_ms:.2f}"
        engine = "| |" if figures is None else f"| {figures[0]:.1f} | {figures[1]:,.0f} |"
        lines.append(
            f"| {name} | {r.throughput:,.0f} | {p50:.1f} | {p99:.1f} | {bad} | {cpu} {engine}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--warmup-s", type=float, default=3.0)
    parser.add_argument("--only", nargs="*", help="run only servers whose name contains these")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"),
                        help="the device gemmserve runs on")  # fmt: skip
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gemmserve-compare-") as tmp:
        model_dir = Path(tmp) / "cifar"
        model_dir.mkdir()
        onnx.save(cifar_cnn(), model_dir / "model.onnx")
        rows = run_all(args, model_dir)
    print(f"Machine: {machine()}")
    print(
        f"Load: {args.connections} connections, closed loop, {args.seconds:.0f} s measured "
        f"after {args.warmup_s:.0f} s warm-up, one 3x32x32 .npy image per request, gemmserve "
        f"on --device {args.device}"
    )
    print(table(rows))


if __name__ == "__main__":
    main()
