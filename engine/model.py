"""The loaded model: graph + backend + one plan per batch bucket."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from engine.autotune import Autotuner, inpass
from engine.backends import NumpyBackend, resolve_backend
from engine.crosscheck import CrossCheckError, cross_check
from engine.errors import InputShapeError, OutOfMemoryError
from engine.graph import Graph
from engine.onnx import load_graph
from engine.passes import optimize
from engine.plan import Arena, Plan
from engine.split import NotSplittableError, SplitPlan
from engine.threads import cpu_cores

DEFAULT_BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64)
DEFAULT_SPATIAL = 224
MAX_EXTRA_PLANS = 8  # for inputs whose H/W are symbolic in the ONNX file
FLOAT32 = np.dtype(np.float32)  # a singleton: the common input check compares by identity
_now = time.perf_counter


@dataclass
class EngineStats:
    """Plain numbers about the last call, for whoever keeps metrics."""

    batch: int = 0
    bucket: int = 0
    seconds: float = 0.0


class Model:
    """A CNN ready to run: ``model(x)`` on float32 NCHW arrays of any batch size."""

    def __init__(self, graph: Graph, backend, batch_sizes, tuner: Autotuner, name: str):
        if not graph.inputs or not graph.outputs:
            raise InputShapeError("the model has no inputs or no outputs")
        self.graph, self.backend, self.tuner, self.name = graph, backend, tuner, name
        self.batch_sizes = tuple(sorted({int(b) for b in batch_sizes}))
        if not self.batch_sizes or self.batch_sizes[0] < 1:
            raise ValueError(f"batch sizes must be positive, got {batch_sizes}")
        self.constants = {k: backend.asarray(v) for k, v in graph.constants.items()}
        first = graph.inputs[0]
        self.input_name = first.name
        # symbolic dims (None) accept any size; they are planned at DEFAULT_SPATIAL up front
        self.input_dims = tuple(first.shape[1:])
        self.input_shape = tuple(d or DEFAULT_SPATIAL for d in self.input_dims)
        self.output_name = graph.outputs[0].name
        self.plans: dict[tuple, Plan] = {}
        #: input shape -> (its bucket's plan, the staged input's first rows, the bucket), for
        #: the batch buckets' shapes
        self._staged: dict[tuple, tuple] = {}
        self._extra_plans: list[tuple] = []  # keys of plans made after load, oldest first
        for bucket in self.batch_sizes:
            self._plan((bucket, *self.input_shape), bind=False)
        # lane i of every plan shares arena i: buckets run one at a time, a split plan's lanes
        # at once (engine.split)
        lanes = [plan.lanes() for plan in self.plans.values()]
        self.arenas = [Arena(backend, [ls[i] for ls in lanes if i < len(ls)])
                       for i in range(max(map(len, lanes)))]  # fmt: skip
        for plan_lanes in lanes:
            for lane, arena in zip(plan_lanes, self.arenas):
                lane.bind(arena)
        self.output_shape = tuple(self.plans[(self.batch_sizes[0], *self.input_shape)]
                                  .values[self.graph.outputs[0].name].shape[1:])  # fmt: skip
        self._last = (0, 0, 0.0)  # last_stats's numbers
        self.source = None  # the ONNX file (path, bytes or ModelProto), set by load_model
        self.crosscheck: dict | None = None  # the last cross-check's summary
        inpass.refine(self)  # close calls on big-weight layers, settled by whole passes
        tuner.save()

    @property
    def device(self) -> str:
        return self.backend.device

    @property
    def max_batch_size(self) -> int:
        return self.batch_sizes[-1]

    def bucket_for(self, n: int) -> int:
        """The smallest planned batch size that holds ``n`` images."""
        for bucket in self.batch_sizes:
            if bucket >= n:
                return bucket
        raise InputShapeError(f"batch {n} exceeds the largest bucket {self.max_batch_size}")

    def _plan(self, shape: tuple, bind: bool = True) -> Plan:
        if shape not in self.plans:
            shapes = {self.input_name: shape}
            for info in self.graph.inputs[1:]:
                shapes[info.name] = tuple(d or 1 for d in info.shape)
            self._add_plan(shape, shapes, bind)
        return self.plans[shape]

    def _lanes_for(self, shapes: dict) -> int:
        """How many batch slices a plan for ``shapes`` runs as (engine.split): one per core on
        the CPU when the engine does the threading and the batch has an image per core."""
        if self.backend.device != "cpu" or len(shapes) != 1:
            return 1
        if getattr(self.backend, "cpu_threading", None) != "engine":
            return 1
        (shape,) = shapes.values()
        return min(cpu_cores(), shape[0]) if len(shape) == 4 and self._batch_first() else 1

    def _batch_first(self) -> bool:
        """Whether the ONNX file declares a free batch dimension on its input and every output
        (a fixed one, e.g. Flatten(axis=0)'s, may mix the images: such a graph is not split)."""
        declared = [self.graph.inputs[0], *self.graph.outputs]
        return all(info.shape and info.shape[0] is None for info in declared)

    def _new_plan(self, shapes: dict):
        lanes = self._lanes_for(shapes)
        if lanes >= 2:
            try:
                return SplitPlan(self.graph, self.backend, shapes, self.tuner, self.constants,
                                 lanes)  # fmt: skip
            except NotSplittableError:
                pass
        return Plan(self.graph, self.backend, shapes, self.tuner, self.constants)

    def _add_plan(self, key, shapes: dict, bind: bool = True) -> Plan:
        """Plan for new shapes; lay each lane on its shared arena when it fits, else its own."""
        plan = self._new_plan(shapes)
        if bind:
            for index, lane in enumerate(plan.lanes()):
                shared = self.arenas[index] if index < len(self.arenas) else None
                fits = shared is not None and shared.fits(lane)
                lane.bind(shared if fits else Arena(self.backend, [lane]))
            self._extra_plans.append(key)
            if len(self._extra_plans) > MAX_EXTRA_PLANS:  # bound memory for unplanned shapes
                del self.plans[self._extra_plans.pop(0)]
        self.plans[key] = plan
        return plan

    def _check_input(self, x) -> np.ndarray:
        if (type(x) is np.ndarray and x.dtype is FLOAT32 and x.shape[1:] == self.input_dims
                and x.ndim > 1 and x.shape[0] >= 1):  # fmt: skip
            return x  # the common case, in a fraction of the time of the checks below
        x = np.asarray(x)
        if x.dtype.kind != "f":
            raise InputShapeError(f"input dtype must be floating point, got {x.dtype}")
        if x.ndim != 1 + len(self.input_shape) or x.shape[0] < 1:
            raise InputShapeError(f"input shape {x.shape} is not (N, {self.input_shape})")
        if any(d is not None and d != got for d, got in zip(self.input_dims, x.shape[1:])):
            expected = ", ".join("?" if d is None else str(d) for d in self.input_dims)
            raise InputShapeError(f"input shape {x.shape} does not match (N, {expected})")
        return x.astype(np.float32, copy=False)

    def __call__(self, x) -> np.ndarray:
        """Run the first graph output for a float32 NCHW batch of any size."""
        known = self._staged.get(x.shape) if type(x) is np.ndarray and x.dtype is FLOAT32 else None
        lone = None if known is None else known[0].lone_chain()
        if lone is not None:  # a bucket's shape, and its pass one compiled call: the usual
            # batch-1 request on the CPU, with as little Python as it can (run cache-cold
            # after the pass, each line here took microseconds: 10% of the CIFAR net's call)
            start = _now()
            chain, outputs = lone
            known[1][...] = x  # (a CPU plan: copy_to's assignment)
            chain.call()
            y = outputs[0][: len(x)].copy()
            self._last = (len(x), known[2], _now() - start)
            return y
        x = self._check_input(x)
        start = _now()
        n, most = len(x), self.max_batch_size
        if n <= most:
            y = self._run_bucket(x)
        else:
            y = np.concatenate([self._run_bucket(x[i : i + most]) for i in range(0, n, most)])
        self._last = (n, self.bucket_for(min(n, most)), _now() - start)
        return y

    @property
    def last_stats(self) -> EngineStats:
        """Numbers about the last call."""
        return EngineStats(*self._last)

    def _run_bucket(self, x: np.ndarray) -> np.ndarray:
        n = len(x)
        known = self._staged.get(x.shape)
        if known is None:
            bucket = self.bucket_for(n)
            plan = self._plan((bucket, *x.shape[1:]))
            known = plan, plan.inputs[self.input_name][:n], bucket
            if x.shape[1:] == self.input_shape:  # a batch bucket's plan: kept for good
                self._staged[x.shape] = known
        plan, staged, _ = known
        try:
            self.backend.copy_to(staged, x)
            output = self.backend.execute(plan)[0]
            return self.backend.to_host(output[:n]).copy()
        except Exception as error:
            if self.backend.is_out_of_memory(error):
                raise OutOfMemoryError(f"out of device memory at batch {n}: {error}") from error
            raise

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run every graph output for exactly these inputs (no bucketing); plans are cached."""
        names = [i.name for i in self.graph.inputs]
        missing = sorted(set(names) - set(feeds))
        if missing:
            raise InputShapeError(f"missing inputs: {missing}")
        if len(names) == 1:  # the same key as the batch buckets: a bucket's plan is reused
            plan = self._plan(tuple(np.shape(feeds[names[0]])))
        else:
            key = tuple((n, tuple(np.shape(feeds[n]))) for n in names)
            if key not in self.plans:
                self._add_plan(key, {n: tuple(np.shape(feeds[n])) for n in names})
            plan = self.plans[key]
        for name in names:
            self.backend.copy_to(
                plan.inputs[name], np.asarray(feeds[name], plan.inputs[name].dtype)
            )
        with self.backend.compute_scope():
            outputs = plan.execute()
        return [self.backend.to_host(y).copy() for y in outputs]

    def warmup(self) -> list[dict]:
        """Run each bucket once on random data; returns each bucket's time."""
        rng = np.random.default_rng(0)
        stats = []
        for bucket in self.batch_sizes:
            x = rng.standard_normal((bucket, *self.input_shape)).astype(np.float32)
            self(x)
            stats.append({"bucket": bucket, "seconds": self.last_stats.seconds})
        return stats

    def cross_check(self, reference=None, seed=None) -> dict:
        """Compare every bucket with the NumPy engine on the same ONNX file (see
        engine.crosscheck); returns the summary, or raises CrossCheckError naming the largest
        error and the layer where it first appears. ``info()["crosscheck"]`` keeps the result."""
        self.crosscheck = cross_check(self, reference, seed=seed)
        if not self.crosscheck["passed"]:
            raise CrossCheckError(self.crosscheck)
        return self.crosscheck

    def info(self) -> dict:
        """What the model is and how it runs: shapes, device, buckets and each layer's algorithm."""
        plan = self._plan((self.max_batch_size, *self.input_shape))
        layers = []
        for step in plan.steps:
            node = step.op.ctx.node
            if node is None:
                continue
            choice = getattr(step.op, "choice", None)
            layers.append({
                "name": node.name,
                "op": node.op,
                "algorithm": choice.algorithm.name if choice else None,
                "source": choice.source if choice else None,
            })  # fmt: skip
        return {
            "name": self.name,
            "inputs": [{"name": i.name, "shape": ["N", *self.input_shape], "dtype": "float32"}
                       for i in self.graph.inputs[:1]],
            "outputs": [{"name": o.name, "shape": ["N", *self.output_shape], "dtype": "float32"}
                        for o in self.graph.outputs[:1]],
            "device": self.device,
            "backend": self.backend.name,
            "cpu_threading": getattr(self.backend, "cpu_threading", None),
            "batch_sizes": list(self.batch_sizes),
            "opset": self.graph.opset,
            "layers": layers,
            "autotune": self.tuner.info(),
            "crosscheck": self.crosscheck,
        }  # fmt: skip


def load_model(
    path,
    device: str = "cpu",
    batch_sizes=DEFAULT_BATCH_SIZES,
    autotune_cache=None,
    autotune_mode: str = "tune-missing",
    allow_tf32: bool = False,
    name: str | None = None,
    cuda_graphs: bool = True,
    cpu_threading: str = "engine",
) -> Model:
    """Load an ONNX model and plan it for every batch bucket on ``device`` (cpu, cuda or auto).

    ``cuda_graphs``: on a GPU, replay each bucket's forward pass as a CUDA graph where capture
    works and is faster (eager otherwise); ignored on the CPU. ``cpu_threading``: on the CPU,
    ``"engine"`` keeps BLAS on one thread and splits work across the cores itself (robust next
    to other busy threads, e.g. a web server's), ``"blas"`` lets BLAS thread each GEMM (faster
    for a process that only runs the model); see engine.threads."""
    backend = resolve_backend(device, cuda_graphs=cuda_graphs, cpu_threading=cpu_threading)
    graph = load_graph(path)
    tuner = Autotuner(backend, autotune_cache, autotune_mode, allow_tf32=allow_tf32)
    optimize(graph, NumpyBackend(), Autotuner(NumpyBackend(), None, "off"))
    if name is None:
        name = graph.name if not isinstance(path, str | bytes) else _stem(path)
    model = Model(graph, backend, batch_sizes, tuner, name)
    model.source = path
    return model


def _stem(path) -> str:
    import os

    if isinstance(path, bytes):
        return "model"
    return os.path.splitext(os.path.basename(os.fspath(path)))[0]
