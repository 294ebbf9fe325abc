"""``python -m service``: a small supervisor over one engine process and N HTTP workers.

The supervisor binds the listening socket (the workers share it), makes the board and a private
temporary directory (the engine's Unix socket, the metrics files, a fallback autotune cache), then
starts the engine and the workers and restarts whichever dies. On SIGTERM or Ctrl-C the workers
drain first (the engine still answers their requests), then the engine stops; every shared-memory
segment of the service is removed, and the supervisor ends the way uvicorn does after a graceful
stop (by the same signal). A model that fails to load stops the service with exit code 1.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import secrets
import signal
import socket
import time
from collections.abc import Iterator
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType

from service.config import Settings
from service.engine_client import EngineAddress
from service.engine_proc import LOAD_FAILED_EXIT, EngineArgs, engine_main
from service.metrics import Metrics, process_dead
from service.model_setup import ModelFactory
from service.runtime import WorkerLink
from service.shm import Board, remove_all, segment_prefix
from service.worker import WorkerArgs, worker_main

log = logging.getLogger("gemmserve")
POLL_S = 0.2
RESTART_PAUSE_S = 1.0  # a child that dies at once is not restarted in a tight loop
MIB = 1024 * 1024


def bind(host: str, port: int, backlog: int = 2048) -> socket.socket:
    """The listening socket every worker accepts from."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    sock.set_inheritable(True)
    return sock


