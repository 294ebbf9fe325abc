"""The engine process: the only process that loads models and touches the device.

It owns every model, the autotune cache, the device and each model's batcher; HTTP workers
connect to it over a Unix socket (``service.protocol``) and hand it images through shared memory
(``service.shm``). Requests for a model from every worker meet in that model's queue, so batches
form across workers. The process has two busy threads: the engine thread (``service.scheduler``:
it loads the models and runs every batch, sharing its time fairly between the models) and an
asyncio loop that reads the workers' messages and answers them; no HTTP, no decoding. A model
that fails to load fails alone; the process stops only when none loaded.
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
from dataclasses import dataclass
from multiprocessing.connection import Connection, Listener

from service import protocol
from service.admission import SLOWDOWN_SCALE
from service.config import Settings
from service.engine_models import ModelTable, ServedModel
from service.errors import to_service_error
from service.metrics import Metrics
from service.model_setup import ModelFactory
from service.processes import die_with_parent, ignore_interrupts
from service.scheduler import Scheduler
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
        self.arenas: dict[str, SlotArena] = {}  # by model name
        self.cancels: dict[int, asyncio.Future] = {}
        self.closed = False
        self.acked = 0  # the newest catalog the worker has seen

    def send(self, message: tuple) -> None:
        if self.closed:
            return
        try:
            self.conn.send_bytes(pickle.dumps(message, pickle.HIGHEST_PROTOCOL))
        except OSError:
            self.closed = True  # the reader sees the same and drops the link


class EngineHost:
    """Every model, the one engine thread (the scheduler) and every worker link of one engine
    process."""

    def __init__(self, args: EngineArgs):
        self.args = args
        self.settings = args.settings
        self.metrics = Metrics("engine")
        self.board = Board.attach(args.board_name, args.workers)
        self.scheduler = Scheduler()
        self.links: list[WorkerLink] = []
        self.table = ModelTable(self)
        self.loop: asyncio.AbstractEventLoop | None = None
        self._slowdown = 1.0

    def on_slowdown(self, ratio: float) -> None:
        """One batch's time over its warm-up time, folded into the average the workers read."""
        ratio = min(ratio, MAX_SLOWDOWN)  # one stalled batch must not shut admission for long
        self._slowdown += SLOWDOWN_WEIGHT * (ratio - self._slowdown)
        self.board.cells[Board.SLOWDOWN] = int(self._slowdown * SLOWDOWN_SCALE)

    @property
    def models(self) -> dict[str, ServedModel]:
        return self.table.models

    # ---- the process --------------------------------------------------------------------------

    async def serve(self) -> int:
        """Load the models, answer workers until SIGTERM; the process's exit code."""
        self.loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        self.loop.add_signal_handler(signal.SIGTERM, stop.set)
        with contextlib.suppress(FileNotFoundError):  # left by an engine that was killed
            os.unlink(self.args.socket_path)
        listener = Listener(self.args.socket_path, "AF_UNIX", authkey=self.args.authkey)
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        loaded = asyncio.ensure_future(self.table.load_all())
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait({loaded, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not loaded.done():  # stopped while loading: nothing to drain (the thread is a daemon)
            return 0
        stopping.cancel()
        if not loaded.result() and self.settings.model_control == "none":
            log.error("model failed to load: no model loaded; stopping")
            return LOAD_FAILED_EXIT
        ticker = asyncio.ensure_future(self._publish(stop))
        await stop.wait()
        ticker.cancel()
        await asyncio.to_thread(self._close, self.settings.graceful_shutdown_s)
        listener.close()
        return 0

    def _close(self, grace_s: float) -> None:
        """Every queue drains (bounded by ``grace_s`` in all), then the engine thread stops."""
        end = time.monotonic() + grace_s
        for served in [*self.models.values(), *self.table.retiring.values()]:
            served.batcher.close(max(0.0, end - time.monotonic()))
        self.scheduler.close(max(0.0, end - time.monotonic()))

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
        cells, gpu_due, last_depths = self.board.cells, 0.0, None
        while not stop.is_set():
            served = list(self.models.values())
            depths = {m.name: m.batcher.depth for m in served}
            if depths != last_depths:
                self.metrics.set_queue_depths(depths)
                last_depths = depths
            cells[Board.DEPTH] = sum(depths.values())
            cells[Board.RUNNING] = sum(m.batcher.running for m in served)
            on_gpu = [m.model for m in served if m.model is not None and m.model.device == "cuda"]
            if on_gpu and time.monotonic() > gpu_due:
                # One device context: any model's backend reports the whole device.
                self.metrics.set_gpu_memory(on_gpu[0].backend.memory())
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
            # A replaced arena stays mapped: requests that came before may still write to it.
            model, *arena = message[1:]
            link.arenas[model] = SlotArena.attach(*arena)
        elif kind == protocol.ACK:
            link.acked = max(link.acked, message[1])
        elif kind in (protocol.LOAD, protocol.UNLOAD):
            asyncio.ensure_future(self._control(link, *message))
        elif kind == protocol.HELLO:
            link.send((protocol.CATALOG, self.table.catalog()))

    async def _control(self, link: WorkerLink, kind: str, request_id: int, name: str) -> None:
        """A load or unload request; its answer once done (or its error)."""
        try:
            await (self.table.load(name) if kind == protocol.LOAD else self.table.unload(name))
        except Exception as exc:  # noqa: BLE001 - every request gets its one answer
            link.send(protocol.error_message(request_id, to_service_error(exc)))
            return
        link.send((protocol.DONE, request_id))

    async def _infer(
        self, link: WorkerLink, request_id: int, model: str, version: int, slots, deadline
    ) -> None:
        """One request: its images join its model's queue; outputs go back into its slots."""
        gone = self.loop.create_future()
        link.cancels[request_id] = gone
        try:
            served = self.table.find(model, version)
            desc = served.check_serving()
            arena = link.arenas[model]
            images = [arena.view(slot, desc.input_shape) for slot in slots]
            rows = await served.batcher.infer(images, deadline, give_up=gone)
        except Exception as exc:  # noqa: BLE001 - every request gets its one answer
            link.send(protocol.error_message(request_id, to_service_error(exc)))
            return
        finally:
            link.cancels.pop(request_id, None)
        if link.closed:
            return
        for slot, row in zip(slots, rows, strict=True):
            arena.view(slot, desc.output_shape)[...] = row
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
