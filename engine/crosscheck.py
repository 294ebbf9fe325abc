"""The start-up cross-check: a model's outputs against the NumPy engine's on the same ONNX file.

A GPU result that is wrong (a kernel bug, a capture that replays stale buffers, a cuBLAS call
with a wrong stride) is silent: the numbers still look like numbers. Before a model serves, each
batch bucket runs once on fresh random inputs through the model as it will serve (CUDA graphs
included) and through a NumPy reference built from the same file with the default algorithms
(im2col + GEMM, no tuning). The outputs must agree within what the allowed GEMM precision
explains: FP32, or TF32 where the user allowed it.

When a bucket disagrees, the layers are compared one by one to say where: the reference runs the
plan step by step and keeps every value; then each step of the checked model runs on the
reference's inputs to that step, so a layer's error is its own, not what earlier layers passed
on. The first layer over the tolerance is named (or, when none is over on its own and the
errors only add up, the largest). That pass runs eagerly: a mismatch found by the network run
but by no layer points at graph replay rather than at a kernel.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np

from engine.errors import EngineError

#: largest relative error ||y - ref|| / ||ref|| accepted, per GEMM precision the model may use.
#: FP32 GEMMs differ from NumPy's only by summation order (~1e-6 per layer); the algorithms the
#: autotuner may pick are accepted at 1e-4 per layer (Winograd), a few layers add up below 1e-3.
#: TF32 rounds GEMM inputs to 10 mantissa bits (~5e-4 per layer; the tuner accepts 1e-2).
TOLERANCE = {"fp32": 1e-3, "tf32": 1e-2}
#: the norm below which a reference tensor counts as zero, per element (keeps an output of
#: zeros from turning a 1e-9 difference into an infinite relative error)
ZERO_NORM_PER_ELEMENT = 1e-6


class CrossCheckError(EngineError):
    """The model's outputs differ from the NumPy engine's by more than its precision allows.

    ``result`` is the check's summary (what ``Model.info()["crosscheck"]`` holds)."""

    def __init__(self, result: dict):
        self.result = result
        super().__init__(describe_failure(result))


@dataclass
class Difference:
    """How far one tensor is from its reference."""

    relative: float
    max_abs: float

    def within(self, tolerance: float) -> bool:
        return self.relative <= tolerance  # False for NaN


@dataclass
class LayerDifference:
    """One planned step's own error: its output on the reference's inputs, vs the reference."""

    layer: str
    op: str
    algorithm: str | None
    relative_error: float
    max_abs_error: float


@dataclass
class BucketResult:
    bucket: int
    relative_error: float
    max_abs_error: float
    passed: bool
    layers_checked: int = 0
    layer: LayerDifference | None = field(default=None)


def difference(got, want) -> Difference:
    """Relative (norm-wise, float64) and largest absolute difference of two host arrays.

    Where the reference is not finite the two must be equal (NaN matching NaN); a non-finite
    value where the reference is finite, or a shape or integer mismatch, is an infinite error."""
    got, want = np.asarray(got), np.asarray(want)
    if got.shape != want.shape:
        return Difference(np.inf, np.inf)
    if want.dtype.kind not in "fc" or got.dtype.kind not in "fc":
        same = np.array_equal(got, want)
        return Difference(0.0 if same else np.inf, 0.0 if same else np.inf)
    got, want = got.astype(np.float64), want.astype(np.float64)
    finite = np.isfinite(want)
    same = (got == want) | (np.isnan(got) & np.isnan(want))
    if np.any(~finite & ~same):
        return Difference(np.inf, np.inf)
    diff = np.where(finite, got - want, 0.0)
    if not np.all(np.isfinite(diff)):
        return Difference(np.inf, np.inf)
    scale = max(float(np.linalg.norm(np.where(finite, want, 0.0))),
                ZERO_NORM_PER_ELEMENT * np.sqrt(max(want.size, 1)))  # fmt: skip
    max_abs = float(np.max(np.abs(diff))) if diff.size else 0.0
    return Difference(float(np.linalg.norm(diff)) / scale, max_abs)


def precision_of(model) -> str:
    """The loosest GEMM precision the model's conv layers may run at."""
    return "tf32" if "tf32" in getattr(model.tuner, "allowed_math", ("fp32",)) else "fp32"


def reference_model(model):
    """The NumPy engine on the file ``model`` was loaded from: same buckets, default algorithms,
    BLAS threading each GEMM (the quickest way to a reference on a CPU)."""
    from engine.model import load_model

    if model.source is None:
        raise ValueError("the model does not know the ONNX file it came from")
    return load_model(model.source, device="cpu", batch_sizes=model.batch_sizes,
                      autotune_mode="off", cpu_threading="blas",
                      name=f"{model.name} (reference)")  # fmt: skip


