"""The load-test report: ``LOADTEST.md`` tables and PNG plots (matplotlib, Agg backend)."""

from __future__ import annotations

import datetime
import os
import platform
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

from loadtests.report import Point  # noqa: E402
from loadtests.report_text import PLOTS, arrivals, document  # noqa: E402


def machine() -> dict[str, str]:
    """CPU model, core count, memory, OS and Python, for the report's header."""
    cpu = platform.processor() or "unknown CPU"
    memory = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = f"{int(line.split()[1]) / 1024**2:.0f} GiB RAM"
    except OSError:
        pass  # not Linux: keep what platform gave
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "memory": memory or "unknown RAM",
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "load": "load average {:.1f} {:.1f} {:.1f}".format(*os.getloadavg()),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def series(points: list[Point], mbs: int, field: str) -> tuple[list[int], list[float]]:
    chosen = sorted((p for p in points if p.mode == "closed" and p.max_batch_size == mbs),
                    key=lambda p: p.users)  # fmt: skip
    return [p.users for p in chosen], [getattr(p, field) for p in chosen]


def batch_sizes(points: list[Point], mode: str = "closed") -> list[int]:
    return sorted({p.max_batch_size for p in points if p.mode == mode})


def label(mbs: int) -> str:
    return "mbs 1 (no batching)" if mbs == 1 else f"mbs {mbs}"


def plot_throughput(points: list[Point], path: Path, title: str) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for mbs in batch_sizes(points):
        ax.plot(*series(points, mbs, "rps"), marker="o", label=label(mbs))
    users_axis(ax)
    ax.set_ylim(bottom=0)
    ax.set(xlabel="concurrent users (closed loop)", ylabel="requests/s", title=title)
    finish(fig, [ax], path)


def plot_latency(points: list[Point], path: Path, title: str) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2), sharey=True)
    for ax, field in zip(axes, ("p50_ms", "p95_ms", "p99_ms")):
        for mbs in batch_sizes(points):
            ax.plot(*series(points, mbs, field), marker="o", label=label(mbs))
        users_axis(ax)
        ax.set(xlabel="concurrent users", title=field[:3])
    log_y(axes[0])  # shared by all three
    axes[0].set_ylabel("latency, ms")
    fig.suptitle(title)
    finish(fig, axes, path)


def plot_open(points: list[Point], path: Path, title: str) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for color, mbs in enumerate(batch_sizes(points, "open")):
        for burst in sorted({p.burst_factor for p in points if p.mode == "open"}):
            chosen = [p for p in points if p.mode == "open" and p.max_batch_size == mbs]
            chosen = sorted((p for p in chosen if p.burst_factor == burst),
                            key=lambda p: p.arrival_rate)  # fmt: skip
            style = "-" if burst <= 1 else "--"
            rates, p99s = [p.arrival_rate for p in chosen], [p.p99_ms for p in chosen]
            name = f"{label(mbs)}, {arrivals(burst)}"
            ax.plot(rates, p99s, style, color=f"C{color}", marker="o", label=name)
    log_y(ax)
    ax.set(xlabel="offered requests/s (open loop)", ylabel="p99 latency, ms", title=title)
    finish(fig, [ax], path)


def users_axis(ax) -> None:
    """User counts double from point to point: log base 2, ticks labelled 1, 2, 4, ..."""
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _pos: f"{value:g}"))


def log_y(ax) -> None:
    """Log latency axis, unless nothing positive was measured (log scale would refuse it)."""
    values = [y for line in ax.get_lines() for y in line.get_ydata()]
    if any(y > 0 for y in values):
        ax.set_yscale("log")


def finish(fig, axes, path: Path) -> None:
    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_soak(samples: list, path: Path, title: str) -> None:
    """RSS, queue depth and rolling p99 against time (the soak's ``Sample`` list)."""
    fig, axes = plt.subplots(3, 1, figsize=(8, 7), sharex=True)
    t_s = [s.t_s for s in samples]
    panels = {
        "rss_mib": "server RSS, MiB",
        "queue_depth": "gemmserve_queue_depth",
        "p99_ms": "p99 (10 s window), ms",
    }
    for ax, (field, name) in zip(axes, panels.items()):
        ax.plot(t_s, [getattr(s, field) for s in samples], color="C0", label=name)
        ax.set_ylabel(name, fontsize=8)
    axes[0].set_ylim(bottom=0)
    axes[-1].set_xlabel("seconds since the load started")
    fig.suptitle(title)
    finish(fig, axes, path)


def write_docs(points: list[Point], docs: Path, meta: dict) -> None:
    """Write ``docs/LOADTEST.md`` and the three plots next to it (``meta``: machine, date,
    command, model and seconds per point, as recorded when the points were measured)."""
    docs.mkdir(parents=True, exist_ok=True)
    where = f"{meta['cpu']}, {meta['cores']} cores"
    plot_throughput(
        points, docs / PLOTS["throughput"], f"Throughput, single-PNG requests ({where})"
    )
    plot_latency(points, docs / PLOTS["latency"], f"Latency, single-PNG requests ({where})")
    if any(p.mode == "open" for p in points):
        plot_open(points, docs / PLOTS["open"], f"Open loop: p99 against arrival rate ({where})")
    text = document(points, meta)
    (docs / "LOADTEST.md").write_text(text)
