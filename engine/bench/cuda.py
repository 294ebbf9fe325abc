"""The GPU part of ``python -m engine.bench --device cuda``, all in one run on one card:

- images/s, host array in -> host array out, of the engine eager and with CUDA graphs, and of
  PyTorch with ``cudnn.benchmark = True`` eager and with CUDA graphs, on the same nets and
  inputs, batch 1 to 256; and the engine over a run of batches with host/device copies
  overlapped with compute (``StreamedRunner``);
- the conv layers' TFLOP/s next to the card's own cuBLAS SGEMM rate measured in the same run;
- the engine's error against PyTorch, and the error of TF32 and FP16 GEMMs against FP32.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np

from engine.bench.nets import NETS
from engine.bench.runners import conv_flops_per_image, interleaved_medians, profile, torch_forward

CUDA_BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
STREAMED_BATCHES = 16
CONV_CATEGORIES = ("gather", "GEMM + transforms", "epilogue")


def sgemm_tflops(cupy, n: int = 8192, math_mode: str = "fp32") -> float:
    """cuBLAS float32 GEMM rate on an n x n x n product, timed with CUDA events."""
    from engine.cuda.precision import gemm_math

    rng = np.random.default_rng(0)
    a, b = (cupy.asarray(rng.standard_normal((n, n), dtype=np.float32)) for _ in range(2))
    out = cupy.empty((n, n), np.float32)
    with gemm_math(cupy, math_mode):
        seconds = device_seconds(cupy, lambda: cupy.matmul(a, b, out=out), runs=10)
    return 2 * n**3 / seconds / 1e12


def device_seconds(cupy, fn, runs: int) -> float:
    """Median seconds of ``fn`` on the current stream (CUDA events), after one warm-up."""
    fn()
    times = []
    for _ in range(runs):
        start, end = cupy.cuda.Event(), cupy.cuda.Event()
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, end) / 1e3)
    return sorted(times)[runs // 2]


def torch_cuda(model_proto, graphs: bool):
    """PyTorch on the GPU with cudnn.benchmark: eager, or one CUDA graph per input shape;
    None without a CUDA build of PyTorch."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    torch.backends.cudnn.benchmark = True
    forward = torch_forward(model_proto, torch, "cuda")
    if not graphs:

        def eager(x):
            with torch.inference_mode():
                return forward(torch.from_numpy(x).cuda()).cpu().numpy()

        return eager
    captured = {}

    def replay(x):
        if x.shape not in captured:
            captured[x.shape] = torch_graph(torch, forward, x.shape)
        graph, static_in, static_out = captured[x.shape]
        static_in.copy_(torch.from_numpy(x))
        graph.replay()
        return static_out.cpu().numpy()

    return replay


def torch_graph(torch, forward, shape):
    """PyTorch's recipe: warm up on a side stream (cudnn.benchmark picks its algorithms), then
    capture one forward pass on static input and output tensors."""
    static_in = torch.zeros(shape, device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), torch.inference_mode():
        for _ in range(3):
            forward(static_in)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.inference_mode(), torch.cuda.graph(graph):
        static_out = forward(static_in)
    return graph, static_in, static_out


def relative(y, reference) -> float:
    reference = np.asarray(reference, np.float64)
    return float(np.linalg.norm(np.asarray(y, np.float64) - reference) / np.linalg.norm(reference))


def precision_errors(model, x) -> dict[str, float]:
    """The whole net's output error with every float32 GEMM at TF32 / FP16, against FP32
    (measured, not claimed; eager, so that each mode applies to every GEMM). The GEMMs go
    through the direct cuBLAS path, which takes the compute type per call: CuPy's own float32
    GEMMs ignore FP16 and, when batched, TF32 too."""
    from engine.cuda.cublas import Cublas
    from engine.cuda.graphs import direct_gemms_while_capturing
    from engine.cuda.precision import gemm_math

    cupy = model.backend.xp
    fp32 = model(x)
    errors = {}
    for mode in ("tf32", "fp16"):
        with (
            gemm_math(cupy, mode),
            direct_gemms_while_capturing(cupy, Cublas.shared(cupy), always=True),
        ):
            errors[mode] = relative(model(x), fp32)
    return errors


