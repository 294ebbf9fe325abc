"""What one HTTP worker holds: settings, lifecycle, metrics, the decoders and its engine link.

The models live in the engine process (``service.engine_proc``); a worker learns their states
(the catalog) when it connects and is ready once the start-up loads are over and a model is
ready, until the engine goes away (``/readyz`` 503 while it restarts) or the worker drains.
``Runtime.run`` is the one request flow every inference route shares: admit, check capacity,
read the body, decode, infer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from starlette.requests import Request

from service.admission import SLOWDOWN_SCALE, Admission
from service.config import Settings
from service.decode import Decoder, Limits
from service.engine_client import EngineAddress, EngineClient
from service.errors import ModelNotFound, ModelUnavailable, NotReadyError, QueueFullError
from service.lifecycle import Lifecycle
from service.metrics import Metrics
from service.middleware import MODEL_KEY
from service.multipart import MultipartLimits
from service.protocol import FAILED, READY, Catalog, ModelDescription
from service.shm import Board

log = logging.getLogger("gemmserve")
# Bodies up to this size decode on the event loop: a hop to the decode pool costs more CPU than
# parsing them (a .npy image of a small model, a small PNG). Larger ones go to the pool.
INLINE_DECODE_BYTES = 16 * 1024
# At most this long before accepting connections: enough to connect to a running engine, short
# enough that a worker starting with the service answers /healthz while the model loads.
READY_WAIT_S = 1.0


def limits_of(settings: Settings) -> Limits:
    return Limits(
        max_image_pixels=settings.max_image_pixels,
        allowed_formats=settings.allowed_formats,
        # A request larger than the queue could never be admitted: refuse it as too large instead.
        max_images=min(settings.max_images_per_request, settings.max_queue),
        max_item_bytes=settings.max_body_bytes,
        multipart=MultipartLimits(
            max_files=settings.multipart_max_files,
            max_fields=settings.multipart_max_fields,
            max_headers=settings.multipart_max_headers,
        ),
    )


async def _wait_disconnect(request: Request) -> None:
    # After the body is read, the server's receive() only returns once the client goes away.
    while (await request.receive())["type"] != "http.disconnect":
        pass


@dataclass(frozen=True)
class WorkerLink:
    """How a worker reaches the rest of the service (from the supervisor)."""

    address: EngineAddress
    board_name: str
    workers: int


@dataclass(frozen=True)
class Decoded:
    """A request body turned into model input: the batch, the request's own deadline (ms, or
    None) and whatever the route needs to shape its answer."""

    batch: np.ndarray
    timeout_ms: float | None = None
    context: Any = None


@dataclass(frozen=True)
class Served:
    """A ready model as a worker sees it: its description and its decoder."""

    description: ModelDescription
    decoder: Decoder

    @property
    def name(self) -> str:
        return self.description.name


class Runtime:
    """The worker's state, shared by the routes through ``app.state.runtime``."""

    def __init__(self, settings: Settings, link: WorkerLink):
        self.settings = settings
        self.link = link
        self.lifecycle = Lifecycle(settings.retry_after_s, reason="engine starting")
        self.metrics = Metrics("worker")
        self.default_name = settings.default_model_name
        self.catalog = Catalog({}, settled=False)
        self.served: dict[str, Served] = {}  # the ready models
        self.admission = Admission(settings, self.metrics.on_reject)
        self.executor: ThreadPoolExecutor | None = None
        self.board: Board | None = None
        self.client = EngineClient(link.address, self._on_catalog, self._on_lost)

    # ---- start and stop --------------------------------------------------------------------

    async def start(self) -> None:
        """Connect to the engine in the background; readiness follows its model. A worker that
        replaces a dead one finds the engine ready: it waits for the model (briefly) so that it
        does not accept connections only to answer them 503."""
        self.executor = ThreadPoolExecutor(
            self.settings.decode_threads, thread_name_prefix="gemmserve-decode"
        )
        self.board = Board.attach(self.link.board_name, self.link.workers)
        self.client.start()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.client.adopted.wait(), READY_WAIT_S)

    async def stop(self) -> None:
        """Drain: refuse new work, let admitted work finish (bounded), then let go of the engine."""
        self.lifecycle.start_draining()
        await self.lifecycle.wait_idle(self.settings.graceful_shutdown_s)
        await self.client.close()
        if self.executor is not None:
            self.executor.shutdown(wait=False, cancel_futures=True)
        if self.board is not None:
            self.board.close()

    @property
    def description(self) -> ModelDescription | None:
        """The default model's description (None until it is ready)."""
        served = self.served.get(self.default_name)
        return served.description if served is not None else None

    def _on_catalog(self, catalog: Catalog) -> None:
        """The engine's models changed state: decoders for the ready ones; readiness once the
        start-up loads are over (ready if any model is; failed, and the service stops, if none)."""
        served = {}
        for name, status in catalog.models.items():
            if status.state != READY:
                continue
            known = self.served.get(name)
            if known is not None and known.description == status.description:
                served[name] = known
            else:
                desc = status.description
                decoder = Decoder(desc.spec, desc.input_shape, limits_of(self.settings))
                served[name] = Served(desc, decoder)
        self.catalog, self.served = catalog, served
        costs = served.get(self.default_name) or next(iter(served.values()), None)
        if costs is not None:  # admission estimates waits by the default model's batch costs
            desc = costs.description
            self.admission.set_costs(desc.bucket_seconds, desc.max_batch_size)
        if not catalog.settled:
            return
        if served or self.settings.model_control == "explicit":  # models may be loaded later
            self.lifecycle.set_ready()
        else:
            reasons = "; ".join(f"{n}: {m.reason}" for n, m in catalog.models.items())
            self.lifecycle.set_failed(f"no model loaded ({reasons})")

    def _on_lost(self, reason: str) -> None:
        self.lifecycle.set_unready(f"engine restarting ({reason})")

    def model(self, name: str | None = None) -> Served:
        """The ready model ``name`` (default: the default model); 404 for a name the engine
        does not know, 503 for one loading, unloading or failed (with the reason)."""
        name = self.default_name if name is None else name
        served = self.served.get(name)
        if served is not None:
            return served
        status = self.catalog.models.get(name)
        if status is None and (self.catalog.settled or self.catalog.models):
            raise ModelNotFound(f"model {name!r} is not served here")
        if status is not None and status.state == FAILED:
            raise ModelUnavailable(f"model {name!r} failed to load: {status.reason}")
        state = status.state if status is not None else self.lifecycle.reason
        raise NotReadyError(f"model {name!r} is not ready: {state}", self.settings.retry_after_s)

    # ---- what other processes publish ------------------------------------------------------

    def live_metrics(self) -> dict[str, float]:
        """The moment's queue depth, running images (from the engine) and this worker's state."""
        cells = self.board.cells if self.board is not None else None
        return {
            "queue_depth": float(cells[Board.DEPTH]) if cells is not None else 0.0,
            "running": float(cells[Board.RUNNING]) if cells is not None else 0.0,
            "ready": float(self.lifecycle.ready),
            "slowdown": float(cells[Board.SLOWDOWN]) / SLOWDOWN_SCALE if cells is not None else 0.0,
        }

    def processes(self) -> dict:
        return self.board.processes() if self.board is not None else {}

    # ---- per request ---------------------------------------------------------------------------

    def check_capacity(self, model: str) -> None:
        """Refuse at once, before reading the body, when the queue is already full."""
        depth = int(self.board.cells[Board.DEPTH]) if self.board is not None else 0
        if depth >= self.settings.max_queue:
            self.metrics.on_reject("queue_full", 1, model)
            raise QueueFullError(
                f"queue full ({depth} images waiting)", self.settings.retry_after_s
            )

    async def decode(self, parse: Callable[[bytes], Decoded], body: bytes) -> Decoded:
        """``parse(body)`` on the loop for a small body, in the decode pool otherwise."""
        if len(body) <= INLINE_DECODE_BYTES:
            return parse(body)
        return await asyncio.get_running_loop().run_in_executor(self.executor, parse, body)

    def deadline(self, timeout_ms: float | None) -> float:
        """A monotonic deadline: the configured timeout, shortened (never lengthened) by clients."""
        budget_ms = self.settings.timeout_ms
        if timeout_ms is not None and 0 < timeout_ms < budget_ms:
            budget_ms = timeout_ms
        return time.monotonic() + budget_ms / 1000.0

    def admit_model(self, request: Request, name: str | None) -> Served:
        """The route's model, checked before anything else (503 while not ready, 404 unknown);
        the request's metrics are labelled with it from then on."""
        self.lifecycle.check_ready()
        served = self.model(name)
        request.scope[MODEL_KEY] = served.name
        return served

    async def run(
        self,
        request: Request,
        served: Served,
        parse: Callable[[bytes], Decoded],
        timeout_ms: float | None = None,
    ) -> tuple[np.ndarray, Decoded]:
        """The request flow of every inference route: admit, capacity, read, decode, infer.
        Returns the model's outputs (one row per image) and the decoded request."""
        with self.lifecycle.admit(), self.metrics.inflight.track_inprogress():
            self.check_capacity(served.name)
            body = await request.body()
            decoded = await self.decode(parse, body)
            deadline = self.deadline(decoded.timeout_ms or timeout_ms)
            self.admission.check(len(decoded.batch), self.board)
            outputs = await self.infer(request, served, decoded.batch, deadline)
        return outputs, decoded

    async def infer(
        self, request: Request, served: Served, batch: np.ndarray, deadline: float
    ) -> np.ndarray:
        """Hand ``batch`` to the engine; one output row per image. If the client disconnects
        first, its images are dropped unrun."""
        gone = asyncio.ensure_future(_wait_disconnect(request))
        try:
            return await self.client.infer(served.description, batch, deadline, give_up=gone)
        finally:
            gone.cancel()
