"""The text of ``docs/LOADTEST.md``: how to run the load tests, the machine, tables, findings."""

from __future__ import annotations

import math
from pathlib import Path

from loadtests.report import BURST_PERIOD_S, Point
from loadtests.service_proc import REPO

PLOTS = {
    "throughput": "loadtest_throughput.png",
    "latency": "loadtest_latency.png",
    "open": "loadtest_open_loop.png",
}

# The fixed part of the document: how to run the load tests and what the users do.
HOW_TO = (Path(__file__).resolve().parent / "loadtest_header.md").read_text()


def cell(value: float, digits: int = 0) -> str:
    return "n/a" if math.isnan(value) else f"{value:.{digits}f}"


def closed_table(points: list[Point], field: str, digits: int = 0) -> list[str]:
    """Rows: users; columns: max_batch_size; cells: ``field`` (failures marked with ``!``)."""
    closed = [p for p in points if p.mode == "closed"]
    sizes = sorted({p.max_batch_size for p in closed})
    users = sorted({p.users for p in closed})
    by_key = {(p.users, p.max_batch_size): p for p in closed}
    lines = [
        "| users | " + " | ".join(f"mbs {m}" for m in sizes) + " |",
        "|---:|" + "---:|" * len(sizes),
    ]
    for u in users:
        cells = []
        for m in sizes:
            p = by_key.get((u, m))
            text = cell(getattr(p, field), digits) if p else ""
            cells.append(text + (" !" if p and p.failures else ""))
        lines.append(f"| {u} | " + " | ".join(cells) + " |")
    return lines


def open_table(points: list[Point]) -> list[str]:
    lines = [
        "| max_batch_size | arrivals | offered req/s | served req/s | p50 ms | p95 ms | p99 ms "
        "| failures | load |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in sorted(
        (p for p in points if p.mode == "open"),
        key=lambda p: (p.max_batch_size, p.burst_factor, p.arrival_rate),
    ):
        lines.append(
            f"| {p.max_batch_size} | {arrivals(p.burst_factor)} | {p.arrival_rate:.1f} "
            f"| {p.rps:.1f} | {cell(p.p50_ms)} | {cell(p.p95_ms)} | {cell(p.p99_ms)} "
            f"| {p.failures} | {cell(p.load_1m, 1)} |"
        )
    return lines


def arrivals(burst_factor: float) -> str:
    return "Poisson" if burst_factor <= 1 else f"bursts x{burst_factor:g}"


def model_text(model: Path) -> str:
    model = Path(model).resolve()
    try:
        return f"`{model.relative_to(REPO)}`"
    except ValueError:
        return f"`{model}` (not the bundled model)"


def findings(points: list[Point]) -> list[str]:
    """A few sentences computed from the points (no number typed by hand)."""
    closed = [p for p in points if p.mode == "closed" and not math.isnan(p.rps)]
    if not closed:
        return []
    best = max(closed, key=lambda p: p.rps)
    lines = [f"- Best throughput: {best.rps:.0f} req/s at max_batch_size {best.max_batch_size}, "
             f"{best.users} users (p99 {cell(best.p99_ms)} ms)."]  # fmt: skip
    unbatched = [p for p in closed if p.max_batch_size == 1]
    if unbatched and best.max_batch_size != 1:
        top = max(unbatched, key=lambda p: p.rps)
        users = f"{top.users} user" + ("s" if top.users != 1 else "")
        lines.append(f"- Without batching (max_batch_size 1): at most {top.rps:.0f} req/s "
                     f"({users}), {best.rps / top.rps:.2f}x less.")  # fmt: skip
    most = max(p.users for p in closed)
    tail = sorted((p for p in closed if p.users == most), key=lambda p: p.max_batch_size)
    lines.append(f"- At {most} users, p99 by max_batch_size: " + ", ".join(
        f"{p.max_batch_size}: {cell(p.p99_ms)} ms" for p in tail) + ".")  # fmt: skip
    if any(p.failures for p in points):
        lines.append("- `!` marks points where some requests failed (see the failures column).")
    return lines


def document(points: list[Point], info: dict) -> str:
    """The whole of ``LOADTEST.md`` (``info``: the measurement's machine and settings)."""
    command, model, point_s = info["command"], Path(info["model"]), info["point_s"]
    closed_n = sum(p.mode == "closed" for p in points)
    out = [HOW_TO, "## Results", ""]
    out += [
        f"Measured {info['date']} on **{info['cpu']}, {info['cores']} cores**, {info['memory']}, "
        f"{info['os']}, Python {info['python']}; service `--device {info['device']}`; "
        f"{info['load']} at the end (the sweep's own Locust and service included). "
        f"Model {model_text(model)}. "
        f"Locust and the service share these cores, so the load generator takes CPU the service "
        f"would otherwise use: read the curves as shapes, not as the service's ceiling.",
        "",
        f"Command: `{command}` ({closed_n} closed-loop points, {point_s:g} s each; a fresh service "
        "per max_batch_size, default settings otherwise: `--max-delay-ms 2`, batch buckets up to "
        "max_batch_size). Latencies are Locust's, from request start to last byte, rounded by "
        "Locust to 2 significant digits above 100 ms.",
        "",
        *findings(points),
        "",
    ]
    for field, title in (("rps", "Throughput, requests/s"), ("p50_ms", "p50 latency, ms"),
                         ("p95_ms", "p95 latency, ms"), ("p99_ms", "p99 latency, ms")):  # fmt: skip
        out += [f"### {title} (closed loop, single-PNG requests)", "",
                *closed_table(points, field, 0 if field.endswith("_ms") else 1), ""]  # fmt: skip
    out += [f"![throughput]({PLOTS['throughput']})", "", f"![latency]({PLOTS['latency']})", ""]
    out += ["### Machine load average (1 min) as each point started", "",
            f"Other processes included. With {info['cores']} cores, a value well above "
            f"{info['cores']} means the service and Locust shared the CPU with other work during "
            "that point: its figures are pessimistic and noisy.", "",
            *closed_table(points, "load_1m", 1), ""]  # fmt: skip
    if any(p.mode == "open" for p in points):
        out += open_section(points)
    return "\n".join(out)


def open_section(points: list[Point]) -> list[str]:
    return [
        "### Open loop (Poisson and bursty arrivals)", "",
        "One open-loop client; offered rates are fractions of the best closed-loop "
        "throughput above. Bursts x B put all arrivals of every "
        f"{BURST_PERIOD_S:g} s into its first 1/B (same mean rate). Served req/s counts "
        "answers over the point.", "",
        *open_table(points), "", f"![open loop]({PLOTS['open']})", "",
    ]  # fmt: skip
