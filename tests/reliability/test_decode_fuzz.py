"""Fuzz target for ``Decoder.decode`` (bytes -> tensor), the code every request body goes through.

Mutated valid files (PNG, JPEG, GIF, BMP, WebP, APNG, .npy, JSON base64, multipart) and plain
random bytes: only the service's typed errors (``ServiceError``) may escape, a success is a
finite float32 batch of the model's shape, and memory stays bounded.
"""

from __future__ import annotations

import contextlib
import resource
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.decode import Decoder
from tests.reliability import payloads
from tests.reliability.corpus import CONTENT_TYPES, INPUT_SHAPE, SEEDS, check_decode, make_decoder
from tests.reliability.harness import REPO

# Any one decode may hold a capped image (25 MP as RGB float32 would be 300 MB: the cap is what
# keeps it far below); fuzz inputs are small, so 64 MB of Python/NumPy allocations is generous.
MAX_TRACED_BYTES = 64 << 20
MAX_RSS_GROWTH_BYTES = 256 << 20
EXAMPLES = 300


@st.composite
def mutated(draw) -> bytes:
    """A seed file with a few edits: byte flips, inserted runs, deletions, truncation, splices."""
    kind, data = draw(st.sampled_from(SEEDS))
    data = bytearray(data)
    for _ in range(draw(st.integers(1, 8))):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        edit = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "magic"]))
        if edit == "flip":
            data[at] = draw(st.integers(0, 255))
        elif edit == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        elif edit == "delete":
            del data[at : at + draw(st.integers(1, 64))]
        elif edit == "truncate":
            del data[at:]
        else:  # huge numbers where sizes and counts live
            data[at : at + 4] = draw(st.sampled_from([b"\xff\xff\xff\xff", b"\x7f\xff\xff\xff"]))
    content_type = draw(st.sampled_from([kind, kind, *CONTENT_TYPES]))
    return content_type, bytes(data)


@st.composite
def random_bodies(draw):
    return draw(st.sampled_from(CONTENT_TYPES)), draw(st.binary(max_size=4096))


@pytest.fixture(scope="module")
def decoder(model_dir) -> Decoder:
    return make_decoder(model_dir)


def decode_once(decoder: Decoder, content_type: str, body: bytes) -> None:
    """One decode checked by the oracle, with its traced allocations bounded."""
    tracemalloc.start()
    try:
        check_decode(decoder, content_type, body)
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert peak < MAX_TRACED_BYTES, f"{content_type}: {peak} bytes traced"


def test_seeds_decode(decoder):
    """The seed corpus itself is valid: every seed decodes."""
    for content_type, body in SEEDS:
        assert decoder.decode(content_type, body).shape[1:] == INPUT_SHAPE


@settings(
    max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck)
)
@given(case=st.one_of(mutated(), random_bodies()))
def test_only_typed_errors_escape(decoder, case):
    """Mutated and random bodies: ``ServiceError`` (4xx) or a well-formed batch, nothing else."""
    decode_once(decoder, *case)


def peak_rss_bytes(reset: bool = False) -> int:
    """This process's peak resident memory; ``reset`` starts a new peak (Linux ``clear_refs``)."""
    if reset:
        with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    with contextlib.suppress(OSError), open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def test_memory_stays_bounded_over_many_inputs(decoder):
    """Peak resident memory over thousands of hostile decodes (and three bombs) stays near the
    starting point."""
    rng = np.random.default_rng(21)
    rss_before = peak_rss_bytes(reset=True)
    for round_ in range(2000):
        kind, data = SEEDS[round_ % len(SEEDS)]
        data = bytearray(data)
        for _ in range(4):
            data[rng.integers(len(data))] = rng.integers(256)
        decode_once(decoder, kind, bytes(data))
    for bomb in (payloads.png_header_bomb(), payloads.gif_bomb(), payloads.png_bomb()):
        decode_once(decoder, "image/png", bomb)
    rss_after = peak_rss_bytes()
    assert rss_after - rss_before < MAX_RSS_GROWTH_BYTES


@pytest.mark.timeout(300)
def test_atheris_short_run(tmp_path):
    """Coverage-guided: 3,000 libFuzzer runs from the same seeds, where atheris is installed."""
    pytest.importorskip("atheris")
    command = [sys.executable, "-m", "tests.reliability.atheris_decode", "-runs=3000"]
    command += ["-max_len=16384", "-seed=1", f"-artifact_prefix={tmp_path}/"]
    run = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=280)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Done 3000 runs" in run.stderr
