"""The autotuner: timing and checking candidates, the cache file, the modes, the fallback."""

from __future__ import annotations

import importlib
import json
import logging
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import engine.autotune.cache as cache_module
from engine.autotune import Autotuner
from engine.backends import NumpyBackend
from engine.conv import ALGORITHMS, Epilogue
from engine.conv.im2col_gemm import Im2colGemm
from tests.engine.conv_cases import make_problem, make_spec, reference_nhwc
from tests.engine.reference import rel_error

ROOT = Path(__file__).resolve().parents[2]
measure_module = importlib.import_module("engine.autotune.measure")  # the package exports measure()
BACKEND = NumpyBackend()
SPEC = make_spec((2, 6, 9, 10, 7, 3, 3, (1, 1, 1, 1), (1, 1), (1, 1), 1), Epilogue("relu"))
OTHER = make_spec((1, 5, 8, 7, 6, 3, 3, (0, 1, 1, 0), (1, 1), (1, 1), 1))


def run(choice, spec):
    x, weight, bias = make_problem(spec)
    out = np.empty((spec.n, spec.out_h, spec.out_w, spec.k), np.float32)
    workspace = np.empty(type(choice.algorithm).workspace_elems(spec) + 1, np.float32)
    choice.algorithm(x, out, workspace)
    return rel_error(out, reference_nhwc(spec, x, weight, bias))


def choose(tuner, spec=SPEC):
    _, weight, bias = make_problem(spec)
    return tuner.choose(spec, weight, bias)


def test_tuned_winner_is_the_fastest_checked_candidate(tmp_path):
    tuner = Autotuner(BACKEND, tmp_path / "c.json")
    choice = choose(tuner)
    assert choice.source == "tuned"
    assert run(choice, SPEC) < 1e-4
    entry = tuner.entries[SPEC.key()]
    times = [entry["ms"]] + [r["ms"] for r in entry["runners_up"]]
    assert times == sorted(times) and all(t > 0 for t in times)
    names = {entry["winner"], *choice.runners_up}
    assert {"im2col_gemm", "winograd_f2x2_3x3", "winograd_f4x4_3x3"} <= names
    assert tuner.stats.misses == 1 and tuner.stats.tuning_seconds > 0


class Broken(Im2colGemm):
    name = "broken"

    def __call__(self, x, out, workspace):
        raise RuntimeError("kernel launch failed")


class Wrong(Im2colGemm):
    """Fast and wrong: would win every timing if its output were not checked."""

    name = "wrong"

    def __call__(self, x, out, workspace):
        out.fill(1.0)


def test_failing_and_wrong_candidates_score_inf(monkeypatch, caplog):
    monkeypatch.setitem(ALGORITHMS, "broken", Broken)
    monkeypatch.setitem(ALGORITHMS, "wrong", Wrong)
    tuner = Autotuner(BACKEND)
    with caplog.at_level(logging.WARNING, "engine.autotune"):
        choice = choose(tuner)
    assert choice.algorithm.name not in ("broken", "wrong")
    assert "broken" not in choice.runners_up and "wrong" not in choice.runners_up
    assert run(choice, SPEC) < 1e-4
    rejected = {r["name"]: r["reason"] for r in tuner.entries[SPEC.key()]["rejected"]}
    assert "kernel launch failed" in rejected["broken"]
    assert "relative error" in rejected["wrong"]
    timings = {t.name: t.ms for t in tuner.timings[SPEC.key()]}
    assert math.isinf(timings["broken"]) and math.isinf(timings["wrong"])
    assert "broken failed" in caplog.text


class FailsAfterWarmup(Im2colGemm):
    """Right in its two warm-up calls, then out of memory (as a device running short would be)."""

    name = "fails_after_warmup"

    def __call__(self, x, out, workspace):
        self.calls = getattr(self, "calls", 0) + 1
        if self.calls > 2:
            raise MemoryError("out of memory")
        super().__call__(x, out, workspace)


