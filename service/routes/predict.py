"""``POST /predict``: images, multipart uploads, ``.npy`` tensors or JSON base64 in; top-k out."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from service.results import rank_batch, result
from service.routes import runtime
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


@router.post(
    "/predict",
    response_model=PredictResponse,
    response_model_exclude_none=True,
    responses=ERRORS,
    openapi_extra=REQUEST_BODY,
)
async def predict(
    request: Request,
    rt: Annotated[Runtime, Depends(runtime)],
    top_k: Annotated[int | None, Query(ge=1, le=100_000)] = None,
    raw: bool = False,
    x_timeout_ms: Annotated[
        float | None, Header(ge=1, le=3_600_000, description="shorter deadline, in ms")
    ] = None,
) -> JSONResponse:
    """Classify each image of the body; one result per image, in order."""
    content_type = request.headers.get("content-type")

    def parse(body: bytes) -> Decoded:
        return Decoded(rt.decoder.decode(content_type, body))

    outputs, _ = await rt.run(request, parse, x_timeout_ms)
    spec, k = rt.description.spec, top_k or rt.settings.top_k
    answer = {
        "model": spec.name,
        "results": [result(r, spec, k, raw) for r in rank_batch(outputs, spec)],
    }
    # Built to the schema already: skip re-validating it through the response model.
    return JSONResponse(answer)
