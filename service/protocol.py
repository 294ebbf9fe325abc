"""The messages between HTTP workers and the engine process.

Control messages are small tuples, pickled, over ``multiprocessing.connection`` (a Unix socket
with an authentication key). Pixel data never travels in them: images and outputs sit in the
worker's slot arena (``service.shm``), and a message names the slots.

Worker -> engine:
    ("hello", pid)                                once per connection
    ("arena", model, name, slot_floats, count)   after the worker made its arena for a model
    ("infer", request_id, model, version, slots, deadline)  one image per slot; deadline:
                                                 time.monotonic(); version: the description's
    ("cancel", request_id)                       the client went away
    ("ack", serial)                              the worker has seen catalog ``serial``
    ("load" | "unload", request_id, model)       --model-control explicit; answered done/error
Engine -> worker:
    ("catalog", Catalog)                         at hello, and whenever a model changes state
    ("done", request_id)                         outputs are in the request's slots
    ("error", request_id, error_type, message, retry_after_s)

Every ``infer`` gets exactly one ``done`` or ``error``; until then its slots stay the engine's.
A worker has one slot arena per model (models differ in input and output sizes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from service import errors
from service.modelspec import ModelSpec

HELLO, ARENA, INFER, CANCEL, ACK = "hello", "arena", "infer", "cancel", "ack"
LOAD, UNLOAD = "load", "unload"
CATALOG, DONE, ERROR = "catalog", "done", "error"
LOADING, READY, FAILED, UNLOADING = "loading", "ready", "failed", "unloading"


@dataclass(frozen=True)
class ModelDescription:
    """What a worker needs to know about a model the engine serves."""

    spec: ModelSpec
    input_name: str
    input_shape: tuple[int, ...]
    output_name: str
    output_shape: tuple[int, ...]
    device: str
    info: dict = field(default_factory=dict)  # model.info() after warm-up
    bucket_seconds: dict[int, float] = field(default_factory=dict)
    max_batch_size: int = 1
    version: int = 1  # a reload's new version has the next number

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def slot_floats(self) -> int:
        """Floats one arena slot needs: the larger of one image's input and its output."""
        return max(math.prod(self.input_shape), math.prod(self.output_shape))


@dataclass(frozen=True)
class ModelStatus:
    """One model's state in the engine: loading, ready, failed (``reason`` says why) or
    unloading; ``description`` once it has been ready."""

    name: str
    state: str
    reason: str = ""
    description: ModelDescription | None = None


@dataclass(frozen=True)
class Catalog:
    """Every model the engine knows, by name. ``settled``: the start-up loads are over (each
    model ready or failed), so readiness can be decided."""

    models: dict[str, ModelStatus]
    settled: bool
    serial: int = 0  # workers acknowledge each catalog by its serial


def error_message(request_id: int, exc: errors.ServiceError) -> tuple:
    """The ``error`` message for a typed service error."""
    return (ERROR, request_id, type(exc).__name__, exc.message, exc.retry_after_s)


def rebuild_error(type_name: str, message: str, retry_after_s: int | None) -> errors.ServiceError:
    """The worker-side error for an ``error`` message (an unknown type is an internal failure)."""
    kind = getattr(errors, type_name, None)
    if not (isinstance(kind, type) and issubclass(kind, errors.ServiceError)):
        kind = errors.InferenceFailed
    return kind(message, retry_after_s)
