"""``python -m service --model PATH ...``: every flag is also a ``GEMMSERVE_<NAME>`` variable."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import tempfile
from pathlib import Path

from pydantic import ValidationError

from service.config import Settings

REPEATED = {"model"}  # flags that may be given more than once


def _shown(value: object) -> str:
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def build_parser() -> argparse.ArgumentParser:
    """One ``--flag`` per setting (``max_delay_ms`` -> ``--max-delay-ms``); unset flags fall back
    to the environment, then to the defaults."""
    parser = argparse.ArgumentParser(
        prog="python -m service", description="Serve an ONNX image model over HTTP."
    )
    for name, field in Settings.model_fields.items():
        default = "required" if field.is_required() else f"default {_shown(field.default)}"
        parser.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            default=argparse.SUPPRESS,
            action="append" if name in REPEATED else "store",
            metavar=name.upper(),
            help=f"{field.description or ''} (env GEMMSERVE_{name.upper()}; {default})",
        )
    return parser


def parse_settings(argv: list[str]) -> Settings:
    """Flags and environment to ``Settings``; a bad value is one line on stderr and exit code 2."""
    flags = vars(build_parser().parse_args(argv))
    try:
        return Settings(**flags)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'settings'}: {e['msg']}" for e in exc.errors()
        )
        print(f"gemmserve: invalid settings: {problems}", file=sys.stderr)
        sys.exit(2)


def main(argv: list[str] | None = None, model_factory=None) -> int:
    """Parse settings, run the supervisor until SIGTERM/SIGINT; exit code 1 if the model failed
    to load. ``model_factory(settings)`` (picklable) replaces the engine's loader (tests)."""
    settings = parse_settings(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    with tempfile.TemporaryDirectory(prefix="gemmserve-") as private:
        # Before prometheus_client is imported here or in any child: every process of the
        # service then records into this directory, and any worker's /metrics merges them.
        metrics_dir = Path(private) / "metrics"
        metrics_dir.mkdir()
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
        from service.supervisor import Supervisor

        supervisor = Supervisor(settings, Path(private), model_factory)
        code = supervisor.run()
    if code == 0 and supervisor.signals:
        # As uvicorn does after a graceful stop: end by the signal that asked for it.
        signal.signal(supervisor.signals[0], signal.SIG_DFL)
        signal.raise_signal(supervisor.signals[0])
    return code


if __name__ == "__main__":
    sys.exit(main())
