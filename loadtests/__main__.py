"""``python -m loadtests run|report|soak``: load tests against a service subprocess.

Each command starts ``python -m service`` on a free loopback port, waits for ``/readyz``, drives it
with headless Locust and stops it with SIGTERM. ``run`` and ``soak`` exit non-zero on any unexpected
failure.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from loadtests.locust_run import SCENARIOS
from loadtests.run import Target, run
from loadtests.service_proc import DEFAULT_MODEL


def service_flag(text: str) -> tuple[str, str]:
    """``NAME=VALUE`` (a ``python -m service`` setting, e.g. ``max_delay_ms=5``)."""
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name.strip().replace("-", "_"), value.strip()


def int_list(text: str) -> list[int]:
    return [int(item) for item in text.split(",") if item.strip()]


def float_list(text: str) -> list[float]:
    return [float(item) for item in text.split(",") if item.strip()]


def common(parser: argparse.ArgumentParser, out: str) -> None:
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="model dir or .onnx")
    parser.add_argument("--device", default="cpu", help="service --device (default cpu)")
    parser.add_argument(
        "--set", dest="flags", type=service_flag, action="append", default=[],
        metavar="NAME=VALUE", help="extra service setting, repeatable (e.g. max_delay_ms=5)",
    )  # fmt: skip
    stamp = time.strftime("%Y%m%d-%H%M%S")
    default_out = Path(__file__).resolve().parent / "out" / f"{out}-{stamp}"
    parser.add_argument("--out", type=Path, default=default_out, help="output directory")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m loadtests", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    run_p = commands.add_parser("run", help="one headless Locust run; fails on any failure")
    common(run_p, "run")
    run_p.add_argument("--scenario", choices=sorted(SCENARIOS), default="mixed+open")
    run_p.add_argument("--users", type=int, default=16, help="closed-loop users")
    run_p.add_argument("--run-time-s", type=float, default=60.0)
    run_p.add_argument("--arrival-rate", type=float, default=20.0, help="open loop, req/s")
    run_p.add_argument("--burst-factor", type=float, default=4.0, help="open loop, 1 = Poisson")

    report_p = commands.add_parser("report", help="sweep users x max_batch_size; tables + plots")
    common(report_p, "report")
    report_p.add_argument("--users", type=int_list, default=[1, 2, 4, 8, 16, 32, 64, 128])
    report_p.add_argument("--batch-sizes", type=int_list, default=[1, 4, 16, 32])
    report_p.add_argument("--point-s", type=float, default=5.0, help="seconds per point")
    report_p.add_argument(
        "--open-fractions", type=float_list, default=[0.3, 0.6, 0.9],
        help="open-loop rates as fractions of the best closed-loop req/s ('' for none)",
    )  # fmt: skip
    report_p.add_argument("--docs", type=Path, default=None, help="write LOADTEST.md + PNGs here")
    report_p.add_argument("--from-csv", type=Path, default=None, help="re-render a points.csv")

    soak_p = commands.add_parser("soak", help="long mixed run; RSS, queue depth, p99 over time")
    common(soak_p, "soak")
    soak_p.add_argument("--minutes", type=float, default=10.0)
    soak_p.add_argument("--users", type=int, default=16)
    soak_p.add_argument("--sample-s", type=float, default=2.0, help="sampling interval")
    soak_p.add_argument("--max-growth-mib", type=float, default=16.0, help="RSS growth allowed")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    args.command_line = " ".join(["python -m loadtests", *argv])
    flags = dict(args.flags)
    # Tune once per output directory: later service starts (one per batch size) reuse it.
    # With a model repository the cache is a directory: one file per model.
    cache = "autotune" if "model_repository" in flags else "autotune.json"
    flags.setdefault("autotune_cache", str(args.out / cache))
    target = Target(args.model, args.device, tuple(flags.items()))
    if args.command == "run":
        plan = dict(
            scenario=args.scenario, users=args.users + (args.scenario == "mixed+open"),
            run_time_s=args.run_time_s, arrival_rate=args.arrival_rate,
            burst_factor=args.burst_factor,
        )  # fmt: skip
        return run(target, plan, args.out)
    if args.command == "report":
        from loadtests.report import report

        return report(target, args)
    from loadtests.soak import soak

    return soak(target, args)


if __name__ == "__main__":
    sys.exit(main())
