"""Helpers for the server processes the tests start."""

from __future__ import annotations

import signal
import subprocess


def terminate(proc: subprocess.Popen, grace_s: float = 30.0) -> int:
    """SIGTERM, then SIGKILL if the process outlives ``grace_s``; returns the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode
