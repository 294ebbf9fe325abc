"""Translate an ONNX file into the engine's Graph. Only translation: no execution here."""

from __future__ import annotations

import os

import numpy as np
import onnx
from onnx import helper, numpy_helper

from engine.errors import ModelLoadError, UnsupportedModelError
from engine.graph import Graph, Node, ValueInfo

# each op also refuses versions newer than it implements (Op.max_version)
MIN_OPSET, MAX_OPSET = 7, 25


def read_model(source) -> onnx.ModelProto:
    """An ONNX ModelProto from a path, bytes, or a ModelProto."""
    if isinstance(source, onnx.ModelProto):
        return source
    try:
        if isinstance(source, bytes | bytearray):
            return onnx.load_from_string(bytes(source))
        if not os.path.isfile(source):
            raise ModelLoadError(f"model file not found: {source}")
        return onnx.load(os.fspath(source))
    except ModelLoadError:
        raise
    except Exception as error:  # protobuf raises several unrelated types on bad bytes
        raise ModelLoadError(f"not a readable ONNX model: {source!s:.200}: {error}") from error


def _attribute(attr: onnx.AttributeProto):
    if attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
        raise UnsupportedModelError([f"attribute {attr.name!r} holds a subgraph"])
    if attr.type == onnx.AttributeProto.TENSOR:
        return numpy_helper.to_array(attr.t)
    value = helper.get_attribute_value(attr)
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, list) and value and isinstance(value[0], bytes):
        return [v.decode("utf-8") for v in value]
    if isinstance(value, list):
        return tuple(value)
    return value


def _dtype(elem_type: int) -> np.dtype:
    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type))
    except Exception:
        return np.dtype(np.float32)


def _value_info(info: onnx.ValueInfoProto) -> ValueInfo:
    tensor = info.type.tensor_type
    dims = tuple(d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim)
    return ValueInfo(info.name, dims, _dtype(tensor.elem_type))


def _constant_value(node: Node) -> np.ndarray:
    """The tensor of a Constant node, whichever attribute holds it."""
    attrs = node.attrs
    if "value" in attrs:
        return np.asarray(attrs["value"])
    if "value_float" in attrs:
        return np.asarray(attrs["value_float"], np.float32)
    if "value_floats" in attrs:
        return np.asarray(attrs["value_floats"], np.float32)
    if "value_int" in attrs:
        return np.asarray(attrs["value_int"], np.int64)
    if "value_ints" in attrs:
        return np.asarray(attrs["value_ints"], np.int64)
    raise UnsupportedModelError([f"Constant {node.name!r}: attributes {sorted(attrs)}"])


def _opset(model: onnx.ModelProto) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return entry.version
    return MAX_OPSET


def to_graph(model: onnx.ModelProto) -> Graph:
    """Translate nodes, initializers and Constant nodes; unsupported ops are collected later."""
    proto = model.graph
    constants = {init.name: numpy_helper.to_array(init) for init in proto.initializer}
    nodes, problems = [], []
    for index, node in enumerate(proto.node):
        name = node.name or f"{node.op_type}_{index}"
        if node.domain not in ("", "ai.onnx"):
            problems.append(f"{name}: operator {node.domain}.{node.op_type} (custom domain)")
            continue
        try:
            attrs = {a.name: _attribute(a) for a in node.attribute}
        except UnsupportedModelError as error:
            problems.extend(f"{name} ({node.op_type}): {p}" for p in error.problems)
            continue
        item = Node(node.op_type, name, list(node.input), list(node.output), attrs)
        if item.op == "Constant":
            constants[item.outputs[0]] = _constant_value(item)
        else:
            nodes.append(item)
    if problems:
        raise UnsupportedModelError(problems)
    inputs = [_value_info(i) for i in proto.input if i.name not in constants]
    outputs = [_value_info(o) for o in proto.output]
    opset = _opset(model)
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise UnsupportedModelError([f"opset {opset} (supported: {MIN_OPSET} to {MAX_OPSET})"])
    return Graph(proto.name or "model", nodes, constants, inputs, outputs, opset)


def load_graph(source) -> Graph:
    """Read and translate an ONNX model (path, bytes or ModelProto)."""
    return to_graph(read_model(source))