def test_candidate_failing_while_timed_scores_inf(monkeypatch):
    monkeypatch.setitem(ALGORITHMS, "fails_after_warmup", FailsAfterWarmup)
    monkeypatch.setattr(measure_module, "WARMUP_PRUNE_FACTOR", math.inf)  # always timed
    tuner = Autotuner(BACKEND)
    choice = choose(tuner)
    assert "fails_after_warmup" not in {choice.algorithm.name, *choice.runners_up}
    rejected = {r["name"]: r["reason"] for r in tuner.entries[SPEC.key()]["rejected"]}
    assert rejected["fails_after_warmup"] == "out of memory"


class SlowFirstCall(Im2colGemm):
    """im2col_gemm whose first call pays a one-off cost (a GPU kernel's compile)."""

    name = "slow_first_call"

    def __call__(self, x, out, workspace):
        if not getattr(self, "warmed", False):
            self.warmed = True
            time.sleep(0.2)
        super().__call__(x, out, workspace)


def test_a_slow_first_call_does_not_prune_a_candidate(monkeypatch):
    monkeypatch.setitem(ALGORITHMS, "slow_first_call", SlowFirstCall)
    tuner = Autotuner(BACKEND)
    choose(tuner)
    timings = {t.name: t.ms for t in tuner.timings[SPEC.key()]}
    # timed in rounds like im2col_gemm (same work), not scored with its 200 ms first call
    assert timings["slow_first_call"] < 100 and timings["im2col_gemm"] < 100


class StallsThroughWarmUp(Im2colGemm):
    """im2col_gemm whose first three calls stall (as if another process held the core through
    the warm-up and the retry), then run at its real speed."""

    name = "stalls_through_warm_up"

    def __call__(self, x, out, workspace):
        self.calls = getattr(self, "calls", 0) + 1
        if self.calls <= 3:
            time.sleep(0.2)
        super().__call__(x, out, workspace)


def test_a_candidate_stalled_through_its_warm_up_gets_a_second_chance(monkeypatch):
    monkeypatch.setitem(ALGORITHMS, "stalls_through_warm_up", StallsThroughWarmUp)
    # against the same work only: its second chance needs a run within twice the best
    pair = ["im2col_gemm", "stalls_through_warm_up"]
    monkeypatch.setattr("engine.autotune.candidates", lambda *args: pair)
    tuner = Autotuner(BACKEND)
    choose(tuner)
    timings = {t.name: t.ms for t in tuner.timings[SPEC.key()]}
    # pruned after two slow runs (the warm-up's second and the retry), timed after the rounds
    assert timings["stalls_through_warm_up"] < 100 and timings["im2col_gemm"] < 100


def test_runner_up_fallback_without_retuning():
    tuner = Autotuner(BACKEND)
    choice = choose(tuner)
    seen = [choice.algorithm.name]
    while (choice := tuner.runner_up(choice)) is not None:
        assert choice.source == "fallback"
        assert run(choice, SPEC) < 1e-3
        seen.append(choice.algorithm.name)
    assert len(seen) == len(set(seen)) >= 3
    assert tuner.stats.misses == 1 and tuner.stats.fallbacks == len(seen) - 1


def test_runner_up_respects_the_workspace_limit():
    tuner = Autotuner(BACKEND)
    choice = choose(tuner)
    assert tuner.runner_up(choice, max_workspace_elems=0) is None
    one_by_one = make_spec((2, 5, 6, 7, 4, 1, 1, (0, 0, 0, 0), (1, 1), (1, 1), 1))
    default = tuner.default(one_by_one, *make_problem(one_by_one)[1:])
    assert default.algorithm.name == "gemm_1x1"
    fallback = tuner.runner_up(default)
    assert fallback.algorithm.name == "im2col_gemm" and run(fallback, one_by_one) < 1e-4


