"""Whether a model fits before it is loaded: its estimated bytes against what the device has
free (less a safety margin) and against ``--memory-limit-mib``, the total the service's models
may use.

The estimate is read from the ONNX file alone, before anything is allocated, and errs high:
the initializers twice (the engine keeps its weights as device arrays and may re-lay some,
e.g. GEMM-ready conv filters), plus every tensor of the graph at the largest batch bucket with
no reuse (the engine's arena shares buffers between steps, so it needs less), plus the
largest conv's im2col columns (its scratch workspace). Tensors whose shape ONNX cannot infer
count as nothing, so a graph of unusual ops may be underestimated; the device's own
out-of-memory error still fails that load alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import onnx
import psutil
from onnx import helper, shape_inference

from service.errors import ModelTooLarge

MIB = 1024 * 1024
MARGIN_FRACTION = 0.1  # of the free bytes, kept for the HTTP workers, the allocator and the OS
MARGIN_MIN_BYTES = 64 * MIB
CGROUP_FILES = (  # (limit, usage): cgroup v2, then v1
    ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
    ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
)


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a model is expected to hold once loaded, by kind."""

    weights_bytes: int  # the initializers as stored in the file
    relaid_bytes: int  # copies the engine may make of them (assumed: all of them)
    activation_bytes: int  # every tensor at the largest bucket, no reuse
    workspace_bytes: int  # the largest conv's im2col columns at the largest bucket

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.relaid_bytes + self.activation_bytes + self.workspace_bytes


def _tensor_bytes(type_proto: onnx.TypeProto) -> int:
    """Bytes of a tensor whose every dimension is known; 0 otherwise."""
    tensor = type_proto.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else 0 for d in tensor.shape.dim]
    if not tensor.HasField("shape") or not all(dims):
        return 0
    itemsize = helper.tensor_dtype_to_np_dtype(tensor.elem_type).itemsize
    return math.prod(dims) * itemsize


def _im2col_bytes(node: onnx.NodeProto, shapes: dict[str, list[int]]) -> int:
    """A conv's column matrix: (C_in / groups * kh * kw) x (N * H_out * W_out), float32."""
    x, w, y = shapes.get(node.input[0]), shapes.get(node.input[1]), shapes.get(node.output[0])
    if not (x and w and y) or len(w) != 4 or len(y) != 4:
        return 0
    return w[1] * w[2] * w[3] * y[0] * y[2] * y[3] * 4


def estimate(onnx_path: Path, batch: int) -> MemoryEstimate:
    """The model's estimated bytes at batch ``batch`` (its largest bucket), from the file."""
    model = onnx.load(str(onnx_path))
    graph = model.graph
    weights = sum(
        math.prod(t.dims) * helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
        for t in graph.initializer
    )
    initializers = {t.name for t in graph.initializer}
    for value in graph.input:  # the batch dimension, fixed at the largest bucket
        dims = value.type.tensor_type.shape.dim
        if value.name not in initializers and dims and not dims[0].HasField("dim_value"):
            dims[0].dim_value = batch
    inferred = shape_inference.infer_shapes(model).graph
    values = [
        v for v in [*inferred.input, *inferred.value_info, *inferred.output]
        if v.name not in initializers
    ]  # fmt: skip
    shapes = {
        v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in values
    }  # fmt: skip
    shapes.update({t.name: list(t.dims) for t in graph.initializer})
    convs = [_im2col_bytes(n, shapes) for n in inferred.node if n.op_type == "Conv"]
    return MemoryEstimate(
        weights_bytes=weights,
        relaid_bytes=weights,
        activation_bytes=sum(_tensor_bytes(v.type) for v in values),
        workspace_bytes=max(convs, default=0),
    )


def _cgroup_free_bytes() -> int | None:
    """Bytes left under this process's cgroup memory limit; None when there is none."""
    for limit_file, usage_file in CGROUP_FILES:
        try:
            limit = Path(limit_file).read_text().strip()
            usage = int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 1 << 60:  # "max" or a huge v1 value: no limit
            return max(0, int(limit) - usage)
    return None


def device_free_bytes(device: str) -> tuple[int, str]:
    """Bytes free where the model will live, and where that is (for the error message)."""
    if device != "cpu":
        from engine.backends import cuda_available

        if device == "cuda" or cuda_available():
            import cupy

            free, _ = cupy.cuda.runtime.memGetInfo()
            pool = cupy.get_default_memory_pool()  # held by the pool but unused: reusable
            return int(free) + int(pool.total_bytes() - pool.used_bytes()), "GPU memory free"
    available = psutil.virtual_memory().available
    cgroup = _cgroup_free_bytes()
    if cgroup is not None and cgroup < available:
        return cgroup, "left under the cgroup memory limit"
    return int(available), "host memory available"


def check_fits(
    name: str, need: MemoryEstimate, others_bytes: int, device: str, limit_mib: int | None
) -> None:
    """Raise ``ModelTooLarge`` when ``need`` exceeds the device's free bytes less a margin, or
    what ``limit_mib`` leaves after the other models' ``others_bytes``."""
    total = need.total_bytes
    what = (
        f"model {name!r} needs an estimated {total / MIB:.2f} MiB (weights "
        f"{need.weights_bytes / MIB:.2f}, re-laid weights {need.relaid_bytes / MIB:.2f}, "
        f"activations {need.activation_bytes / MIB:.2f}, workspace "
        f"{need.workspace_bytes / MIB:.2f})"
    )
    if limit_mib is not None:
        left = limit_mib * MIB - others_bytes
        if total > left:
            raise ModelTooLarge(
                f"{what} but the memory limit of {limit_mib} MiB leaves {max(left, 0) / MIB:.2f} "
                f"MiB after the other models' {others_bytes / MIB:.2f} MiB"
            )
    free, where = device_free_bytes(device)
    usable = free - max(MARGIN_MIN_BYTES, int(free * MARGIN_FRACTION))
    if total > usable:
        raise ModelTooLarge(
            f"{what} but only {max(usable, 0) / MIB:.2f} MiB is usable ({free / MIB:.2f} MiB "
            f"{where}, less a safety margin)"
        )
