"""ONNX's backend interface (``onnx.backend.base``) over ``load_model`` and ``Model.run``.

It lets ONNX's own conformance runner (``onnx.backend.test.BackendTest``) drive the engine.
The engine plans for fixed shapes and needs shape-like values (Reshape's target, Unsqueeze's
axes, ...) to be constants, so graph inputs that feed such operands become initializers: a model
with such inputs is loaded once per distinct set of their values, at ``run`` time.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper
from onnx.backend.base import Backend, BackendRep

from engine.backends import cuda_available
from engine.model import Model, load_model
from engine.ops import REGISTRY

_DEVICES = {"CPU": "cpu", "CUDA": "cuda"}


def _planned_inputs(model: onnx.ModelProto) -> set[str]:
    """Names of values that some node needs when it is planned (weights, shapes, axes)."""
    names = set()
    for node in model.graph.node:
        op = REGISTRY.get(node.op_type)
        slots = op.constant_inputs if op is not None else ()
        names.update(node.input[i] for i in slots if i < len(node.input) and node.input[i])
    return names


def _runtime_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    initialized = {init.name for init in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in initialized]


def _with_constants(model: onnx.ModelProto, values: dict[str, np.ndarray]) -> onnx.ModelProto:
    """A copy of ``model`` whose inputs named in ``values`` are initializers instead."""
    if not values:
        return model
    model = onnx.ModelProto.FromString(model.SerializeToString())
    kept = [i for i in model.graph.input if i.name not in values]
    del model.graph.input[:]
    model.graph.input.extend(kept)
    model.graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in values.items())
    return model


def _first_dim(info: onnx.ValueInfoProto) -> int:
    dims = info.type.tensor_type.shape.dim
    return dims[0].dim_value if dims and dims[0].HasField("dim_value") else 1


class GemmserveRep(BackendRep):
    """A prepared model: runs lists of inputs (in graph-input order) with ``Model.run``."""

    def __init__(self, model: onnx.ModelProto, device: str, autotune_mode: str = "off"):
        self.proto, self.device, self.autotune_mode = model, device, autotune_mode
        self.inputs = _runtime_inputs(model)
        planned = _planned_inputs(model)
        self.constant_inputs = [i.name for i in self.inputs if i.name in planned]
        self.models: dict[bytes, Model] = {}
        if not self.constant_inputs:
            self._model({})  # load now so that unsupported models fail at prepare

    def _model(self, constants: dict[str, np.ndarray]) -> Model:
        key = b"".join(v.tobytes() + f"{v.dtype}{v.shape}".encode() for v in constants.values())
        if key not in self.models:
            model = _with_constants(self.proto, constants)
            floats = [i for i in self.inputs if i.name not in constants]
            # one bucket at the declared batch size: node tests are run at exactly their shapes
            batch = _first_dim(floats[0]) if floats else 1
            self.models[key] = load_model(model, self.device, batch_sizes=(max(batch, 1),),
                                          autotune_mode=self.autotune_mode)  # fmt: skip
        return self.models[key]

    def run(self, inputs, **kwargs) -> tuple[np.ndarray, ...]:
        if isinstance(inputs, dict):
            feeds = {name: np.asarray(value) for name, value in inputs.items()}
        else:
            values = [inputs] if isinstance(inputs, np.ndarray) else list(inputs)
            feeds = {i.name: np.asarray(v) for i, v in zip(self.inputs, values)}
        constants = {name: feeds.pop(name) for name in self.constant_inputs}
        return tuple(self._model(constants).run(feeds))


class GemmserveBackend(Backend):
    """``prepare`` loads a ModelProto with ``load_model``; ``run_model`` prepares and runs."""

    @classmethod
    def prepare(cls, model: onnx.ModelProto, device: str = "CPU", **kwargs) -> GemmserveRep:
        """``autotune_mode`` (default "off": the default algorithms, no timing) may be passed."""
        super().prepare(model, device, **kwargs)  # checks the model
        mode = kwargs.get("autotune_mode", "off")
        return GemmserveRep(model, _DEVICES[device.split(":")[0].upper()], mode)

    @classmethod
    def run_model(cls, model, inputs, device: str = "CPU", **kwargs):
        return cls.prepare(model, device, **kwargs).run(inputs)

    @classmethod
    def supports_device(cls, device: str) -> bool:
        name = device.split(":")[0].upper()
        return name == "CPU" or (name == "CUDA" and cuda_available())


prepare = GemmserveBackend.prepare
run_model = GemmserveBackend.run_model
supports_device = GemmserveBackend.supports_device
