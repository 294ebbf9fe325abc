"""The issue's speed targets, read off the benchmark's and the load test's tables in the logs.

- engine best / PyTorch best >= 1.0x at every batch on the CIFAR-style net;
- the same >= 0.8x on ResNet-18 at batch >= 32;
- the service batching >= 3x its ``--max-batch-size 1`` throughput, at p99 <= 20 ms.

Each line says met, not met, or that the figures are missing (the step failed or timed out).
"""

from __future__ import annotations

import re
from pathlib import Path

RATIO = "engine best / PyTorch best"
# compare_servers' row names: the default service (2 HTTP workers, batching) and batch 1
BATCHING, SINGLE = "gemmserve --workers 2", "gemmserve --max-batch-size 1"
SERVICE_GAIN, P99_MS = 3.0, 20.0


def tables(text: str) -> list[list[dict[str, str]]]:
    """Every Markdown table in ``text``: a list of rows, each a dict keyed by the header cells."""
    found, block = [], []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            block.append([cell.strip() for cell in line.strip().strip("|").split("|")])
            continue
        if len(block) > 2:
            found.append([dict(zip(block[0], row)) for row in block[2:]])
        block = []
    return found


def number(cell: str) -> float:
    """``"1.23x"``, ``"1,234"`` or ``"12.5"`` as a float; NaN when it is none of these."""
    match = re.fullmatch(r"([\d.,]+)x?", cell.strip())
    return float(match.group(1).replace(",", "")) if match else float("nan")


def rows_with(text: str, column: str) -> list[dict[str, str]]:
    return [row for table in tables(text) for row in table if column in row]


def bench_target(text: str, net: str, floor: float, min_batch: int) -> str:
    ratios = {int(r["batch"]): number(r[RATIO]) for r in rows_with(text, RATIO)
              if r.get("net") == net and int(r["batch"]) >= min_batch}  # fmt: skip
    label = f"{net}: engine best / PyTorch best >= {floor}x at batch >= {min_batch}"
    if not ratios:
        return f"- {label}: no figures"
    shown = ", ".join(f"batch {b} {v:.2f}x" for b, v in sorted(ratios.items()))
    met = all(v >= floor for v in ratios.values())
    return f"- {label}: {'met' if met else 'NOT met'} ({shown})"


def service_target(text: str) -> str:
    rows = {r["server"]: r for r in rows_with(text, "server")}
    label = f"service: batching >= {SERVICE_GAIN}x --max-batch-size 1 at p99 <= {P99_MS} ms"
    if BATCHING not in rows or SINGLE not in rows:
        return f"- {label}: no figures"
    fast, single = rows[BATCHING], rows[SINGLE]
    gain = number(fast["req/s"]) / number(single["req/s"])
    p99 = number(fast["p99 ms"])
    met = gain >= SERVICE_GAIN and p99 <= P99_MS
    figures = (f"{gain:.2f}x, {fast['req/s']} vs {single['req/s']} req/s; p99 {p99:.1f} ms; "
               f"mean batch {fast['mean batch']}")  # fmt: skip
    return f"- {label}: {'met' if met else 'NOT met'} ({figures})"


def evaluate(logs: dict[str, Path]) -> list[str]:
    """The target lines, from the logs of the steps named bench-cifar, bench-resnet18 and
    service-load (a missing log reads as no figures)."""
    text = {name: path.read_text(errors="replace") if path and path.exists() else ""
            for name, path in logs.items()}  # fmt: skip
    return [
        bench_target(text.get("bench-cifar", ""), "cifar", 1.0, 1),
        bench_target(text.get("bench-resnet18", ""), "resnet18", 0.8, 32),
        service_target(text.get("service-load", "")),
    ]
