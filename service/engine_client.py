"""A worker's link to the engine process (the other end of ``service.engine_proc``).

Connects (and reconnects after an engine restart), learns the models (the engine's catalog),
makes one slot arena per model, and hands requests over: images into free slots of the model's
arena, one ``infer`` message, then outputs read back from the same slots once the engine says
``done``. Runs on the worker's event loop only.
If the engine dies, every request waiting on it fails at once with ``EngineUnavailable`` (503).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import pickle
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Client, Connection

import numpy as np

from service import protocol
from service.errors import (
    ClientDisconnected,
    DeadlineExceeded,
    EngineUnavailable,
    QueueFullError,
)
from service.shm import SlotArena

log = logging.getLogger("gemmserve.worker")
CONNECT_RETRY_S = 0.05
# The engine answers 504 at the deadline itself; this only bounds a wait on an engine that hangs.
DEADLINE_GRACE_S = 1.0


@dataclass(frozen=True)
class EngineAddress:
    """Where a worker finds the engine, and the names its shared memory gets."""

    socket_path: str
    authkey: bytes
    arena_prefix: str  # the worker's arena is <prefix><pid>
    arena_budget_bytes: int
    least_slots: int  # at least one full request
    retry_after_s: int = 1


@dataclass(eq=False)
class _Pending:
    future: asyncio.Future
    arena: SlotArena | None  # None for a load or unload
    slots: list[int]
    abandoned: bool = False  # nobody reads the answer: the reader frees the slots


class EngineClient:
    """Requests to the engine; ``on_catalog`` / ``on_lost`` report its state."""

    def __init__(
        self,
        address: EngineAddress,
        on_catalog: Callable[[protocol.Catalog], None],
        on_lost: Callable[[str], None],
    ):
        self.address = address
        self.catalog = protocol.Catalog({}, settled=False)
        self.arenas: dict[str, SlotArena] = {}  # by model name
        self._arena_serial = itertools.count()
        self._announced: set[str] = set()  # models whose arena the connected engine knows
        self._on_catalog, self._on_lost = on_catalog, on_lost
        self._conn: Connection | None = None
        self._pending: dict[int, _Pending] = {}
        self._ids = itertools.count()
        self._task: asyncio.Task | None = None
        self._lost = asyncio.Event()
        self.adopted = asyncio.Event()  # set once the engine has settled its models' states

    # ---- connection -------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._stay_connected())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._disconnect("worker stopping")
        for arena in self.arenas.values():
            arena.close()
        self.arenas.clear()

    async def _stay_connected(self) -> None:
        while True:
            conn = await self._connect()
            self._conn, self._lost = conn, asyncio.Event()
            self._announced.clear()
            asyncio.get_running_loop().add_reader(conn.fileno(), self._readable)
            self._send((protocol.HELLO, os.getpid()))
            await self._lost.wait()

    async def _connect(self) -> Connection:
        a = self.address
        while True:
            try:
                return await asyncio.to_thread(Client, a.socket_path, "AF_UNIX", authkey=a.authkey)
            except (OSError, EOFError):
                await asyncio.sleep(CONNECT_RETRY_S)  # the engine is (re)starting

    def _disconnect(self, reason: str) -> None:
        """The engine is gone: fail everything waiting on it; every slot is free again."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        with contextlib.suppress(ValueError, OSError):
            asyncio.get_running_loop().remove_reader(conn.fileno())
        conn.close()
        error = EngineUnavailable(f"engine unavailable: {reason}", self.address.retry_after_s)
        for entry in self._pending.values():
            if not entry.future.done():
                entry.future.set_exception(error)
        self._pending.clear()
        for arena in self.arenas.values():
            arena.reset()
        self._on_lost(reason)
        self._lost.set()

    def _send(self, message: tuple) -> None:
        if self._conn is None:
            raise EngineUnavailable("engine unavailable: restarting", self.address.retry_after_s)
        try:
            self._conn.send_bytes(pickle.dumps(message, pickle.HIGHEST_PROTOCOL))
        except OSError as exc:
            self._disconnect(f"send failed ({exc})")
            raise EngineUnavailable("engine unavailable", self.address.retry_after_s) from None

    # ---- messages from the engine -------------------------------------------------------------

    def _readable(self) -> None:
        conn = self._conn
        try:
            while conn is not None and conn.poll():
                self._dispatch(pickle.loads(conn.recv_bytes()))
        except (EOFError, OSError):
            log.warning("lost the engine process; failing its requests, reconnecting")
            self._disconnect("engine process exited")

    def _dispatch(self, message: tuple) -> None:
        kind = message[0]
        if kind in (protocol.DONE, protocol.ERROR):
            self._answer(message)
        elif kind == protocol.CATALOG:
            self._adopt(message[1])

    def _answer(self, message: tuple) -> None:
        entry = self._pending.get(message[1])
        if entry is None:
            return
        if entry.abandoned:
            self._release(message[1])
        elif message[0] == protocol.DONE:
            entry.future.set_result(None)
        else:
            entry.future.set_exception(protocol.rebuild_error(*message[2:]))

    def _adopt(self, catalog: protocol.Catalog) -> None:
        """A new catalog: an arena for each ready model that has none of its size yet."""
        ready = [m.description for m in catalog.models.values() if m.state == protocol.READY]
        for description in ready:
            arena = self.arenas.get(description.name)
            if arena is None or arena.slot_floats != description.slot_floats:
                arena = self._make_arena(description, len(catalog.models))
            if description.name not in self._announced:  # a new arena, or a new engine
                self._send((protocol.ARENA, description.name, arena.name, arena.slot_floats,
                            arena.count))  # fmt: skip
                self._announced.add(description.name)
        self.catalog = catalog
        self._send((protocol.ACK, catalog.serial))  # after the arenas: the engine sees them first
        self._on_catalog(catalog)
        if catalog.settled:
            self.adopted.set()

    def _make_arena(self, description: protocol.ModelDescription, models: int) -> SlotArena:
        """A fresh arena (the old one, if any, is left to requests still holding its slots).
        Each model gets a share of the worker's budget, but always room for one request."""
        a = self.address
        serial = next(self._arena_serial)
        arena = SlotArena.create(
            f"{a.arena_prefix}{os.getpid()}-{serial}",
            description.slot_floats,
            a.arena_budget_bytes // max(1, models),
            a.least_slots,
        )
        self.arenas[description.name] = arena
        self._announced.discard(description.name)
        return arena

    def _release(self, request_id: int) -> None:
        entry = self._pending.pop(request_id, None)
        if entry is not None and entry.arena is not None:
            entry.arena.give_back(entry.slots)

    # ---- requests ---------------------------------------------------------------------------

    def _submit(
        self, desc: protocol.ModelDescription, batch: np.ndarray, deadline: float
    ) -> tuple[int, _Pending]:
        arena = self.arenas.get(desc.name)
        if self._conn is None or arena is None:
            raise EngineUnavailable("engine unavailable: restarting", self.address.retry_after_s)
        slots = arena.take(len(batch))
        if slots is None:
            raise QueueFullError(
                f"this worker has {arena.free} free image slots; the request has {len(batch)}",
                self.address.retry_after_s,
            )
        for slot, image in zip(slots, batch, strict=True):
            arena.view(slot, desc.input_shape)[...] = image
        request_id = next(self._ids)
        entry = self._pending[request_id] = _Pending(
            asyncio.get_running_loop().create_future(), arena, slots
        )
        try:
            self._send((protocol.INFER, request_id, desc.name, desc.version, slots, deadline))
        except EngineUnavailable:
            self._release(request_id)
            raise
        return request_id, entry

    async def control(self, kind: str, name: str, timeout_s: float) -> None:
        """Ask the engine to load (or reload) or unload model ``name``; returns once done, or
        raises the engine's error (``DeadlineExceeded`` after ``timeout_s``)."""
        if self._conn is None:
            raise EngineUnavailable("engine unavailable: restarting", self.address.retry_after_s)
        request_id = next(self._ids)
        entry = self._pending[request_id] = _Pending(
            asyncio.get_running_loop().create_future(), None, []
        )
        try:
            self._send((kind, request_id, name))
            await asyncio.wait_for(asyncio.shield(entry.future), timeout_s)
        except TimeoutError:
            message = f"{kind} of model {name!r} still running after {timeout_s} s"
            raise DeadlineExceeded(message) from None
        finally:
            self._release(request_id)
        entry.future.result()

    async def infer(
        self,
        desc: protocol.ModelDescription,
        batch: np.ndarray,
        deadline: float,
        give_up: asyncio.Future | None = None,
    ) -> np.ndarray:
        """The outputs of model ``desc`` for ``batch`` (N, ...), one row per image, in order."""
        request_id, entry = self._submit(desc, batch, deadline)
        waiting = {entry.future} if give_up is None else {entry.future, give_up}
        timeout_s = max(deadline - time.monotonic(), 0.0) + DEADLINE_GRACE_S
        await asyncio.wait(waiting, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        if not entry.future.done():
            entry.abandoned = True
            with contextlib.suppress(EngineUnavailable):
                self._send((protocol.CANCEL, request_id))
            if give_up is not None and give_up.done():
                raise ClientDisconnected("the caller went away while its request was queued")
            raise DeadlineExceeded(f"no answer within the deadline ({len(batch)} image(s))")
        try:
            entry.future.result()  # the engine's error, if it sent one
            shape = desc.output_shape
            return np.stack([entry.arena.view(slot, shape) for slot in entry.slots])
        finally:
            self._release(request_id)
