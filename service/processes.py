"""Small helpers every child process of the supervisor uses."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Linux: get SIGTERM if the supervisor dies (even by SIGKILL), so no child is orphaned."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() == 1:  # the supervisor died before the line above ran
        os.kill(os.getpid(), signal.SIGTERM)


def ignore_interrupts() -> None:
    """Ctrl-C reaches every process of the terminal's group; only the supervisor acts on it and
    stops the children in order (workers drain first, the engine last)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