def cross_check(model, reference=None, buckets=None, seed=None) -> dict:
    """Compare ``model`` with ``reference`` (default: ``reference_model(model)``) on one batch of
    fresh random inputs per bucket; returns the summary (``passed`` and per-bucket errors) and
    never raises for a mismatch (``Model.cross_check`` does)."""
    started = time.perf_counter()
    reference = reference_model(model) if reference is None else reference
    math = precision_of(model)
    tolerance = TOLERANCE[math]
    rng = np.random.default_rng(seed)
    results = []
    for bucket in buckets or model.batch_sizes:
        x = rng.standard_normal((bucket, *model.input_shape), dtype=np.float32)
        found = difference(model(x), reference(x))
        result = BucketResult(bucket, found.relative, found.max_abs, found.within(tolerance))
        if not result.passed:
            layers = layer_differences(model, reference, x)
            result.layers_checked = len(layers)
            result.layer = first_over(layers, tolerance)
        results.append(result)
    return {
        "passed": all(r.passed for r in results),
        "device": model.device,
        "reference": f"{reference.backend.name} engine with default algorithms",
        "math": math,
        "tolerance": tolerance,
        "seconds": round(time.perf_counter() - started, 3),
        "buckets": [asdict(r) for r in results],
    }


def first_over(layers: list[LayerDifference], tolerance: float) -> LayerDifference | None:
    """The first layer whose own error is over ``tolerance``, else the largest error."""
    for layer in layers:
        if not layer.relative_error <= tolerance:
            return layer
    return max(layers, key=lambda d: d.relative_error, default=None)


def layer_differences(model, reference, x: np.ndarray) -> list[LayerDifference]:
    """Each step of ``model``'s plan for ``x`` run on the reference's inputs to that step, its
    outputs compared with the reference's (both plans come from the same graph and passes, so
    value names and layouts match; a value whose layout differs is not substituted). A plan
    that runs the batch as slices (engine.split) is checked slice by slice."""
    plan = staged_plan(model, x)
    found = []
    for lane, (a, b) in zip(plan.lanes(), plan.ranges):
        found += _lane_differences(model.backend, lane, record_values(reference, x[a:b]))
    return found


def _lane_differences(backend, plan, kept: dict) -> list[LayerDifference]:
    found = []

    def run_step(step, ins):
        ins = [
            _substitute(backend, plan, name, value, kept) for name, value in zip(step.inputs, ins)
        ]
        outs = step.op.run(ins, step.buffers)
        for name, out in zip(step.outputs, outs):
            if name and name in kept and kept[name][1] == plan.values[name].layout:
                got = difference(backend.to_host(out), kept[name][0])
                found.append(describe_step(step, name, got))
        return outs

    with backend.compute_scope():
        plan.execute(run_step)
    backend.synchronize()
    return found


def record_values(model, x: np.ndarray) -> dict[str, tuple[np.ndarray, str]]:
    """Every value ``model``'s plan computes for ``x``: name -> (host copy, storage layout)."""
    plan = staged_plan(model, x)
    backend, kept = model.backend, {}

    def run_step(step, ins):
        outs = step.op.run(ins, step.buffers)
        for name, out in zip(step.outputs, outs):
            if name and out is not None:
                kept[name] = (backend.to_host(out).copy(), plan.values[name].layout)
        return outs

    with backend.compute_scope():
        plan.execute(run_step)
    return kept


def staged_plan(model, x: np.ndarray):
    """The plan for exactly ``x``'s shape, with ``x`` copied into its input buffer."""
    plan = model._plan(tuple(x.shape))
    model.backend.copy_to(plan.inputs[model.input_name], x)
    return plan


def _substitute(backend, plan, name: str, value, kept: dict):
    if name and name in kept and kept[name][1] == plan.values[name].layout:
        return backend.asarray(kept[name][0])
    return value


def describe_step(step, name: str, found: Difference) -> LayerDifference:
    node = step.op.ctx.node
    algorithm = getattr(getattr(step.op, "algorithm", None), "name", None)
    if node is None:  # a layout copy the planner inserted
        return LayerDifference(f"layout copy to {name}", "LayoutConvert", None,
                               found.relative, found.max_abs)  # fmt: skip
    return LayerDifference(node.name, node.op, algorithm, found.relative, found.max_abs)


def describe_failure(result: dict) -> str:
    """One line for an operator: the worst bucket, its error, and the layer where it appears."""
    failed = [b for b in result["buckets"] if not b["passed"]]
    worst = max(failed, key=lambda b: _sortable(b["relative_error"]))
    text = (f"cross-check failed on {result['device']}: batch bucket {worst['bucket']} differs "
            f"from the {result['reference']} by {worst['relative_error']:.2e} relative (largest "
            f"absolute error {worst['max_abs_error']:.3g}; tolerance {result['tolerance']:.0e} "
            f"for {result['math']}); failing buckets {[b['bucket'] for b in failed]}")  # fmt: skip
    layer = worst.get("layer")
    if layer is None:
        return text + "; no layer to blame"
    where = f"{layer['layer']} ({layer['op']}"
    where += f", algorithm {layer['algorithm']})" if layer["algorithm"] else ")"
    if layer["relative_error"] <= result["tolerance"]:
        return (text + f"; every layer is within tolerance on its own when run eagerly (largest: "
                f"{where}, {layer['relative_error']:.2e}): the errors add up, or graph replay "
                "differs from eager execution")  # fmt: skip
    return (text + f"; first appears at layer {where}: {layer['relative_error']:.2e} relative, "
            f"largest absolute error {layer['max_abs_error']:.3g}")  # fmt: skip


def _sortable(value: float) -> float:
    return np.inf if value != value else value  # NaN sorts as the worst
