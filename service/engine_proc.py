"""The engine process: the only process that loads the model and touches the device.

It owns the model, the autotune cache, the device and the one batcher; HTTP workers connect to it
over a Unix socket (``service.protocol``) and hand it images through shared memory
(``service.shm``). Requests from every worker meet in the same queue, so batches form across
workers. The process has two busy threads: the engine thread (the batcher's, which runs the model)
and an asyncio loop that reads the workers' messages and answers them; no HTTP, no decoding.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection, Listener
from typing import Any

import numpy as np

from service import protocol
from service.admission import SLOWDOWN_SCALE
from service.batcher import Batcher, BatchStats
from service.config import Settings
from service.errors import ModelNotFound, NotReadyError, to_service_error
from service.metrics import Metrics
from service.model_setup import ModelFactory, setup_model
from service.processes import die_with_parent, ignore_interrupts
from service.shm import Board, SlotArena

log = logging.getLogger("gemmserve.engine")
LOAD_FAILED_EXIT = 3  # the supervisor stops the service (exit 1) instead of restarting
BOARD_PERIOD_S = 0.005
GPU_PERIOD_S = 1.0
MAX_SLOWDOWN = 4.0
SLOWDOWN_WEIGHT = 0.1  # of the newest batch in the slowdown's moving average


@dataclass(frozen=True)
class EngineArgs:
    """What the supervisor hands the engine process (pickled once, at spawn)."""

    settings: Settings
    model_factory: ModelFactory | None
    socket_path: str
    authkey: bytes
    board_name: str
    workers: int


class WorkerLink:
    """One worker's connection, as the engine sees it. Used from the engine's loop only."""

    def __init__(self, conn: Connection):
        self.conn = conn
        self.arena: SlotArena | None = None
        self.cancels: dict[int, asyncio.Future] = {}
        self.closed = False

    def send(self, message: tuple) -> None:
        if self.closed:
            return
        try:
            self.conn.send_bytes(pickle.dumps(message, pickle.HIGHEST_PROTOCOL))
        except OSError:
            self.closed = True  # the reader sees the same and drops the link


class EngineHost:
    """The batcher, the model and every worker link of one engine process."""

    def __init__(self, args: EngineArgs):
        self.args = args
        self.settings = args.settings
        self.metrics = Metrics("engine")
        self.board = Board.attach(args.board_name, args.workers)
        self.description: protocol.ModelDescription | None = None
        self.links: list[WorkerLink] = []
        self.loop: asyncio.AbstractEventLoop | None = None
        self.model: Any = None
        s = self.settings
        self.batcher = Batcher(
            self._setup,
            max_batch_size=s.max_batch_size,
            max_queue=s.max_queue,
            max_delay_ms=s.max_delay_ms,
            retry_after_s=s.retry_after_s,
            observer=self,
        )
        self._cost_s: Callable[[int], float] | None = None
        self._slowdown = 1.0

    def _setup(self) -> Callable[[np.ndarray], list[np.ndarray]]:
        """Runs on the engine thread: the model's whole set-up, then the batch function."""
        loaded = setup_model(self.settings, self.args.model_factory)
        if loaded.cost_s is not None:
            self.batcher.set_cost_model(loaded.cost_s)
            self._cost_s = loaded.cost_s
        self.metrics.set_autotune(dict(loaded.description.info.get("autotune") or {}))
        self.model, self.description = loaded.model, loaded.description
        self.board.cells[Board.SLOWDOWN] = int(self._slowdown * SLOWDOWN_SCALE)
        model = loaded.model
        # A copy: the engine reuses its output buffer for the next batch.
        return lambda x: list(np.array(model(x), np.float32, copy=True))

    # ---- the batcher's observer: metrics, and the slowdown the workers' admission reads ----

    def on_batch(self, stats: BatchStats) -> None:
        self.metrics.on_batch(stats)
        if self._cost_s is not None:
            # Clamped: one stalled batch must not shut admission for the next dozens.
            ratio = min(stats.inference_s / max(self._cost_s(stats.size), 1e-9), MAX_SLOWDOWN)
            self._slowdown += SLOWDOWN_WEIGHT * (ratio - self._slowdown)
            self.board.cells[Board.SLOWDOWN] = int(self._slowdown * SLOWDOWN_SCALE)

    def on_reject(self, reason: str, count: int) -> None:
        self.metrics.on_reject(reason, count)

    def on_split(self, reason: str) -> None:
        self.metrics.on_split(reason)

    # ---- the process --------------------------------------------------------------------------

    async def serve(self) -> int:
        """Load the model, answer workers until SIGTERM; the process's exit code."""
        self.loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        self.loop.add_signal_handler(signal.SIGTERM, stop.set)
        with contextlib.suppress(FileNotFoundError):  # left by an engine that was killed
            os.unlink(self.args.socket_path)
        listener = Listener(self.args.socket_path, "AF_UNIX", authkey=self.args.authkey)
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        loaded, stopping = self.batcher.start(), asyncio.ensure_future(stop.wait())
        await asyncio.wait({loaded, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not loaded.done():  # stopped while loading: nothing to drain (the thread is a daemon)
            return 0
        stopping.cancel()
        if loaded.exception() is not None:
            exc = loaded.exception()
            log.error("model failed to load: %s: %s", type(exc).__name__, exc)
            log.debug("model load traceback", exc_info=exc)
            for link in self.links:
                link.send((protocol.FAILED, f"model failed to load: {exc}"))
            return LOAD_FAILED_EXIT
        for link in self.links:
            link.send((protocol.MODEL, self.description))
        ticker = asyncio.ensure_future(self._publish(stop))
        await stop.wait()
        ticker.cancel()
        await asyncio.to_thread(self.batcher.close, self.settings.graceful_shutdown_s)
        listener.close()
        return 0

    def _accept(self, listener: Listener) -> None:
        """Accept thread: each new worker connection is handed to the loop."""
        while True:
            try:
                conn = listener.accept()
            except OSError:
                return  # the listener was closed: shutting down
            except Exception as exc:  # noqa: BLE001 - a bad handshake must not stop accepting
                log.warning("refused a connection: %s", exc)
                continue
            self.loop.call_soon_threadsafe(self._attach, conn)

    async def _publish(self, stop: asyncio.Event) -> None:
        """Keep the board's queue figures fresh (workers admit by them) and the GPU gauges."""
        cells, gpu_due = self.board.cells, 0.0
        while not stop.is_set():
            cells[Board.DEPTH] = self.batcher.depth
            cells[Board.RUNNING] = self.batcher.running
            if (
                self.model is not None
                and self.model.device == "cuda"
                and time.monotonic() > gpu_due
            ):
                self.metrics.set_gpu_memory(self.model.backend.memory())
                gpu_due = time.monotonic() + GPU_PERIOD_S
            await asyncio.sleep(BOARD_PERIOD_S)

    # ---- messages -----------------------------------------------------------------------------

    def _attach(self, conn: Connection) -> None:
        link = WorkerLink(conn)
        self.links.append(link)
        self.loop.add_reader(conn.fileno(), self._readable, link)

    def _readable(self, link: WorkerLink) -> None:
        try:
            while link.conn.poll():
                self._dispatch(link, pickle.loads(link.conn.recv_bytes()))
        except (EOFError, OSError):
            self._drop(link)

    def _drop(self, link: WorkerLink) -> None:
        """The worker is gone: its queued images are dropped unrun, its slots never written."""
        with contextlib.suppress(ValueError, OSError):
            self.loop.remove_reader(link.conn.fileno())
        link.closed = True
        for gone in link.cancels.values():
            if not gone.done():
                gone.set_result(None)
        with contextlib.suppress(ValueError):
            self.links.remove(link)
        link.conn.close()

    def _dispatch(self, link: WorkerLink, message: tuple) -> None:
        kind = message[0]
        if kind == protocol.INFER:
            asyncio.ensure_future(self._infer(link, *message[1:]))
        elif kind == protocol.CANCEL:
            gone = link.cancels.get(message[1])
            if gone is not None and not gone.done():
                gone.set_result(None)
        elif kind == protocol.ARENA:
            link.arena = SlotArena.attach(*message[1:])
        elif kind == protocol.HELLO and self.description is not None:
            link.send((protocol.MODEL, self.description))

    async def _infer(self, link: WorkerLink, request_id: int, model: str, slots, deadline) -> None:
        """One request: its images join the queue; outputs go back into its slots."""
        gone = self.loop.create_future()
        link.cancels[request_id] = gone
        desc = self.description
        try:
            if desc is None:
                raise NotReadyError("model loading", self.settings.retry_after_s)
            if model != desc.name:
                raise ModelNotFound(f"model {model!r} is not served here")
            images = [link.arena.view(slot, desc.input_shape) for slot in slots]
            rows = await self.batcher.infer(images, deadline, give_up=gone)
        except Exception as exc:  # noqa: BLE001 - every request gets its one answer
            link.send(protocol.error_message(request_id, to_service_error(exc)))
            return
        finally:
            link.cancels.pop(request_id, None)
        if link.closed:
            return
        for slot, row in zip(slots, rows, strict=True):
            link.arena.view(slot, desc.output_shape)[...] = row
        link.send((protocol.DONE, request_id))


def engine_main(args: EngineArgs) -> None:
    """The engine process's entry point (``multiprocessing`` spawn target)."""
    die_with_parent()
    ignore_interrupts()  # Ctrl-C reaches the whole group; the supervisor decides the order
    logging.basicConfig(
        level=args.settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s[engine]: %(message)s",
    )
    code = asyncio.run(EngineHost(args).serve())
    raise SystemExit(code)
