"""The service under test as a subprocess on a free loopback port: start, wait ready, SIGTERM."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = REPO / "models" / "digits"
# uvicorn re-raises the signal after a graceful shutdown, so a clean stop may read as -SIGTERM.
CLEAN_EXIT_CODES = (0, -signal.SIGTERM)


class ServiceError(RuntimeError):
    """The service did not start, did not become ready, or did not stop cleanly."""


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_get(url: str, timeout_s: float = 5.0) -> tuple[int, bytes]:
    """Status and body of a GET (4xx/5xx included); raises ``OSError`` when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


class ServiceProcess:
    """``python -m service`` on 127.0.0.1; a context manager that stops it with SIGTERM.

    ``flags`` are extra service flags, e.g. ``{"max_batch_size": 4}`` -> ``--max-batch-size 4``.
    The service's output goes to ``log_path``.
    """

    def __init__(
        self, model: Path, log_path: Path, flags: dict | None = None, device="cpu", cwd=REPO
    ):
        """``cwd``: the source tree to run (another checkout, to compare versions)."""
        self.cwd = Path(cwd)
        self.model = Path(model)
        self.log_path = Path(log_path)
        self.flags = {"device": device, **(flags or {})}
        self.port = 0
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def command(self) -> list[str]:
        args = [sys.executable, "-m", "service", "--model", str(self.model)]
        args += ["--host", "127.0.0.1", "--port", str(self.port)]
        for name, value in self.flags.items():
            args += ["--" + name.replace("_", "-"), str(value)]
        return args

    def start(self, ready_timeout_s: float = 120.0) -> ServiceProcess:
        """Start on a free port and wait until ``/readyz`` answers 200."""
        if not (self.model.exists()):
            raise ServiceError(f"model {self.model} does not exist")
        self.port = free_port()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, cwd=self.cwd
            )
        self.wait_ready(ready_timeout_s)
        return self

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServiceError(
                    f"service exited with {self.proc.returncode} before ready:\n{self.log_tail()}"
                )
            try:
                if http_get(self.url + "/readyz", timeout_s=2)[0] == 200:
                    return
            except OSError:
                pass  # not listening yet
            time.sleep(0.1)
        self.stop()
        raise ServiceError(f"service not ready after {timeout_s:.0f} s:\n{self.log_tail()}")

    def stop(self, grace_s: float = 30.0) -> int:
        """SIGTERM, wait up to ``grace_s`` for a clean exit (then SIGKILL); the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise ServiceError(f"service ignored SIGTERM for {grace_s:.0f} s; killed") from None

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> ServiceProcess:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        code = self.stop()
        if code not in CLEAN_EXIT_CODES and exc_info[0] is None:
            raise ServiceError(f"service exited with {code} after SIGTERM:\n{self.log_tail()}")
