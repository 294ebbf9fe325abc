"""RELIABILITY.md case 11: ``.npy`` bodies that must never be unpickled or trusted."""

from __future__ import annotations

import io
import os
import pickle

import numpy as np
import pytest

from tests.reliability.harness import Bystanders, assert_error, http
from tests.reliability.payloads import npy

SHAPE = (3, 16, 16)


class _Tripwire:
    """Unpickling this creates a file: proof that something ran ``pickle.loads``."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def post_npy(url: str, body: bytes):
    return http.post(
        url + "/predict?raw=true", content=body, headers={"content-type": "application/x-npy"}
    )


def npy_header(descr: str, shape: tuple, fortran: bool = False) -> bytes:
    """A version 1.0 ``.npy`` header claiming ``descr`` and ``shape`` (no data)."""
    buffer = io.BytesIO()
    header = {"descr": descr, "fortran_order": fortran, "shape": shape}
    np.lib.format.write_array_header_1_0(buffer, header)
    return b"\x93NUMPY\x01\x00" + buffer.getvalue()[8:]


def random_tensor(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def test_object_dtype_is_refused_and_never_unpickled(server, tmp_path):
    """Case 11: an object array (pickle inside) gets 422 and its pickle never runs."""
    tripwire = tmp_path / "unpickled"
    array = np.empty(SHAPE, dtype=object)
    array[0, 0, 0] = _Tripwire(str(tripwire))
    body = npy(array)
    assert pickle.dumps(_Tripwire(str(tripwire)))[:1] == b"\x80"
    assert_error(post_npy(server.url, body), (400, 422))
    assert not tripwire.exists()
    assert not os.path.exists(tripwire)


def test_raw_pickle_is_refused(server, tmp_path):
    """Case 11: a bare pickle sent as .npy is not a .npy file (400), and never loaded."""
    tripwire = tmp_path / "unpickled"
    assert_error(post_npy(server.url, pickle.dumps(_Tripwire(str(tripwire)))), 400)
    assert not tripwire.exists()


@pytest.mark.parametrize(
    "array",
    [
        random_tensor(16, 16),
        random_tensor(1, 1, 3, 16, 16),
        random_tensor(3, 16, 17),
        random_tensor(2, 1, 16, 16),
        random_tensor(0, 3, 16, 16),
        random_tensor(65, 3, 16, 16),
        np.ones(SHAPE, np.int32),
        random_tensor(*SHAPE).astype(np.float64),
        np.ones(SHAPE, np.complex64),
        np.ones(SHAPE, "U1"),
        np.zeros(SHAPE, [("a", np.float32)]),
    ],
    ids=["rank2", "rank5", "width", "channels", "empty", "too-many", "int32", "float64",
         "complex", "unicode", "structured"],
)  # fmt: skip
def test_wrong_rank_shape_or_dtype_gets_422(server, array):
    """Case 11: anything but float32 (N, 3, 16, 16) or (3, 16, 16) with 1..64 images."""
    assert_error(post_npy(server.url, npy(array)), (400, 413, 422))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_gets_422(server, bad):
    """Case 11: non-finite values never reach the engine."""
    array = random_tensor(2, *SHAPE, seed=1)
    array[1, 2, 3, 4] = bad
    assert_error(post_npy(server.url, npy(array)), 422, "unprocessable")


@pytest.mark.parametrize(
    "body",
    [
        npy_header("<f4", (1_000_000_000, 3, 16, 16)) + b"\0" * 64,
        npy_header("<f4", (1, 3, 16, 16)) + b"\0" * 100,
        npy_header("<f4", (2**62, 2**62)),
        b"\x93NUMPY\x01\x00\xff\xff{'descr': '<f4'",
        b"\x93NUMPY\x09\x00" + b"\0" * 100,
        b"\x93NUMPY\x01\x00\x20\x00{'descr': __import__('os')}    \n",
    ],
    ids=["claims-huge", "short-data", "overflowing-shape", "truncated-header", "version",
         "code-in-header"],
)  # fmt: skip
def test_lying_or_broken_header_gets_400_without_allocating(server, body):
    """Case 11: the header's size claims are checked against the body before anything is made."""
    rss_before = server.rss_bytes()
    assert_error(post_npy(server.url, body), (400, 413, 422))
    assert server.rss_bytes() - rss_before < 20 << 20


def test_good_tensors_answer_alike_in_either_order(server):
    """Case 11, the good side: C and Fortran order of the same float32 batch answer alike."""
    batch = random_tensor(3, *SHAPE, seed=2)
    c_order = post_npy(server.url, npy(batch))
    fortran = post_npy(server.url, npy(np.asfortranarray(batch)))
    assert c_order.status_code == fortran.status_code == 200
    got = [r["output"] for r in fortran.json()["results"]]
    want = [r["output"] for r in c_order.json()["results"]]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_bad_tensors_next_to_good_requests(server):
    """Case 11 under load: refused tensors do not disturb concurrent image requests."""
    bystanders = Bystanders(server.url, count=8, seed=11)
    nan = random_tensor(*SHAPE, seed=3)
    nan[0, 0, 0] = np.nan
    bodies = [npy(nan), npy(np.ones(SHAPE, np.int64)), npy_header("<f4", (10**9, 3, 16, 16))]

    def hostile():
        return [post_npy(server.url, body) for body in bodies * 5]

    for response in bystanders.run(hostile):
        assert_error(response, (400, 422))