def test_cache_round_trip_across_processes(tmp_path):
    path = tmp_path / "tuned.json"
    script = (
        "from engine.autotune import Autotuner; from engine.backends import NumpyBackend;"
        "from tests.engine.test_autotune import SPEC, OTHER, choose;"
        f"t = Autotuner(NumpyBackend(), {str(path)!r}); choose(t, SPEC); choose(t, OTHER); t.save()"
    )
    subprocess.run([sys.executable, "-c", script], cwd=ROOT, check=True, timeout=120)
    on_disk = json.loads(path.read_text())
    assert on_disk["header"]["device"] == BACKEND.fingerprint()
    tuner = Autotuner(BACKEND, path)
    for spec in (SPEC, OTHER):
        choice = choose(tuner, spec)
        assert choice.source == "cache"
        assert choice.algorithm.name == on_disk["entries"][spec.key()]["winner"]
        assert run(choice, spec) < 1e-3
    assert tuner.stats.hits == 2 and tuner.stats.tuning_seconds == 0
    assert tuner.info()["cache_status"] == "loaded"


def write_cache(path, header_change=None, entries=None) -> bytes:
    header = cache_module.make_header(BACKEND.fingerprint())
    header.update(header_change or {})
    winner = {"winner": "winograd_f2x2_3x3", "ms": 1.0, "runners_up": [], "rejected": []}
    entries = {SPEC.key(): winner} if entries is None else entries
    path.write_text(json.dumps({"header": header, "entries": entries}))
    return path.read_bytes()


@pytest.mark.parametrize(
    "change",
    [
        {"device": {"device": "cpu", "cpu": "another CPU"}},
        {"engine_version": "0.0.1"},
        {"kernel_hash": "0" * 64},
        {"schema": 99},
    ],
    ids=["device", "engine", "kernels", "schema"],
)
def test_foreign_header_is_ignored_and_never_overwritten(tmp_path, caplog, change):
    path = tmp_path / "c.json"
    before = write_cache(path, change)
    with caplog.at_level(logging.WARNING, "engine.autotune"):
        tuner = Autotuner(BACKEND, path)
    assert "another setup" in caplog.text and next(iter(change)) in caplog.text
    assert choose(tuner).source == "tuned"
    tuner.save()
    assert path.read_bytes() == before
    assert tuner.info()["cache_status"] == "foreign" and tuner.stats.saves == 0


@pytest.mark.parametrize(
    "text", ["{not json", '{"header": {"schema": 1}', "[]", "", b"\xff\xfe\x00 not UTF-8"]
)
def test_corrupt_file_is_a_warning_and_a_miss(tmp_path, caplog, text):
    path = tmp_path / "c.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with caplog.at_level(logging.WARNING, "engine.autotune"):
        tuner = Autotuner(BACKEND, path)
        choice = choose(tuner)
        tuner.save()
    assert "not a valid cache file" in caplog.text
    assert choice.source == "tuned" and run(choice, SPEC) < 1e-3
    assert path.read_bytes() == (text if isinstance(text, bytes) else text.encode())


def test_unusable_entry_is_retuned_and_replaced(tmp_path, caplog):
    path = tmp_path / "c.json"
    bad = {"winner": "no_such_algorithm", "ms": 1.0, "runners_up": [], "rejected": []}
    strided = make_spec((2, 6, 9, 10, 7, 3, 3, (1, 1, 1, 1), (2, 2), (1, 1), 1))
    wrong = {"winner": "winograd_f4x4_3x3", "ms": 1.0, "runners_up": [], "rejected": []}
    entries = {SPEC.key(): bad, OTHER.key(): {"winner": 3}, strided.key(): wrong, "x": "junk"}
    write_cache(path, entries=entries)
    with caplog.at_level(logging.WARNING, "engine.autotune"):
        tuner = Autotuner(BACKEND, path)
        assert choose(tuner).source == "tuned"
        assert choose(tuner, OTHER).source == "tuned"
        choice = choose(tuner, strided)  # Winograd cannot run a strided conv: never used
        assert choice.source == "tuned" and choice.algorithm.name != "winograd_f4x4_3x3"
    assert run(choice, strided) < 1e-4
    assert "ignored" in caplog.text
    tuner.save()
    entries = json.loads(path.read_text())["entries"]
    assert entries[SPEC.key()]["winner"] in ALGORITHMS