class Supervisor:
    """Starts, watches and stops the engine process and the HTTP workers."""

    def __init__(self, settings: Settings, private_dir: Path, factory: ModelFactory | None = None):
        self.settings = settings
        self.dir = private_dir
        self.factory = factory
        self.ctx = multiprocessing.get_context("spawn")
        self.prefix = segment_prefix(os.getpid())
        self.engine: BaseProcess | None = None
        self.workers: list[BaseProcess | None] = [None] * settings.workers
        self.started_at: dict[int, float] = {}
        self.signals: list[int] = []
        self.exit_code = 0

    def run(self) -> int:
        """Serve until a signal (or a load failure); the exit code."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        self.metrics = Metrics("supervisor")
        self.sock = bind(self.settings.host, self.settings.port)
        host, port = self.sock.getsockname()[:2]
        try:
            self.open_engine()
            for index in range(self.settings.workers):
                self._start_worker(index)
            log.info("listening on http://%s:%d (%d HTTP workers)", host, port, len(self.workers))
            while not self.signals and not self.exit_code:
                self._watch()
        finally:
            self._stop_all()
        return self.exit_code

    def _on_signal(self, sig: int, frame: FrameType | None) -> None:
        self.signals.append(sig)
        if len(self.signals) > 1:  # a second signal: the workers stop without draining
            for proc in self.workers:
                if proc is not None and proc.is_alive():
                    os.kill(proc.pid, signal.SIGTERM)

    # ---- children -----------------------------------------------------------------------------

    def _engine_settings(self) -> Settings:
        """Without a cache file of its own, a restarted engine would tune everything again."""
        s = self.settings
        if s.autotune_cache is None and s.autotune_mode != "off":
            # Several models: a directory of per-model files; one model: one file, as before.
            name = "autotune" if s.cache_per_model else "autotune.json"
            return s.model_copy(update={"autotune_cache": self.dir / name})
        return s

    def _address(self, index: int) -> EngineAddress:
        s = self.settings
        return EngineAddress(
            socket_path=str(self.dir / "engine.sock"),
            authkey=self.authkey,
            arena_prefix=f"{self.prefix}w{index}-",
            arena_budget_bytes=s.shm_mib_per_worker * MIB,
            least_slots=min(s.max_images_per_request, s.max_queue),
            retry_after_s=s.retry_after_s,
        )

    @property
    def authkey(self) -> bytes:
        if not hasattr(self, "_authkey"):
            self._authkey = secrets.token_bytes(32)
        return self._authkey

    def open_engine(self) -> WorkerLink:
        """Make the board, start the engine process; how worker 0 reaches it."""
        # Segments under our prefix can only be a dead process's that had our pid: stale.
        remove_all(self.prefix)
        self.board = Board.create(self.prefix, self.settings.workers)
        self.board.cells[Board.SUPERVISOR] = os.getpid()
        self._start_engine()
        return WorkerLink(self._address(0), self.board.name, self.settings.workers)

    def close_engine(self) -> None:
        """Stop the engine process; remove the board and every segment left."""
        if self.engine is not None:
            _stop([self.engine], self.settings.graceful_shutdown_s + 5)
            self._forget(self.engine)
        self.board.close()
        left = remove_all(self.prefix)
        if left:
            log.info("removed shared memory left by exited processes: %s", ", ".join(left))

    def _start_engine(self) -> None:
        args = EngineArgs(
            settings=self._engine_settings(),
            model_factory=self.factory,
            socket_path=str(self.dir / "engine.sock"),
            authkey=self.authkey,
            board_name=self.board.name,
            workers=self.settings.workers,
        )
        self.engine = self._spawn(engine_main, (args,), "gemmserve-engine")
        self.board.cells[Board.ENGINE] = self.engine.pid

    def _start_worker(self, index: int) -> None:
        link = WorkerLink(self._address(index), self.board.name, self.settings.workers)
        args = WorkerArgs(self.settings, link, index)
        proc = self._spawn(worker_main, (args, self.sock), f"gemmserve-worker-{index}")
        self.workers[index] = proc
        self.board.cells[Board.WORKERS + index] = proc.pid

    def _spawn(self, target, args: tuple, name: str) -> BaseProcess:
        proc = self.ctx.Process(target=target, args=args, name=name)
        proc.start()
        self.started_at[proc.pid] = time.monotonic()
        return proc

    def _watch(self) -> None:
        """Wait a moment for a child to die; restart it (or stop, if the model cannot load)."""
        children = [p for p in (self.engine, *self.workers) if p is not None]
        for sentinel in wait([p.sentinel for p in children], timeout=POLL_S):
            proc = next(p for p in children if p.sentinel == sentinel)
            proc.join()
            self._forget(proc)
            if proc is self.engine:
                self._engine_died(proc)
            else:
                index = self.workers.index(proc)
                log.warning("worker %d (pid %d) exited with %s; restarting", index, proc.pid,
                            proc.exitcode)  # fmt: skip
                self._pause_after(proc)
                remove_all(f"{self.prefix}w{index}-")
                self._start_worker(index)

    def _engine_died(self, proc: BaseProcess) -> None:
        if proc.exitcode == LOAD_FAILED_EXIT:
            self.exit_code = 1
            return
        log.warning("engine (pid %d) exited with %s; restarting", proc.pid, proc.exitcode)
        self._pause_after(proc)
        self._start_engine()

    def _pause_after(self, proc: BaseProcess) -> None:
        lived_s = time.monotonic() - self.started_at.pop(proc.pid, 0.0)
        if lived_s < RESTART_PAUSE_S and not self.signals:
            time.sleep(RESTART_PAUSE_S - lived_s)

    def _forget(self, proc: BaseProcess) -> None:
        process_dead(proc.pid)

    # ---- stopping -----------------------------------------------------------------------------

    def _stop_all(self) -> None:
        """Workers drain and exit, then the engine; then the shared memory goes."""
        grace_s = self.settings.graceful_shutdown_s + 5
        # The workers keep their own copies: the socket stops listening when the last one exits,
        # not later (connections queued meanwhile would be reset rather than refused).
        self.sock.close()
        workers = [p for p in self.workers if p is not None]
        _stop(workers, grace_s)
        for proc in workers:
            self._forget(proc)
        if hasattr(self, "board"):
            self.close_engine()


@contextlib.contextmanager
def standalone_engine(settings: Settings, private_dir: Path) -> Iterator[WorkerLink]:
    """An engine process without HTTP workers, for a tool that runs a worker's app in its own
    process (``loadtests.loop_cost``); stopped and cleaned up on exit."""
    supervisor = Supervisor(settings, private_dir)
    try:
        yield supervisor.open_engine()
    finally:
        supervisor.close_engine()


def _stop(procs: list[BaseProcess], grace_s: float) -> None:
    """SIGTERM each, wait up to ``grace_s`` in all, then SIGKILL whoever is left."""
    for proc in procs:
        if proc.is_alive():
            proc.terminate()
    end = time.monotonic() + grace_s
    for proc in procs:
        proc.join(max(0.0, end - time.monotonic()))
        if proc.is_alive():
            log.warning("%s did not stop in time; killing it", proc.name)
            proc.kill()
            proc.join()
