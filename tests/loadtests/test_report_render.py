"""The report's tables, findings and plots from synthetic points (no measuring)."""

from __future__ import annotations

import math

from loadtests.render import machine, write_docs
from loadtests.report import Point, read_points, write_points
from loadtests.report_text import closed_table, findings, open_table
from loadtests.service_proc import DEFAULT_MODEL

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def closed(mbs: int, users: int, rps: float, p99: float, failures: int = 0) -> Point:
    latency = (p99 / 3, p99 / 2, p99)
    return Point("closed", mbs, users, math.nan, 1.0, 100, failures, rps, *latency, 1.5)


def opened(mbs: int, rate: float, burst: float, p99: float) -> Point:
    return Point("open", mbs, 1, rate, burst, 100, 0, rate, p99 / 3, p99 / 2, p99, 2.5)


POINTS = [
    closed(1, 1, 80.0, 20.0),
    closed(1, 64, 120.0, 900.0),
    closed(32, 1, 90.0, 15.0),
    closed(32, 64, 420.0, 300.0, failures=2),
    opened(1, 126.0, 1.0, 700.0),
    opened(32, 126.0, 4.0, 250.0),
]


def test_closed_table_has_a_row_per_user_count_and_a_column_per_batch_size():
    lines = closed_table(POINTS, "rps", 1)
    assert lines[0] == "| users | mbs 1 | mbs 32 |"
    assert lines[2] == "| 1 | 80.0 | 90.0 |"
    assert lines[3] == "| 64 | 120.0 | 420.0 ! |"  # "!" marks failures


def test_open_table_lists_each_open_point():
    lines = open_table(POINTS)
    assert len(lines) == 2 + 2
    assert "| 1 | Poisson | 126.0 |" in lines[2]
    assert "| 32 | bursts x4 | 126.0 |" in lines[3] and lines[3].endswith("| 2.5 |")


def test_findings_are_computed_from_the_points():
    text = "\n".join(findings(POINTS))
    assert "420 req/s at max_batch_size 32, 64 users" in text
    assert "at most 120 req/s" in text and "3.50x" in text
    assert "1: 900 ms, 32: 300 ms" in text


def test_points_survive_a_csv_round_trip(tmp_path):
    write_points(POINTS, tmp_path / "points.csv")
    again = read_points(tmp_path / "points.csv")
    assert [p.rps for p in again] == [p.rps for p in POINTS]
    assert all(math.isnan(p.arrival_rate) for p in again if p.mode == "closed")
    assert again[-1] == POINTS[-1]


def test_write_docs_names_the_machine_and_writes_three_plots(tmp_path):
    info = machine()
    meta = {**info, "command": "python -m loadtests report", "model": str(DEFAULT_MODEL)}
    write_docs(POINTS, tmp_path, {**meta, "device": "cpu", "point_s": 5.0})
    text = (tmp_path / "LOADTEST.md").read_text()
    assert f"{info['cpu']}, {info['cores']} cores" in text
    assert "`models/digits`" in text
    for name in ("loadtest_throughput.png", "loadtest_latency.png", "loadtest_open_loop.png"):
        assert (tmp_path / name).read_bytes().startswith(PNG_MAGIC)
        assert f"({name})" in text
