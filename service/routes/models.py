"""The model repository: ``GET /models``, ``GET /models/{name}``, ``POST /v2/repository/index``.

Every model the service was started with is listed with its state (loading, ready, failed with
the reason, unloading); ``GET /model`` is ``GET /models/{default}``'s description, as before.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.encoders import jsonable_encoder

from service.errors import ControlForbidden, ModelNotFound
from service.protocol import LOAD, READY, UNLOAD, ModelStatus
from service.routes import runtime
from service.runtime import Runtime, Served

router = APIRouter(tags=["models"])
# Only with --model-control explicit (app.py adds it then).
control = APIRouter(prefix="/v2/repository/models", tags=["kserve-v2"])
CONTROL_TIMEOUT_S = 600.0  # a load may tune every layer of a model
CONTROL_ERRORS = {
    403: {"description": "not from loopback (see --control-allow-remote)"},
    404: {"description": "no such model in the repository"},
    503: {"description": "the model failed to load (the previous version still serves)"},
}
Rt = Annotated[Runtime, Depends(runtime)]
MODEL_VERSION = "1"
# The repository extension's state names (Triton's).
INDEX_STATES = {"loading": "LOADING", "ready": "READY", "failed": "UNAVAILABLE",
                "unloading": "UNLOADING"}  # fmt: skip


def describe(rt: Runtime, served: Served) -> dict:
    """A ready model: the engine's ``model.info()``, its preprocessing and the service settings."""
    spec, desc = served.description.spec, served.description
    info = dict(desc.info)
    info.update(
        name=spec.name,
        labels=list(spec.labels) if spec.labels else None,
        preprocess={
            "color_mode": spec.color_mode,
            "size": list(spec.size_hw),
            "resize": spec.resize,
            "resample": spec.resample,
            "invert": spec.invert,
            "mean": list(spec.mean),
            "std": list(spec.std),
        },
        output_kind=spec.output,
        service=rt.settings.public(),
        bucket_seconds=desc.bucket_seconds,
        processes=rt.processes(),
    )
    return jsonable_encoder(info)


def summary(rt: Runtime, status: ModelStatus) -> dict:
    """One model's line in ``GET /models``."""
    entry: dict = {"name": status.name, "state": status.state,
                   "default": status.name == rt.default_name}  # fmt: skip
    if status.reason:
        entry["reason"] = status.reason
    desc = status.description
    if desc is not None:
        entry["inputs"] = [{"name": desc.input_name, "shape": ["N", *desc.input_shape]}]
        entry["outputs"] = [{"name": desc.output_name, "shape": ["N", *desc.output_shape]}]
    return entry


def status_of(rt: Runtime, name: str) -> ModelStatus:
    """The model's state (404 for a name the engine does not serve; 503 before it said)."""
    status = rt.catalog.models.get(name)
    if status is None:
        if not rt.catalog.models:
            rt.lifecycle.check_ready()
        raise ModelNotFound(f"model {name!r} is not served here")
    return status


@router.get("/models", responses={503: {"description": "the engine has not reported yet"}})
async def list_models(rt: Rt) -> dict:
    """Every model with its state; ``default`` answers ``/predict`` and ``/model``."""
    if not rt.catalog.models:
        rt.lifecycle.check_ready()
    models = [summary(rt, status) for status in rt.catalog.models.values()]
    return {"default": rt.default_name, "models": models}


@router.get("/models/{name}", responses={404: {"description": "no such model"}})
async def model_detail(name: str, rt: Rt) -> dict:
    """A model's description and state (state and reason only while it is not ready)."""
    status = status_of(rt, name)
    if status.state == READY and name in rt.served:
        return {**describe(rt, rt.served[name]), "state": READY}
    return summary(rt, status)


@router.post("/v2/repository/index", tags=["kserve-v2"])
async def repository_index(rt: Rt) -> list[dict]:
    """The repository extension's index: every model, its version and state."""
    if not rt.catalog.models:
        rt.lifecycle.check_ready()
    index = []
    for status in rt.catalog.models.values():
        entry = {"name": status.name, "version": MODEL_VERSION,
                 "state": INDEX_STATES.get(status.state, "UNAVAILABLE")}  # fmt: skip
        if status.reason:
            entry["reason"] = status.reason
        index.append(entry)
    return index


def check_control_allowed(request: Request, rt: Runtime) -> None:
    """Loading and unloading are for the host itself unless ``--control-allow-remote``."""
    if rt.settings.control_allow_remote:
        return
    host = request.client.host if request.client else ""
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ControlForbidden(f"model control is only accepted from loopback, not {host!r}")


@control.post("/{name}/load", responses=CONTROL_ERRORS)
async def load_model(name: str, request: Request, rt: Rt) -> dict:
    """Load ``name`` from the repository, or reload it: the new version is loaded, warmed up
    and self-tested beside the old one, then takes over at once; the old one drains."""
    check_control_allowed(request, rt)
    await rt.client.control(LOAD, name, CONTROL_TIMEOUT_S)
    return {"name": name, "state": "READY"}


@control.post("/{name}/unload", responses=CONTROL_ERRORS)
async def unload_model(name: str, request: Request, rt: Rt) -> dict:
    """Stop serving ``name``: queued requests finish, new ones get 404, its memory is freed."""
    check_control_allowed(request, rt)
    await rt.client.control(UNLOAD, name, CONTROL_TIMEOUT_S)
    return {"name": name, "state": "UNAVAILABLE"}
