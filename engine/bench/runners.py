"""What the benchmark times: the engine, onnxruntime, PyTorch eager, and a plain GEMM."""

from __future__ import annotations

import os
import statistics
import time
from collections import defaultdict

import numpy as np

POOLING = {"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool"}


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


#: seconds of timed calls per function per round (after its untimed ones)
BLOCK_S = 0.25
#: seconds of untimed calls that open each block: onnxruntime's intra-op thread spins ~40 ms
#: after its last run (4 ticks of CPU time in the half second after it, counted from
#: /proc/self/task), so one untimed call of a 0.2-2 ms pass left the next runner's first
#: ~40 ms short of a core
SETTLE_S = 0.06


def interleaved_medians(fns: dict, min_time_s: float, max_rounds: int) -> dict[str, float]:
    """Median seconds per call of each function, timed in rounds so that load from other
    processes falls on all of them alike. In each round every function runs as a block:
    untimed calls for SETTLE_S (at least one), then timed calls for about BLOCK_S. The untimed
    calls absorb what the previous block left running: OpenBLAS, OpenMP (PyTorch) and
    onnxruntime keep their worker threads spinning for a while after a call, and on a small
    machine those spinners took the cores from whichever runner came next (timed call by
    call, onnxruntime lost up to half its speed after a BLAS-threaded engine call). After one
    warm-up round, at least three rounds, then until ``min_time_s`` per function or
    ``max_rounds``."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for round_index in range(max_rounds):
        for name, fn in fns.items():
            settled = time.perf_counter() + SETTLE_S
            fn()
            while time.perf_counter() < settled:
                fn()
            block_end = time.perf_counter() + BLOCK_S
            while True:
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
                if start >= block_end:
                    break
        if round_index >= 2 and all(sum(t) >= min_time_s for t in times.values()):
            break
    return {name: statistics.median(t) for name, t in times.items()}


def square_gemm(n: int):
    """A call of NumPy's float32 GEMM on n x n matrices, and its FLOP count."""
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
    out = np.empty((n, n), np.float32)
    return (lambda: np.matmul(a, b, out=out)), 2 * n**3


def onnxruntime_session(model_bytes: bytes):
    """An onnxruntime CPU session using every core, or None when onnxruntime is missing."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    options = ort.SessionOptions()
    options.intra_op_num_threads = cores()
    session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


def _torch_ops(torch, F) -> dict:
    """The ONNX operators the benchmark nets use, as torch.nn.functional calls."""

    def max_pool(a, x):
        return F.max_pool2d(x, a["kernel_shape"], a["strides"], a.get("pads", [0, 0])[:2])

    return {
        "Conv": lambda a, x, w, b=None: F.conv2d(x, w, b, a["strides"], a["pads"][:2]),
        "BatchNormalization": lambda a, x, s, b, m, v: F.batch_norm(x, m, v, s, b, eps=1e-5),
        "Relu": lambda a, x: F.relu(x),
        "Add": lambda a, x, y: x + y,
        "MaxPool": max_pool,
        "GlobalAveragePool": lambda a, x: F.adaptive_avg_pool2d(x, 1),
        "Flatten": lambda a, x: torch.flatten(x, 1),
        "Gemm": lambda a, x, w, b: torch.addmm(b, x, w),
    }


def torch_forward(model, torch, device: str = "cpu"):
    """The ONNX graph as a function of one torch tensor, op by op with torch.nn.functional,
    weights on ``device`` (the GPU benchmark uses it with ``device="cuda"``)."""
    import torch.nn.functional as F
    from onnx import helper, numpy_helper

    ops = _torch_ops(torch, F)
    weights = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()).to(device)
               for t in model.graph.initializer}  # fmt: skip
    nodes = [(n.op_type, {a.name: helper.get_attribute_value(a) for a in n.attribute},
              list(n.input), n.output[0]) for n in model.graph.node]  # fmt: skip
    first, last = model.graph.input[0].name, model.graph.output[0].name

    def forward(x):
        env = dict(weights)
        env[first] = x
        for op, attrs, inputs, output in nodes:
            env[output] = ops[op](attrs, *(env[i] for i in inputs))
        return env[last]

    return forward


def torch_eager(model):
    """The ONNX graph run op by op with torch.nn.functional (PyTorch eager), or None."""
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(cores())
    forward = torch_forward(model, torch)

    def run(x):
        with torch.inference_mode():
            return forward(torch.from_numpy(x)).numpy()

    return run


def conv_flops_per_image(model) -> int:
    """Multiply-adds x 2 of every conv layer for one image (from the planned specs)."""
    plan = next(iter(model.plans.values()))
    per_layer = {s.op.ctx.node.name: s.op.spec.flops() // s.op.spec.n for s in plan.conv_steps()}
    return sum(per_layer.values())


def profile(model, x) -> dict[str, float]:
    """Seconds per category of one call, timing each planned step on its own and, inside each
    single-threaded conv, its gather and epilogue. Threaded convs (the ``_parallel`` and
    ``_bands`` algorithms) run every phase on every core at once: they count as one category."""
    plan = model._plan((model.bucket_for(len(x)), *x.shape[1:]))
    backend, totals = model.backend, defaultdict(float)
    model.backend.copy_to(plan.inputs[model.input_name][: len(x)], x)

    def timed_step(step, ins):
        choice = getattr(step.op, "choice", None)
        threaded = choice is not None and hasattr(choice.algorithm, "parts")
        inner = _instrument(backend, choice.algorithm, totals) if choice and not threaded else ()
        start = backend.now()
        outs = step.op.run(ins, step.buffers)
        seconds = backend.now() - start
        for obj, attr in inner:
            delattr(obj, attr)
        totals[_category(step.op.ctx.node, choice, threaded)] += seconds
        return outs

    with backend.compute_scope():
        plan.execute(timed_step)
    totals["GEMM + transforms"] -= totals["gather"] + totals["epilogue"]
    return dict(totals)


def _category(node, choice, threaded: bool) -> str:
    if choice is not None:
        return "conv, threaded" if threaded else "GEMM + transforms"
    return "pooling" if node is not None and node.op in POOLING else "other"


def _instrument(backend, algorithm, totals) -> list[tuple[object, str]]:
    """Shadow backend.im2col and algorithm.finish with timed versions (removed afterwards)."""

    def timed(fn, category):
        def wrapper(*args):
            start = backend.now()
            fn(*args)
            totals[category] += backend.now() - start

        return wrapper

    backend.im2col = timed(backend.im2col, "gather")
    algorithm.finish = timed(algorithm.finish, "epilogue")
    return [(backend, "im2col"), (algorithm, "finish")]
