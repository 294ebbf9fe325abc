"""``python -m loadtests report``: throughput and latency against users and ``max_batch_size``.

Closed loop: ``SingleImageClient`` users (one PNG per request, no think time) for each user count
and each ``max_batch_size`` (1 = no batching), a fresh service per batch size. Open loop: Poisson
and bursty arrivals at fractions of the best closed-loop throughput, with no batching and with the
largest batch size. Each point runs ``--point-s`` seconds. Writes ``points.csv`` in ``--out`` and,
with ``--docs DIR``, ``DIR/LOADTEST.md`` and its PNG plots.
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from loadtests.locust_run import LocustPlan, LocustResult, run_locust
from loadtests.run import Target
from loadtests.service_proc import ServiceError

OPEN_LOOP_BURST_FACTORS = (1.0, 4.0)  # Poisson, then bursts 4x the mean rate
BURST_PERIOD_S = 1.0  # several burst cycles fit in one short point


@dataclass(frozen=True)
class Load:
    """What a point offers: ``users`` closed-loop users, or open-loop arrivals."""

    mode: str  # "closed" | "open"
    users: int = 1
    arrival_rate: float = math.nan
    burst_factor: float = 1.0


@dataclass(frozen=True)
class Point:
    """One measured point (latencies in ms, as Locust reports them)."""

    mode: str
    max_batch_size: int
    users: int
    arrival_rate: float
    burst_factor: float
    requests: int
    failures: int
    rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    load_1m: float = math.nan  # machine load average as the point started (others included)


def measure(target: Target, mbs: int, loads: list[Load], point_s: float, out: Path) -> list[Point]:
    """Start one service with ``max_batch_size=mbs`` and run each load against it."""
    points = []
    with target.service(out / f"service-mbs{mbs}.log", max_batch_size=mbs) as service:
        for n, load in enumerate(loads):
            plan = LocustPlan(
                host=service.url,
                scenario="single" if load.mode == "closed" else "open",
                users=load.users,
                run_time_s=point_s,
                csv_prefix=out / f"mbs{mbs}-{load.mode}-{n}",
                arrival_rate=20.0 if math.isnan(load.arrival_rate) else load.arrival_rate,
                burst_factor=load.burst_factor,
                burst_period_s=BURST_PERIOD_S,
                reset_stats=True,
            )
            load_1m = os.getloadavg()[0]
            point = as_point(run_locust(plan, out / "locust.log"), mbs, load, load_1m)
            print(progress(point), flush=True)
            points.append(point)
    return points


def as_point(result: LocustResult, max_batch_size: int, load: Load, load_1m: float) -> Point:
    figures = {k: v for k, v in asdict(result).items() if k != "exit_code"}
    return Point(max_batch_size=max_batch_size, **asdict(load), **figures, load_1m=load_1m)


def progress(p: Point) -> str:
    if p.mode == "closed":
        load = f"{p.users:>3} users"
    else:
        load = f"{p.arrival_rate:6.1f}/s x{p.burst_factor:g}"
    return (
        f"mbs {p.max_batch_size:>2} {p.mode:6} {load}: {p.rps:7.1f} req/s  p50 {p.p50_ms:5.0f}  "
        f"p95 {p.p95_ms:5.0f}  p99 {p.p99_ms:5.0f} ms  failures {p.failures}"
    )


def sweep(target: Target, args) -> list[Point]:
    """All closed-loop points, then the open-loop points (``args``: the report's options)."""
    users, batch_sizes, point_s, out = args.users, args.batch_sizes, args.point_s, args.out
    closed = [Load("closed", users=u) for u in users]
    points = []
    for mbs in batch_sizes:
        points += measure(target, mbs, closed, point_s, out)
    peak_rps = max((p.rps for p in points if not math.isnan(p.rps)), default=0.0)
    if peak_rps <= 0:
        return points
    opened = [
        Load("open", arrival_rate=round(f * peak_rps, 1), burst_factor=b)
        for b in OPEN_LOOP_BURST_FACTORS
        for f in args.open_fractions
    ]
    if not opened:
        return points
    for mbs in sorted({min(batch_sizes), max(batch_sizes)}):
        points += measure(target, mbs, opened, point_s, out)
    return points


def write_points(points: list[Point], path: Path) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(asdict(points[0])))
        writer.writeheader()
        writer.writerows(asdict(p) for p in points)


def read_points(path: Path) -> list[Point]:
    """Points back from ``points.csv`` (to re-render without measuring again)."""
    kinds = {name: field.type for name, field in Point.__dataclass_fields__.items()}
    cast = {"int": int, "float": float, "str": str}
    with open(path, newline="") as handle:
        return [
            Point(**{k: cast[kinds[k]](v) for k, v in row.items()})
            for row in csv.DictReader(handle)
        ]


def report(target: Target, args) -> int:
    """Measure (or re-read ``--from-csv``), write ``points.csv``, and the docs when asked."""
    from loadtests.render import machine, write_docs  # matplotlib only for this command

    args.out.mkdir(parents=True, exist_ok=True)
    if args.from_csv:
        points = read_points(args.from_csv)
        meta = json.loads((args.from_csv.parent / "meta.json").read_text())
    else:
        try:
            points = sweep(target, args)
        except ServiceError as exc:
            print(f"FAIL: {exc}")
            return 1
        # Where, when and how it was measured, kept with the points for a later re-render.
        meta = {**machine(), "command": args.command_line, "model": str(target.model),
                "device": target.device, "point_s": args.point_s}  # fmt: skip
        write_points(points, args.out / "points.csv")
        (args.out / "meta.json").write_text(json.dumps(meta, indent=2))
        print(f"points: {args.out / 'points.csv'}")
    if args.docs:
        write_docs(points, args.docs, meta)
        print(f"report: {args.docs / 'LOADTEST.md'}")
    return 0
