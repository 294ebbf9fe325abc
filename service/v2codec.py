"""Open Inference Protocol (KServe v2) tensors: JSON and the binary-tensor extension.

A request body is a JSON header, optionally followed by raw tensor bytes;
``Inference-Header-Content-Length`` says where the JSON ends, and each input with
``parameters.binary_data_size`` takes its bytes from the tail in order. Answers use the same
layout when the client asks for binary outputs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from service.decode import parse_json
from service.errors import MalformedRequest, UnprocessableInput

DATATYPES = {"FP16": np.float16, "FP32": np.float32, "FP64": np.float64}


@dataclass(frozen=True)
class InferRequest:
    """The parts of a v2 inference request the service uses."""

    id: str | None
    tensor: np.ndarray
    output_names: tuple[str, ...] | None
    binary_outputs: dict[str, bool]
    binary_default: bool
    timeout_ms: float | None


def _split(body: bytes, header_length: str | None) -> tuple[dict, memoryview]:
    if header_length is None:
        json_bytes, tail = body, memoryview(b"")
    else:
        if not header_length.strip().isdigit() or not 0 < int(header_length) <= len(body):
            raise MalformedRequest(
                f"Inference-Header-Content-Length {header_length!r} does not fit "
                f"a {len(body)}-byte body"
            )
        json_bytes, tail = body[: int(header_length)], memoryview(body)[int(header_length) :]
    header = parse_json(json_bytes, "invalid JSON inference header")
    if not isinstance(header, dict):
        raise MalformedRequest("inference request must be a JSON object")
    return header, tail


def _shape(spec: dict) -> tuple[int, ...]:
    shape = spec.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise MalformedRequest(f"input shape must be a list of integers >= 0, got {shape!r}")
    return tuple(shape)


def _input_array(spec: dict, tail: memoryview, offset: int) -> tuple[np.ndarray, int]:
    """One input tensor (as float32) and the offset just past its binary bytes."""
    datatype = spec.get("datatype")
    if datatype not in DATATYPES:
        allowed = ", ".join(DATATYPES)
        raise UnprocessableInput(f"input datatype {datatype!r} not supported ({allowed})")
    dtype, shape = np.dtype(DATATYPES[datatype]).newbyteorder("<"), _shape(spec)
    count = int(np.prod(shape, dtype=np.int64))
    size = (spec.get("parameters") or {}).get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or size != count * dtype.itemsize or offset + size > len(tail):
            raise MalformedRequest(
                f"binary_data_size {size!r} does not match shape {list(shape)} {datatype} "
                f"or the {len(tail) - offset} bytes left"
            )
        data = np.frombuffer(tail[offset : offset + size], dtype=dtype)
        return data.reshape(shape).astype(np.float32), offset + size
    try:
        data = np.asarray(spec.get("data"), dtype=np.float64)
    except (TypeError, ValueError, RecursionError):
        raise MalformedRequest("input data must be numbers (flat or nested lists)") from None
    if data.size != count:
        raise MalformedRequest(f"input data has {data.size} values; {list(shape)} needs {count}")
    return data.reshape(shape).astype(np.float32), offset


def parse_request(
    body: bytes, header_length: str | None, input_name: str, output_name: str
) -> InferRequest:
    """Parse a v2 inference request for a model with one input and one output."""
    header, tail = _split(body, header_length)
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise MalformedRequest(f"expected exactly one input tensor, {input_name!r}")
    if inputs[0].get("name") != input_name:
        name = inputs[0].get("name")
        raise MalformedRequest(f"unknown input {name!r}; the model takes {input_name!r}")
    tensor, used = _input_array(inputs[0], tail, 0)
    if used != len(tail):
        raise MalformedRequest(f"{len(tail) - used} unused bytes after the binary tensors")
    outputs = header.get("outputs")
    if outputs is not None and not (
        isinstance(outputs, list) and all(isinstance(o, dict) and "name" in o for o in outputs)
    ):
        raise MalformedRequest("outputs must be a list of {name, parameters?}")
    unknown = [o["name"] for o in outputs or () if o["name"] != output_name]
    if unknown:
        raise MalformedRequest(f"unknown output(s) {unknown}; the model has {output_name!r}")
    params = header.get("parameters")
    params = params if isinstance(params, dict) else {}
    out_params = {o["name"]: o.get("parameters") or {} for o in outputs or ()}
    if any(p.get("classification") for p in out_params.values()):
        raise UnprocessableInput("the classification extension is not supported")
    timeout_us = params.get("timeout")
    if not (isinstance(timeout_us, int | float) and timeout_us > 0):
        timeout_us = None
    return InferRequest(
        id=header.get("id") if isinstance(header.get("id"), str) else None,
        tensor=tensor,
        output_names=tuple(o["name"] for o in outputs) if outputs else None,
        binary_outputs={name: bool(p.get("binary_data")) for name, p in out_params.items()},
        binary_default=bool(params.get("binary_data_output")),
        timeout_ms=timeout_us / 1000.0 if timeout_us else None,
    )


def encode_response(
    request: InferRequest, model_name: str, output_name: str, output: np.ndarray
) -> tuple[bytes, int | None]:
    """The answer body and, when it carries binary tensors, the JSON header's length."""
    output = np.ascontiguousarray(output, dtype="<f4")
    entry: dict = {"name": output_name, "datatype": "FP32", "shape": list(output.shape)}
    binary = request.binary_outputs.get(output_name, request.binary_default)
    if binary:
        entry["parameters"] = {"binary_data_size": output.nbytes}
    else:
        entry["data"] = output.reshape(-1).tolist()
    answer: dict = {"model_name": model_name, "model_version": "1", "outputs": [entry]}
    if request.id is not None:
        answer["id"] = request.id
    header = json.dumps(answer, separators=(",", ":")).encode()
    if not binary:
        return header, None
    return header + output.tobytes(), len(header)
