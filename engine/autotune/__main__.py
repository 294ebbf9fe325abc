"""``python -m engine.autotune MODEL --device cpu --batch-sizes 1,8,32 --cache FILE``

Tunes every conv layer of MODEL for each batch size, writes FILE, and prints per layer each
candidate's time, the winner and its speed-up over im2col_gemm. On a GPU (or with
``--cross-check always``) the tuned model is then checked against the NumPy engine, bucket by
bucket (engine.crosscheck); a mismatch is printed with the layer where it appears, exit code 1.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path

from engine.autotune import MODES
from engine.conv import REFERENCE, ConvSpec


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m engine.autotune", description=__doc__)
    parser.add_argument("model", help="ONNX file (or a directory holding model.onnx)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    parser.add_argument("--batch-sizes", default="1,8,32", help="comma-separated buckets")
    parser.add_argument("--cache", required=True, help="autotune cache file to read and write")
    parser.add_argument("--mode", default="tune-missing", choices=MODES)
    parser.add_argument("--allow-tf32", action="store_true", help="offer TF32 GEMMs (GPU only)")
    threading = "CPU only, as the service will run: engine (default) or blas"
    parser.add_argument(
        "--cpu-threading", default="engine", choices=("engine", "blas"), help=threading
    )
    check = "compare with the NumPy engine after tuning: auto (on a GPU) or always"
    parser.add_argument("--cross-check", default="auto", choices=("auto", "always"), help=check)
    args = parser.parse_args(argv)
    args.batch_sizes = tuple(int(b) for b in args.batch_sizes.split(",") if b.strip())
    return args


def describe(spec: ConvSpec) -> str:
    """A short human form of a conv spec: C x H x W -> K, kernel, stride, groups."""
    text = f"{spec.c}x{spec.h}x{spec.w}->{spec.k} {spec.r}x{spec.s}"
    if spec.strides != (1, 1):
        text += f" s{spec.strides[0]}"
    if spec.dilations != (1, 1):
        text += f" d{spec.dilations[0]}"
    if spec.groups > 1:
        text += f" g{spec.groups}"
    return text


def candidate_rows(entry: dict) -> list[tuple[str, float, str]]:
    """(name, ms, note) for the winner, the runners-up and the rejected, fastest first."""
    note = "winner"
    for record in entry.get("in_pass", []):  # engine/autotune/inpass.py
        if record.get("replaced"):
            note = (f"winner in the pass: {record['ms']:.3f} ms vs {record['winner_ms']:.3f} ms"
                    f" of {record['replaced']}")  # fmt: skip
    rows = [(entry["winner"], entry.get("ms", math.nan), note)]
    rows += [(r["name"], r.get("ms", math.nan), "") for r in entry.get("runners_up", [])]
    rows += [(r["name"], math.inf, r.get("reason", "rejected")) for r in entry.get("rejected", [])]
    return rows


def layer_table(name: str, spec: ConvSpec, choice, entry: dict | None) -> list[str]:
    head = f"  {name:<24} {describe(spec):<28}"
    if entry is None:
        return [f"{head} {choice.algorithm.name:<22} (single candidate, {choice.source})"]
    rows = candidate_rows(entry)
    reference_ms = next((ms for n, ms, _ in rows if n == REFERENCE), math.nan)
    lines = []
    for i, (algo, ms, note) in enumerate(rows):
        prefix = f"{head} " if i == 0 else " " * (len(head) + 1)
        speedup = reference_ms / ms if math.isfinite(ms) and ms > 0 else math.nan
        shown_ms = f"{ms:9.3f}" if math.isfinite(ms) else f"{'inf':>9}"
        mark = f"{speedup:6.2f}x" if math.isfinite(speedup) else "      -"
        lines.append(f"{prefix}{algo:<22} {shown_ms} ms {mark}  {note}".rstrip())
    return lines


def report(model) -> list[str]:
    """Every planned bucket's conv layers with their candidates, and the per-bucket totals."""
    tuner, lines = model.tuner, []
    for key, plan in model.plans.items():
        lines.append(f"batch {key[0]}:")
        tuned_ms = reference_ms = 0.0
        for step in plan.conv_steps():
            spec, choice = step.op.spec, step.op.choice
            entry = tuner.entries.get(tuner.key(spec))
            lines += layer_table(step.op.ctx.node.name, spec, choice, entry)
            if entry is not None:
                rows = {n: ms for n, ms, _ in candidate_rows(entry)}
                tuned_ms += entry.get("ms", math.nan)
                reference_ms += rows.get(REFERENCE, math.nan)
        if tuned_ms > 0:
            gain = reference_ms / tuned_ms
            lines.append(f"  convs: {tuned_ms:.2f} ms tuned vs {reference_ms:.2f} ms {REFERENCE}"
                         f" everywhere ({gain:.2f}x)")  # fmt: skip
    return lines


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from engine import EngineError, load_model

    path = Path(args.model)
    try:
        model = load_model(
            path / "model.onnx" if path.is_dir() else path,
            device=args.device,
            batch_sizes=args.batch_sizes,
            autotune_cache=args.cache,
            autotune_mode=args.mode,
            allow_tf32=args.allow_tf32,
            cpu_threading=args.cpu_threading,
        )
    except EngineError as error:
        print(f"python -m engine.autotune: {error}", file=sys.stderr)
        return 2
    print("\n".join(report(model)))
    info = model.tuner.info()
    summary = f"{info['hits']} hits, {info['misses']} tuned in {info['tuning_seconds']:.2f} s"
    print(f"cache {args.cache}: {info['cache_status']}, {info['entries']} entries, {summary}")
    if args.cross_check == "always" or model.device == "cuda":
        return cross_check(model)
    return 0


def cross_check(model) -> int:
    """Check the tuned model against the NumPy engine; print the outcome; the exit code."""
    from engine import CrossCheckError

    try:
        result = model.cross_check()
    except CrossCheckError as error:
        print(f"python -m engine.autotune: {error}", file=sys.stderr)
        return 1
    worst = max(b["relative_error"] for b in result["buckets"])
    print(f"cross-check passed: every bucket within {result['tolerance']:.0e} of the "
          f"{result['reference']} ({result['math']}; largest error {worst:.1e})")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
