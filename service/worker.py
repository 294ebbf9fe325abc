"""An HTTP worker process: uvicorn on the listening socket the supervisor shares.

Does HTTP, validation and decoding; hands each request's images to the engine process through
its slot arena. Several workers accept from the same socket; the kernel gives each new connection
to whichever worker accepts first.
"""

from __future__ import annotations

import logging
import socket
import sys
from dataclasses import dataclass

import uvicorn

from service.app import create_app
from service.config import Settings
from service.http_protocol import HeadTimeoutProtocol
from service.lifecycle import State
from service.processes import die_with_parent
from service.runtime import WorkerLink
from service.server import DrainingServer


@dataclass(frozen=True)
class WorkerArgs:
    """What the supervisor hands a worker process (pickled once, at spawn)."""

    settings: Settings
    link: WorkerLink
    index: int


def uvicorn_config(app, settings: Settings) -> uvicorn.Config:
    """uvicorn's settings for the service's app."""
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,
        server_header=False,
        limit_concurrency=settings.max_concurrency,
        timeout_keep_alive=int(max(1, settings.keep_alive_s)),
        http=HeadTimeoutProtocol,  # a request head must also arrive within keep_alive_s
        # The drain phase takes most of the grace period; uvicorn's own shutdown the rest.
        timeout_graceful_shutdown=max(1, round(settings.graceful_shutdown_s * 0.2)),
    )


def worker_main(args: WorkerArgs, sock: socket.socket) -> None:
    """A worker process's entry point (``multiprocessing`` spawn target)."""
    die_with_parent()
    settings = args.settings
    logging.basicConfig(
        level=settings.log_level.upper(),
        format=f"%(asctime)s %(levelname)s %(name)s[worker {args.index}]: %(message)s",
    )
    app = create_app(settings, args.link)
    lifecycle = app.state.runtime.lifecycle
    server = DrainingServer(
        uvicorn_config(app, settings),
        lifecycle,
        drain_s=settings.graceful_shutdown_s * 0.8,
        ignore_interrupts=True,
    )
    server.run(sockets=[sock])
    sys.exit(1 if lifecycle.state is State.FAILED else 0)
