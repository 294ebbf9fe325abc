"""uvicorn with a drain phase: on SIGTERM the service turns unready and refuses new work with 503,
finishes what it admitted, then lets uvicorn shut down."""

from __future__ import annotations

import asyncio
import logging
import signal
from types import FrameType

import uvicorn

from service.lifecycle import Lifecycle

log = logging.getLogger("gemmserve")


class DrainingServer(uvicorn.Server):
    """A ``uvicorn.Server`` whose first SIGTERM/SIGINT drains before the usual shutdown."""

    def __init__(
        self,
        config: uvicorn.Config,
        lifecycle: Lifecycle,
        drain_s: float,
        ignore_interrupts: bool = False,
    ):
        """``ignore_interrupts``: a supervised worker leaves Ctrl-C to its supervisor, which
        sends SIGTERM to each worker in turn."""
        super().__init__(config)
        self.ignore_interrupts = ignore_interrupts
        self.lifecycle = lifecycle
        self.drain_s = drain_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._draining = False
        lifecycle.request_exit = self._exit_now

    async def serve(self, sockets=None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def _exit_now(self) -> None:
        self.should_exit = True

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig == signal.SIGINT and self.ignore_interrupts:
            return
        if self._draining or self._loop is None or not self.started:
            super().handle_exit(sig, frame)  # a second signal, or still starting: stop now
            return
        self._draining = True
        self.lifecycle.start_draining()
        log.info("signal %d: draining (up to %.0f s)", sig, self.drain_s)
        self._loop.call_soon_threadsafe(self._schedule_exit, sig, frame)

    def _schedule_exit(self, sig: int, frame: FrameType | None) -> None:
        asyncio.ensure_future(self._drain_then_exit(sig, frame))

    async def _drain_then_exit(self, sig: int, frame: FrameType | None) -> None:
        drained = await self.lifecycle.wait_idle(self.drain_s)
        log.info("drain %s; shutting down", "complete" if drained else "timed out")
        super().handle_exit(sig, frame)