def measure(path: Path, proto, batch: int, args, cache: str) -> dict:
    """Every GPU runner on one net and batch size."""
    from engine import load_model

    chw = NETS[proto.graph.name][1]
    x = np.random.default_rng(batch).standard_normal((batch, *chw), dtype=np.float32)
    graphs = load_model(path, "cuda", (batch,), autotune_cache=cache, cuda_graphs=True)
    eager = load_model(path, "cuda", (batch,), autotune_cache=cache, cuda_graphs=False)
    runners = {"engine eager": eager, "engine graphs": graphs,
               "PyTorch eager": torch_cuda(proto, graphs=False),
               "PyTorch graphs": torch_cuda(proto, graphs=True)}  # fmt: skip
    runners = {name: run for name, run in runners.items() if run is not None}
    row = {"batch": batch}
    reference = runners["PyTorch eager"](x) if "PyTorch eager" in runners else None
    for name, run in runners.items():
        if reference is not None:
            row[f"{name} error"] = relative(run(x), reference)
    calls = {name: (lambda run=run: run(x)) for name, run in runners.items()}
    calls["engine streamed"] = streamed_calls(graphs, x)
    seconds = interleaved_medians(calls, args.min_time_s, 200)
    for name, s in seconds.items():
        row[name] = batch * (STREAMED_BATCHES if name == "engine streamed" else 1) / s
    row["graphs"] = graphs.backend.graphs.info()
    conv_s = sum(profile(eager, x).get(c, 0.0) for c in CONV_CATEGORIES)
    row["conv TFLOP/s"] = conv_flops_per_image(eager) * batch / conv_s / 1e12
    if batch == args.batch_sizes[-1]:
        row["precision"] = precision_errors(eager, x)
    return row


def streamed_calls(model, x):
    """One call runs STREAMED_BATCHES batches with copies overlapped with compute."""
    from collections import deque

    from engine.bench.streamed import StreamedRunner

    runner = StreamedRunner(model, model.backend.execute)
    batches = [x] * STREAMED_BATCHES
    return lambda: deque(runner.map(batches), maxlen=0)


COLUMNS = ("net", "batch", "engine eager", "engine graphs", "graph gain", "engine streamed",
           "PyTorch eager", "PyTorch graphs", "engine best / PyTorch best", "conv TFLOP/s",
           "SGEMM TFLOP/s")  # fmt: skip


def table(rows, sgemm: float) -> list[str]:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|---|" + "---:|" * (len(COLUMNS) - 1)]
    for net, r in rows:
        ours = max(r["engine eager"], r["engine graphs"], r["engine streamed"])
        theirs = max(r.get("PyTorch eager", math.nan), r.get("PyTorch graphs", math.nan))
        cells = [net, str(r["batch"]), f"{r['engine eager']:.0f}", f"{r['engine graphs']:.0f}",
                 f"{r['engine graphs'] / r['engine eager']:.2f}x", f"{r['engine streamed']:.0f}",
                 f"{r.get('PyTorch eager', math.nan):.0f}",
                 f"{r.get('PyTorch graphs', math.nan):.0f}", f"{ours / theirs:.2f}x",
                 f"{r['conv TFLOP/s']:.2f}", f"{sgemm:.1f}"]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main(args, workdir: Path, cache: str) -> int:
    """Run the GPU benchmark for ``args`` (parsed by engine.bench) and print its report."""
    from engine.backends.cupy_backend import CupyBackend
    from engine.errors import DeviceUnavailableError

    try:
        backend = CupyBackend()
    except DeviceUnavailableError as error:
        print(f"--device cuda: {error}", file=sys.stderr)
        return 2
    print(f"GPU: {backend.fingerprint()}\n", flush=True)
    sgemm = sgemm_tflops(backend.xp)
    print(f"cuBLAS SGEMM 8192^3: {sgemm:.1f} TFLOP/s (FP32), "
          f"{sgemm_tflops(backend.xp, math_mode='tf32'):.1f} TFLOP/s (TF32)\n")  # fmt: skip
    rows = []
    for net in args.nets:
        proto = NETS[net][0]()
        path = workdir / f"{net}.onnx"
        path.write_bytes(proto.SerializeToString())
        for batch in args.batch_sizes:
            row = measure(path, proto, batch, args, cache)
            rows.append((net, row))
            errors = {k: f"{v:.1e}" for k, v in row.items() if k.endswith("error")}
            print(f"{net} batch {batch}: graphs {row['graphs']}; vs PyTorch {errors}", flush=True)
            if "precision" in row:
                print(f"{net} batch {batch}: error against FP32 GEMMs {row['precision']}")
    print("\n## Images/s on the GPU (host in, host out)\n\n" + "\n".join(table(rows, sgemm)))
    sys.stdout.flush()
    return 0