def test_read_only_directory_keeps_results_in_memory(tmp_path, monkeypatch, caplog):
    directory = tmp_path / "ro"
    directory.mkdir()
    if os.geteuid() == 0:  # root writes anywhere: refuse the temp file the way a read-only dir does

        def refuse(*args, **kwargs):
            raise PermissionError(13, "Permission denied", str(directory))

        monkeypatch.setattr(cache_module.tempfile, "mkstemp", refuse)
    else:
        directory.chmod(0o500)
    tuner = Autotuner(BACKEND, directory / "c.json")
    first = choose(tuner)
    with caplog.at_level(logging.WARNING, "engine.autotune"):
        tuner.save()
    directory.chmod(0o700)
    assert "kept in memory" in caplog.text
    assert list(directory.iterdir()) == []
    again = choose(tuner)
    assert again.algorithm.name == first.algorithm.name and again.source == "tuned"
    assert tuner.stats.misses == 1 and tuner.stats.hits == 1


def test_atomic_write_leaves_the_old_file_when_interrupted(tmp_path, monkeypatch):
    path = tmp_path / "c.json"
    tuner = Autotuner(BACKEND, path)
    choose(tuner)
    tuner.save()
    before = path.read_bytes()
    choose(tuner, OTHER)

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(cache_module.os, "replace", crash)
    tuner.save()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.json"]  # no temp file left
    monkeypatch.undo()
    tuner.save()
    assert set(json.loads(path.read_text())["entries"]) == {SPEC.key(), OTHER.key()}


def test_two_writers_merge(tmp_path):
    path = tmp_path / "c.json"
    one, two = Autotuner(BACKEND, path), Autotuner(BACKEND, path)
    choose(one, SPEC)
    choose(two, OTHER)
    one.save()
    two.save()
    assert set(json.loads(path.read_text())["entries"]) == {SPEC.key(), OTHER.key()}


def test_mode_off_uses_defaults_and_no_file(tmp_path):
    tuner = Autotuner(BACKEND, tmp_path / "c.json", mode="off")
    choice = choose(tuner)
    assert choice.source == "default" and choice.algorithm.name == "im2col_gemm"
    tuner.save()
    assert not (tmp_path / "c.json").exists()


def test_mode_readonly_hits_or_defaults_and_never_writes(tmp_path):
    path = tmp_path / "c.json"
    before = write_cache(path)
    tuner = Autotuner(BACKEND, path, mode="readonly")
    hit = choose(tuner)
    assert (hit.source, hit.algorithm.name) == ("cache", "winograd_f2x2_3x3")
    assert choose(tuner, OTHER).source == "default"
    tuner.save()
    assert path.read_bytes() == before
    assert tuner.stats.tuning_seconds == 0
    assert (
        Autotuner(BACKEND, tmp_path / "absent.json", mode="readonly")
        .choose(OTHER, *make_problem(OTHER)[1:])
        .source
        == "default"
    )
    assert not (tmp_path / "absent.json").exists()


def test_mode_tune_missing_hits_then_tunes_and_saves(tmp_path):
    path = tmp_path / "c.json"
    write_cache(path)
    tuner = Autotuner(BACKEND, path)
    assert choose(tuner).source == "cache"
    assert choose(tuner, OTHER).source == "tuned"
    tuner.save()
    entries = json.loads(path.read_text())["entries"]
    assert entries[SPEC.key()]["winner"] == "winograd_f2x2_3x3"
    assert OTHER.key() in entries


