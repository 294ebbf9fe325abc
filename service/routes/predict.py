"""``POST /predict``: images, multipart uploads, ``.npy`` tensors or JSON base64 in; top-k out."""

from __future__ import annotations

import re

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from service.errors import InvalidParameter
from service.fastpath import FastRoute
from service.results import rank_batch, result
from service.runtime import Decoded, Runtime

router = APIRouter(tags=["predict"])

BINARY = {"schema": {"type": "string", "format": "binary"}}
REQUEST_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "image/png": BINARY,
            "image/jpeg": BINARY,
            "image/webp": BINARY,
            "image/gif": BINARY,
            "image/bmp": BINARY,
            "application/x-npy": BINARY,
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"file": {"type": "array", "items": BINARY["schema"]}},
                    "required": ["file"],
                }
            },
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "instances": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {"b64": {"type": "string"}},
                                "required": ["b64"],
                            },
                        }
                    },
                    "required": ["instances"],
                }
            },
        },
    }
}
ERRORS = {
    code: {"description": text}
    for code, text in {
        400: "malformed body or image",
        413: "body, image or part too large",
        415: "content type or image format not accepted",
        422: "wrong shape, NaN/Inf, missing file part",
        429: "queue full (Retry-After)",
        503: "loading or draining (Retry-After)",
        504: "deadline passed",
    }.items()
}


class Prediction(BaseModel):
    index: int
    label: str
    score: float


class Result(BaseModel):
    predictions: list[Prediction]
    output: list[float] | None = None


class PredictResponse(BaseModel):
    model: str
    results: list[Result]


# Declared here for the schema; read by ``predict_params`` (FastAPI's per-parameter validation
# cost more CPU per request than the rest of the route).
PARAMETERS = [
    {"name": "top_k", "in": "query", "required": False,
     "schema": {"type": "integer", "minimum": 1, "maximum": 100_000},
     "description": "predictions per image (default: the service's --top-k)"},
    {"name": "raw", "in": "query", "required": False,
     "schema": {"type": "boolean", "default": False},
     "description": "add the model's output vector to each result"},
    {"name": "x-timeout-ms", "in": "header", "required": False,
     "schema": {"type": "number", "minimum": 1, "maximum": 3_600_000},
     "description": "shorter deadline, in ms"},
]  # fmt: skip
TRUE, FALSE = {"1", "true", "on", "yes", "y", "t"}, {"0", "false", "off", "no", "n", "f"}


def _number(text: str, name: str, low: float, high: float, kind=float) -> float:
    try:
        value = kind(text)
    except ValueError:
        raise InvalidParameter(f"{name}: {text[:40]!r} is not a valid {kind.__name__}") from None
    if not low <= value <= high:
        raise InvalidParameter(f"{name}: {value} is outside {low}..{high}")
    return value


def predict_params(request: Request, default_top_k: int) -> tuple[int, bool, float | None]:
    """``top_k``, ``raw`` and ``X-Timeout-Ms`` of a ``/predict`` request (422 when invalid)."""
    query, top_k, raw = request.query_params, default_top_k, False
    if "top_k" in query:
        top_k = int(_number(query["top_k"], "query.top_k", 1, 100_000, int))
    if "raw" in query:
        flag = query["raw"].lower()
        if flag not in TRUE | FALSE:
            raise InvalidParameter(f"query.raw: {query['raw'][:40]!r} is not a boolean")
        raw = flag in TRUE
    timeout = request.headers.get("x-timeout-ms")
    timeout_ms = None if timeout is None else _number(timeout, "header.x-timeout-ms", 1, 3_600_000)
    return top_k, raw, timeout_ms


ROUTE = {
    "response_model": PredictResponse,
    "response_model_exclude_none": True,
    "openapi_extra": {**REQUEST_BODY, "parameters": PARAMETERS},
}
MODEL_ERRORS = {**ERRORS, 404: {"description": "no such model"}}


@router.post("/predict", responses=ERRORS, **ROUTE)
async def predict(request: Request) -> JSONResponse:
    """Classify each image of the body with the default model; one result per image, in order."""
    rt: Runtime = request.app.state.runtime
    top_k, raw, timeout_ms = predict_params(request, rt.settings.top_k)
    served = rt.admit_model(request, request.path_params.get("name"))
    content_type = request.headers.get("content-type")

    def parse(body: bytes) -> Decoded:
        return Decoded(served.decoder.decode(content_type, body))

    outputs, _ = await rt.run(request, served, parse, timeout_ms)
    spec = served.description.spec
    answer = {
        "model": spec.name,
        "results": [result(r, spec, top_k, raw) for r in rank_batch(outputs, spec)],
    }
    # Built to the schema already: skip re-validating it through the response model.
    return JSONResponse(answer)


@router.post("/models/{name}/predict", responses=MODEL_ERRORS, **ROUTE)
async def predict_model(request: Request, name: str) -> JSONResponse:
    """As ``/predict``, with the model ``name`` of the repository."""
    # Declared for the schema; requests are served by ``service.fastpath`` (``predict``).
    return await predict(request)


FAST_ROUTES = [
    FastRoute("/predict", re.compile(r"/predict"), predict),
    FastRoute("/models/{name}/predict", re.compile(r"/models/(?P<name>[^/]+)/predict"), predict),
]
