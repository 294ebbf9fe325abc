"""``python -m service --model PATH ...``: every flag is also a ``GEMMSERVE_<NAME>`` variable."""

from __future__ import annotations

import argparse
import logging
import sys

import uvicorn
from pydantic import ValidationError

from service.app import create_app
from service.config import Settings
from service.http_protocol import HeadTimeoutProtocol
from service.lifecycle import State
from service.runtime import ModelFactory
from service.server import DrainingServer


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


def main(argv: list[str] | None = None, model_factory: ModelFactory | None = None) -> int:
    """Parse settings, serve until SIGTERM/SIGINT; exit code 1 if the model failed to load."""
    settings = parse_settings(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    app = create_app(settings, model_factory)
    config = uvicorn.Config(
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
    lifecycle = app.state.runtime.lifecycle
    DrainingServer(config, lifecycle, drain_s=settings.graceful_shutdown_s * 0.8).run()
    return 1 if lifecycle.state is State.FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