def test_mode_force_retunes_everything(tmp_path):
    path = tmp_path / "c.json"
    write_cache(path, entries={SPEC.key(): {"winner": "im2col_gemm", "ms": 1e9, "runners_up": []}})
    tuner = Autotuner(BACKEND, path, mode="force")
    assert choose(tuner).source == "tuned"
    assert choose(tuner).source == "tuned"  # the same spec again: this run's result, no retune
    assert tuner.stats.misses == 1
    tuner.save()
    assert json.loads(path.read_text())["entries"][SPEC.key()]["ms"] < 1e9


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="autotune mode"):
        Autotuner(BACKEND, mode="sometimes")


def test_tf32_is_never_offered_on_the_cpu():
    tuner = Autotuner(BACKEND, allow_tf32=True)
    choice = choose(tuner)
    assert "im2col_gemm_tf32" not in {choice.algorithm.name, *choice.runners_up}
    assert tuner.key(SPEC) == SPEC.key()


def test_save_only_on_change(tmp_path, monkeypatch):
    path = tmp_path / "c.json"
    tuner = Autotuner(BACKEND, path)
    choose(tuner)
    tuner.save()
    writes = []
    monkeypatch.setattr(cache_module, "atomic_write", lambda *a: writes.append(a))
    reloaded = Autotuner(BACKEND, path)
    choose(reloaded)
    reloaded.save()
    assert writes == []


def test_default_kept_unless_a_candidate_clearly_beats_it():
    from engine.autotune import MIN_GAIN_OVER_DEFAULT, prefer_default
    from engine.autotune.measure import Timing

    near = [
        Timing("winograd_f4x4_3x3", 1.0),
        Timing("im2col_gemm", 1.0 * MIN_GAIN_OVER_DEFAULT - 0.01),
    ]
    assert prefer_default(near, "im2col_gemm")
    assert [t.name for t in near] == ["im2col_gemm", "winograd_f4x4_3x3"]
    clear = [Timing("winograd_f4x4_3x3", 1.0), Timing("im2col_gemm", 1.5)]
    assert not prefer_default(clear, "im2col_gemm")
    assert clear[0].name == "winograd_f4x4_3x3"
    missing = [Timing("winograd_f4x4_3x3", 1.0)]  # the default was rejected
    assert not prefer_default(missing, "im2col_gemm")


@pytest.mark.parametrize(
    ("text", "expected"),
    [("512K\n", 512 << 10), ("1M", 1 << 20), ("2097152", 2 << 20), ("", None), ("0K", None),
     ("lots", None)],
)  # fmt: skip
def test_l2_size_read_from_sysfs_text(tmp_path, text, expected):
    from engine.autotune.measure import DEFAULT_L2_BYTES, l2_bytes

    path = tmp_path / "size"
    path.write_text(text)
    assert l2_bytes(str(path)) == (expected or DEFAULT_L2_BYTES)
    assert l2_bytes(str(tmp_path / "absent")) == DEFAULT_L2_BYTES


def test_cpu_timing_starts_from_evicted_caches():
    """Every timed CPU run is preceded by writing twice the L2 size on every core."""
    from engine.autotune.measure import CacheEvictor, Trial, l2_bytes
    from engine.backends import resolve_backend
    from engine.conv import ALGORITHMS, ConvSpec

    spec = ConvSpec(n=1, c=4, h=6, w=6, k=4, r=3, s=3, pads=(1, 1, 1, 1))
    trial = Trial(resolve_backend("cpu"), spec)
    assert isinstance(trial.evict, CacheEvictor)
    assert all(part.nbytes >= 2 * l2_bytes() for part in trial.evict.parts)
    before = [part[0] for part in trial.evict.parts]
    weight = np.random.default_rng(1).standard_normal((4, 4, 3, 3)).astype(np.float32)
    trial.run(ALGORITHMS["im2col_gemm"](spec, weight, None, trial.backend))
    assert [part[0] for part in trial.evict.parts] == [b + 1 for b in before]
