"""``python -m engine.bench [--device cpu|cuda] [--batch-sizes 1,8,32,128] [--nets cifar,resnet18]
[--quick]``

Images/s of the engine with tuned conv algorithms, the engine with its untuned defaults
(im2col_gemm; gemm_1x1 for 1x1 convs), onnxruntime and PyTorch eager, all in one run on the same
random inputs; the conv layers' GFLOP/s next to this machine's own float32 GEMM rate; where the
engine's time goes; and which algorithm won which layer.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import logging
import math
import os
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np

from engine.autotune.__main__ import report as autotune_report
from engine.bench.layers import layer_rows, layer_table, onnxruntime_conv_ms
from engine.bench.nets import NETS
from engine.bench.runners import (
    conv_flops_per_image,
    cores,
    interleaved_medians,
    onnxruntime_session,
    profile,
    square_gemm,
    torch_eager,
)

QUICK_RESNET_BATCHES = (1, 8)
CATEGORIES = ("gather", "GEMM + transforms", "epilogue", "conv, threaded", "pooling", "other")
CONV_CATEGORIES = ("gather", "GEMM + transforms", "epilogue", "conv, threaded")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m engine.bench", description=__doc__)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--batch-sizes", help="default 1,8,32,128; on cuda 1,2,4,...,256")
    parser.add_argument("--nets", default="cifar,resnet18")
    quick = f"ResNet-18 only at batch {QUICK_RESNET_BATCHES}, shorter timing"
    parser.add_argument("--quick", action="store_true", help=quick)
    parser.add_argument("--cache", help="autotune cache file (default: a fresh one in a temp dir)")
    parser.add_argument("--min-time-s", type=float, default=2.0, help="timing per measurement")
    threading = "CPU only: engine splits work per core (the default), blas threads each GEMM"
    parser.add_argument(
        "--cpu-threading", default="engine", choices=("engine", "blas"), help=threading
    )
    args = parser.parse_args(argv)
    default_batches = "1,2,4,8,16,32,64,128,256" if args.device == "cuda" else "1,8,32,128"
    args.batch_sizes = tuple(int(b) for b in (args.batch_sizes or default_batches).split(","))
    args.nets = tuple(n.strip() for n in args.nets.split(","))
    unknown = set(args.nets) - set(NETS)
    if unknown:
        parser.error(f"unknown nets {sorted(unknown)}; choose from {sorted(NETS)}")
    if args.quick:
        args.min_time_s = min(args.min_time_s, 0.5)
    return args


def machine() -> str:
    from engine.backends import NumpyBackend

    fp = NumpyBackend().fingerprint()
    versions = [f"NumPy {np.__version__}"]
    for module in ("onnxruntime", "torch"):
        with contextlib.suppress(ImportError):
            versions.append(f"{module} {__import__(module).__version__}")
    return (f"{fp['cpu']}, {cores()} cores ({', '.join(fp['isa'])}), BLAS {fp['blas']} "
            f"({fp['threads']} threads), Python {platform.python_version()}, "
            + ", ".join(versions))  # fmt: skip


def measure_batch(path: Path, model_proto, chw, batch: int, args, cache: str) -> dict:
    """Every runner on one net and batch size; returns images/s, profiles and the tuned model."""
    from engine import load_model

    x = np.random.default_rng(batch).standard_normal((batch, *chw), dtype=np.float32)
    threading = {"cpu_threading": args.cpu_threading}
    tuned = load_model(path, args.device, (batch,), autotune_cache=cache, **threading)
    plain = load_model(path, args.device, (batch,), autotune_mode="off", **threading)
    runners = {"engine tuned": tuned, "engine untuned": plain,
               "onnxruntime": onnxruntime_session(model_proto.SerializeToString()),
               "PyTorch eager": torch_eager(model_proto)}  # fmt: skip
    row = {"batch": batch, "tuning_s": tuned.tuner.stats.tuning_seconds, "model": tuned}
    runners = {name: run for name, run in runners.items() if run is not None}
    reference = runners["onnxruntime"](x) if "onnxruntime" in runners else None
    for name, run in runners.items():
        if reference is not None:
            y = run(x)
            row[f"{name} error"] = float(np.linalg.norm(y - reference) / np.linalg.norm(reference))
    calls = {name: (lambda run=run: run(x)) for name, run in runners.items()}
    for name, seconds in interleaved_medians(calls, args.min_time_s, 50).items():
        row[name] = batch / seconds
    # the machine's GEMM rate, timed after the runners and not among them: OpenBLAS's threads
    # spin on after a call, and the runner timed next lost a core to them (the CIFAR net at
    # batch 8 measured 3,000-3,300 or 4,600-4,900 img/s from run to run)
    gemm, gemm_flops = square_gemm(1024 if args.quick else 2048)
    gemm_s = interleaved_medians({"GEMM": gemm}, args.min_time_s / 4, 5)["GEMM"]
    row["GEMM GFLOP/s"] = gemm_flops / gemm_s / 1e9
    row["profile tuned"] = profile(tuned, x)
    row["profile untuned"] = profile(plain, x)
    conv_s = sum(row["profile tuned"].get(c, 0) for c in CONV_CATEGORIES)
    row["conv GFLOP/s"] = conv_flops_per_image(tuned) * batch / conv_s / 1e9
    if "onnxruntime" in runners:
        convs = onnxruntime_conv_ms(model_proto.SerializeToString(), x)
        row["layers"] = layer_rows(tuned, batch, convs)
    return row


def throughput_table(rows: list[tuple[str, dict]]) -> list[str]:
    lines = [
        "| net | batch | engine tuned | engine untuned | tuning gain | onnxruntime | PyTorch eager "
        "| tuned / ORT | conv GFLOP/s (tuned) | GEMM GFLOP/s | tuning s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for net, r in rows:
        ort, torch = r.get("onnxruntime", math.nan), r.get("PyTorch eager", math.nan)
        lines.append(
            f"| {net} | {r['batch']} | {r['engine tuned']:.0f} | {r['engine untuned']:.0f} "
            f"| {r['engine tuned'] / r['engine untuned']:.2f}x | {ort:.0f} | {torch:.0f} "
            f"| {r['engine tuned'] / ort:.2f}x | {r['conv GFLOP/s']:.0f} | {r['GEMM GFLOP/s']:.0f} "
            f"| {r['tuning_s']:.1f} |"
        )
    return lines


def profile_table(rows: list[tuple[str, dict]]) -> list[str]:
    lines = ["| net | batch | engine | " + " | ".join(CATEGORIES) + " | total |",
             "|---|---:|---|" + "---:|" * (len(CATEGORIES) + 1)]  # fmt: skip
    for net, r in rows:
        for which in ("tuned", "untuned"):
            ms = [1e3 * r[f"profile {which}"].get(c, 0.0) for c in CATEGORIES]
            cells = " | ".join(f"{v:.2f}" for v in ms)
            lines.append(f"| {net} | {r['batch']} | {which} | {cells} | {sum(ms):.2f} |")
    return lines


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    workdir = Path(tempfile.mkdtemp(prefix="gemmserve-bench-"))
    cache = args.cache or str(workdir / "autotune.json")
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(f"# engine.bench, {now}\n\nMachine: {machine()}\n\nCommand: `python -m engine.bench "
          f"{' '.join(sys.argv[1:] if argv is None else argv)}`\n")  # fmt: skip
    if args.device == "cuda":  # GPU runners, graphs and SGEMM rate: engine/bench/cuda.py
        from engine.bench.cuda import main as cuda_main

        return cuda_main(args, workdir, cache)
    load_start = os.getloadavg()[0]
    rows, reports = [], []
    for net in args.nets:
        proto = NETS[net][0]()
        path = workdir / f"{net}.onnx"
        path.write_bytes(proto.SerializeToString())
        batches = args.batch_sizes
        if args.quick and net.startswith("resnet18"):
            batches = tuple(b for b in batches if b in QUICK_RESNET_BATCHES) or (1,)
        for batch in batches:
            row = measure_batch(path, proto, NETS[net][1], batch, args, cache)
            rows.append((net, row))
            errors = {k: f"{v:.1e}" for k, v in row.items() if k.endswith("error")}
            print(f"{net} batch {batch}: tuned in {row['tuning_s']:.1f} s; vs onnxruntime {errors}",
                  flush=True)  # fmt: skip
            reports += [f"{net}:"] + autotune_report(row.pop("model"))
    print(f"\nLoad average (1 min) at start {load_start:.1f}, at end {os.getloadavg()[0]:.1f}")
    print("\n## Images/s\n\n" + "\n".join(throughput_table(rows)))
    print("\n## Where the engine's time goes (ms per batch)\n\n" + "\n".join(profile_table(rows)))
    layers = [(net, r["batch"], r["layers"]) for net, r in rows if "layers" in r]
    if layers:
        print("\n## Per conv layer against onnxruntime's own per-node profile\n")
        print("\n".join(layer_table(layers)))
    print("\n## Autotuned conv layers (candidates' ms, speed-up over im2col_gemm)\n")
    print("```\n" + "\n".join(reports) + "\n```")
    return 0


if __name__ == "__main__":
    sys.exit(main())
