"""The targets read off logs holding the tables that ``engine.bench --device cuda`` and
``loadtests.compare_servers`` really print (made here by their own table functions)."""

from __future__ import annotations

from collections import Counter

from engine.bench.cuda import table as bench_table
from gpucheck.targets import evaluate, tables
from loadtests.compare_servers import LoadResult
from loadtests.compare_servers import table as service_table


def bench_log(net: str, ours_theirs: dict[int, tuple[float, float]]) -> str:
    rows = [(net, {"batch": b, "engine eager": ours * 0.5, "engine graphs": ours,
                   "engine streamed": ours * 0.9, "PyTorch eager": theirs * 0.7,
                   "PyTorch graphs": theirs, "conv TFLOP/s": 3.0})
            for b, (ours, theirs) in ours_theirs.items()]  # fmt: skip
    return "GPU: {...}\n\n## Images/s on the GPU\n\n" + "\n".join(bench_table(rows, 50.0)) + "\n"


def service_log(batching_rps: float, single_rps: float, p99_s: float) -> str:
    def result(rps, p99):
        return LoadResult(int(rps * 8), 8.0, [0.001] * 98 + [p99] * 2, Counter({200: int(rps * 8)}))

    batching = ("gemmserve --workers 2", result(batching_rps, p99_s), 1.0, (12.5, 9000.0, 1.1))
    single = ("gemmserve --max-batch-size 1", result(single_rps, 0.002), 1.5, (1.0, 3000.0, 1.0))
    return "Machine: ...\nLoad: ...\n" + service_table([batching, single], 50.0) + "\n"


def write_logs(tmp_path, texts: dict[str, str]):
    logs = {}
    for name, text in texts.items():
        logs[name] = tmp_path / f"{name}.log"
        logs[name].write_text(text)
    return logs


def test_targets_met(tmp_path):
    logs = write_logs(tmp_path, {
        "bench-cifar": bench_log("cifar", {1: (5000, 4000), 8: (30000, 29000)}),
        "bench-resnet18": bench_log("resnet18", {1: (100, 400), 32: (3000, 3500)}),
        "service-load": service_log(9000, 2500, 0.015),
    })  # fmt: skip
    lines = evaluate(logs)
    assert lines[0].startswith("- cifar: engine best / PyTorch best >= 1.0x at batch >= 1: met")
    assert "batch 1 1.25x, batch 8 1.03x" in lines[0]
    # batch 1 is far behind PyTorch, but the ResNet-18 target starts at batch 32
    assert lines[1].startswith("- resnet18: engine best / PyTorch best >= 0.8x at batch >= 32: met")
    assert "(batch 32 0.86x)" in lines[1]
    assert "met (3.60x, 9,000 vs 2,500 req/s; p99 15.0 ms; mean batch 12.5)" in lines[2]


def test_targets_missed_or_missing(tmp_path):
    logs = write_logs(tmp_path, {
        "bench-cifar": bench_log("cifar", {1: (5000, 4000), 128: (90000, 100000)}),
        "service-load": service_log(9000, 2500, 0.035),  # fast enough, but p99 35 ms
    })  # fmt: skip
    logs["bench-resnet18"] = tmp_path / "absent.log"  # the step timed out before its table
    lines = evaluate(logs)
    assert "NOT met (batch 1 1.25x, batch 128 0.90x)" in lines[0]
    assert lines[1].endswith(": no figures")
    assert "NOT met (3.60x" in lines[2] and "p99 35.0 ms" in lines[2]


def test_tables_are_read_by_their_header():
    text = "x\n| a | b |\n|---|---:|\n| 1 | 2 |\n| 3 | 4 |\ny\n| c |\n|---|\n"
    assert tables(text) == [[{"a": "1", "b": "2"}, {"a": "3", "b": "4"}]]
