"""Per conv layer: the engine's tuned algorithm against onnxruntime's own per-node profile.

onnxruntime's profile (``SessionOptions.enable_profiling``) times each node it ran, after its
own fusions: a Conv node there includes the BatchNormalization folded into it and the
activation fused after it, as the engine's conv step does. Its nodes are named after the fused
graph, so they are matched to the engine's conv layers by input and weight shapes, in order
among equal ones (a residual block's 1x1 downsampling conv has the output shape of the 3x3
conv beside it, and the two engines order them differently); a layer without a match shows no
onnxruntime figure.

The engine's figure is the tuner's time for the layer's winner (medians of timed runs with the
caches flushed in between, ``engine/autotune/measure.py``): for a bucket run as batch slices
(``engine/split.py``) that is one slice on one core while the other slices run on the other
cores, i.e. the layer's wall time; for batch 1 it is the whole layer.
"""

from __future__ import annotations

import json
import statistics
import tempfile
from pathlib import Path

from engine.bench.runners import cores

#: profiled runs of onnxruntime per batch (after two untimed ones)
PROFILED_RUNS = 20


def onnxruntime_conv_ms(model_bytes: bytes, x) -> list[tuple[tuple, float]]:
    """((input shape N, C, H, W, weight shape K, C/groups, R, S), median ms) of each Conv node
    onnxruntime ran, in order."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as workdir:
        options = ort.SessionOptions()
        options.intra_op_num_threads = cores()
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(workdir) / "ort")
        session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: x}
        for _ in range(2 + PROFILED_RUNS):
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    durations: dict[str, list[float]] = {}
    shapes: dict[str, tuple] = {}
    for event in events:
        args = event.get("args", {})
        if event.get("cat") != "Node" or args.get("op_name") not in ("Conv", "FusedConv"):
            continue
        if not event["name"].endswith("_kernel_time"):
            continue
        durations.setdefault(event["name"], []).append(event["dur"] / 1e3)
        x_shape, w_shape = (tuple(*i.values()) for i in args["input_type_shape"][:2])
        shapes[event["name"]] = (*x_shape, *w_shape)
    return [(shapes[name], statistics.median(ms[2:] or ms)) for name, ms in durations.items()]


def layer_rows(model, batch: int, onnxruntime_convs: list[tuple[tuple, float]]) -> list[dict]:
    """One dict per conv layer of ``model``'s plan for ``batch``: algorithm, the engine's and
    onnxruntime's milliseconds and GFLOP/s."""
    plan = model._plan((model.bucket_for(batch), *model.input_shape))
    steps = plan.lanes()[0].conv_steps()
    remaining = list(onnxruntime_convs)
    rows = []
    for step in steps:
        spec, choice = step.op.spec, step.op.choice
        entry = model.tuner.entries.get(model.tuner.key(spec)) or {}
        gflop = spec.flops() / spec.n * batch / 1e9
        shape = (batch, spec.c, spec.h, spec.w, spec.k, spec.c // spec.groups, spec.r, spec.s)
        ort_ms = next((ms for s, ms in remaining if s == shape), None)
        if ort_ms is not None:
            del remaining[next(i for i, (s, _) in enumerate(remaining) if s == shape)]
        ms = entry.get("ms")
        rows.append({
            "layer": step.op.ctx.node.name,
            "shape": f"{spec.c}x{spec.h}x{spec.w}->{spec.k} {spec.r}x{spec.s}"
                     + (f" s{spec.strides[0]}" if spec.strides != (1, 1) else "")
                     + (f" g{spec.groups}" if spec.groups > 1 else ""),
            "algorithm": choice.algorithm.name + ("+maxpool" if step.op.pooled else ""),
            "engine ms": ms,
            "engine GFLOP/s": gflop / (ms / 1e3) if ms else None,
            "onnxruntime ms": ort_ms,
            "onnxruntime GFLOP/s": gflop / (ort_ms / 1e3) if ort_ms else None,
        })  # fmt: skip
    return rows


def layer_table(rows: list[tuple[str, int, list[dict]]]) -> list[str]:
    """Markdown rows: net, batch and each layer's figures, engine / onnxruntime time ratio."""
    lines = [
        "| net | batch | layer | shape | algorithm | engine ms | engine GFLOP/s "
        "| onnxruntime ms | onnxruntime GFLOP/s | onnxruntime time / engine time |",
        "|---|---:|---|---|---|---:|---:|---:|---:|---:|",
    ]

    def cell(value, digits):
        return "" if value is None else f"{value:.{digits}f}"

    for net, batch, layers in rows:
        for r in layers:
            ratio = (r["onnxruntime ms"] / r["engine ms"]
                     if r["engine ms"] and r["onnxruntime ms"] else None)  # fmt: skip
            lines.append(
                f"| {net} | {batch} | {r['layer']} | {r['shape']} | {r['algorithm']} "
                f"| {cell(r['engine ms'], 3)} | {cell(r['engine GFLOP/s'], 0)} "
                f"| {cell(r['onnxruntime ms'], 3)} | {cell(r['onnxruntime GFLOP/s'], 0)} "
                f"| {cell(ratio, 2)}{'x' if ratio else ''} |"
            )
    return lines
