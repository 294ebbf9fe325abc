"""Open Inference Protocol (KServe v2) REST, as Triton's and KServe's clients speak it."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Request, Response

from service import SERVER_NAME, __version__
from service.errors import ModelNotFound, UnsupportedMediaType
from service.fastpath import FastRoute
from service.routes import runtime
from service.routes.predict import ERRORS
from service.runtime import Decoded, Runtime, Served
from service.v2codec import encode_response, parse_request

router = APIRouter(prefix="/v2", tags=["kserve-v2"])
Rt = Annotated[Runtime, Depends(runtime)]
MODEL_VERSION = "1"
NOT_SERVED = {
    404: {"description": "no such model or version here"},
    503: {"description": "model not loaded yet, or draining (Retry-After)"},
}
INFER_ERRORS = {**ERRORS, **NOT_SERVED}


def served(rt: Runtime, name: str, version: str = MODEL_VERSION) -> Served:
    """The model and version the path names: 404 if not served, 503 while not loaded."""
    if version != MODEL_VERSION:
        raise ModelNotFound(f"model {name!r} version {version!r} is not served here")
    return rt.model(name)


@router.get("")
async def server_metadata() -> dict:
    """Server name, version and protocol extensions."""
    return {"name": SERVER_NAME, "version": __version__, "extensions": ["binary_tensor_data"]}


@router.get("/health/live")
async def live() -> dict:
    """The server process is alive."""
    return {"live": True}


@router.get("/health/ready", responses={503: {"description": "not ready"}})
async def ready(rt: Rt) -> dict:
    """The model is loaded and warmed up, and the server is not draining."""
    rt.lifecycle.check_ready()
    return {"ready": True}


@router.get("/models/{name}", responses=NOT_SERVED)
@router.get("/models/{name}/versions/{version}", responses=NOT_SERVED)
async def model_metadata(name: str, rt: Rt, version: str = MODEL_VERSION) -> dict:
    """Inputs and outputs of the served model (batch dimension -1)."""
    model = served(rt, name, version).description
    return {
        "name": model.name,
        "versions": [MODEL_VERSION],
        "platform": "gemmserve",
        "inputs": [
            {"name": model.input_name, "datatype": "FP32", "shape": [-1, *model.input_shape]}
        ],
        "outputs": [
            {"name": model.output_name, "datatype": "FP32", "shape": [-1, *model.output_shape]}
        ],
    }


@router.get("/models/{name}/ready", responses=NOT_SERVED)
@router.get("/models/{name}/versions/{version}/ready", responses=NOT_SERVED)
async def model_ready(name: str, rt: Rt, version: str = MODEL_VERSION) -> dict:
    """200 when this model answers inference requests."""
    rt.lifecycle.check_ready()
    served(rt, name, version)
    return {"name": name, "ready": True}


@router.post("/models/{name}/infer", responses=INFER_ERRORS)
@router.post("/models/{name}/versions/{version}/infer", responses=INFER_ERRORS)
async def infer(
    request: Request,
    name: str,
    version: str = MODEL_VERSION,
    inference_header_content_length: Annotated[str | None, Header()] = None,
    content_encoding: Annotated[str | None, Header()] = None,
) -> Response:
    """Run the model on a JSON or binary tensor; answer in the form the client asked for."""
    # The parameters are declared for the schema; requests are served by ``service.fastpath``.
    return await infer_tensor(request)


async def infer_tensor(request: Request) -> Response:
    """The ``infer`` routes' work, from the request alone (``service.fastpath`` calls it)."""
    rt: Runtime = request.app.state.runtime
    params = request.path_params
    rt.lifecycle.check_ready()
    model_served = served(rt, params["name"], params.get("version", MODEL_VERSION))
    model = rt.admit_model(request, model_served.name).description
    content_encoding = request.headers.get("content-encoding")
    if content_encoding not in (None, "identity"):
        raise UnsupportedMediaType(f"Content-Encoding {content_encoding!r} is not accepted")
    header_length = request.headers.get("inference-header-content-length")

    def parse(body: bytes) -> Decoded:
        parsed = parse_request(body, header_length, model.input_name, model.output_name)
        return Decoded(model_served.decoder.tensor(parsed.tensor), parsed.timeout_ms, parsed)

    outputs, decoded = await rt.run(request, model_served, parse)
    content, json_length = encode_response(decoded.context, model.name, model.output_name, outputs)
    if json_length is None:
        return Response(content, media_type="application/json")
    headers = {"Inference-Header-Content-Length": str(json_length)}
    return Response(content, media_type="application/octet-stream", headers=headers)


FAST_ROUTES = [
    FastRoute(
        "/v2/models/{name}/infer", re.compile(r"/v2/models/(?P<name>[^/]+)/infer"), infer_tensor
    ),
    FastRoute(
        "/v2/models/{name}/versions/{version}/infer",
        re.compile(r"/v2/models/(?P<name>[^/]+)/versions/(?P<version>[^/]+)/infer"),
        infer_tensor,
    ),
]
