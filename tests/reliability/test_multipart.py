"""RELIABILITY.md case 4: hostile multipart bodies fail fast with 400; other clients unaffected."""

from __future__ import annotations

import pytest

from tests.reliability.harness import Bystanders, assert_error, http, random_pngs

BOUNDARY = b"b0undary"
CONTENT_TYPE = "multipart/form-data; boundary=" + BOUNDARY.decode()


def part(name: bytes, data: bytes, extra_headers: bytes = b"") -> bytes:
    disposition = b'Content-Disposition: form-data; name="' + name + b'"; filename="x.png"\r\n'
    return b"--" + BOUNDARY + b"\r\n" + disposition + extra_headers + b"\r\n" + data + b"\r\n"


END = b"--" + BOUNDARY + b"--\r\n"
IMAGE = random_pngs(1, seed=40)[0]
HOSTILE = {
    "huge-preamble": b"A" * 4_000_000 + b"\r\n" + part(b"file", IMAGE) + END,
    "thousands-of-part-headers": part(b"file", IMAGE, b"X-Junk: 1\r\n" * 5000) + END,
    "one-huge-header": part(b"file", IMAGE, b"X-Junk: " + b"j" * 200_000 + b"\r\n") + END,
    "many-fields": b"".join(part(b"f%d" % i, b"v") for i in range(20_000)) + part(b"file", IMAGE)
    + END,
    "no-closing-boundary": part(b"file", IMAGE),
    "garbage-after-boundary": b"--" + BOUNDARY + b"\r\n\x00\x01\x02" * 1000,
}  # fmt: skip


@pytest.fixture(scope="module")
def bystanders(server):
    return Bystanders(server.url, count=8, seed=4)


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_multipart_gets_400_and_others_are_served(server, bystanders, name):
    """Case 4: each hostile body is refused with a JSON 400 while good requests go on."""
    body = HOSTILE[name]
    assert len(body) < 16 << 20  # under the body limit: the multipart parser must refuse it

    def hostile():
        return [
            http.post(server.url + "/predict", content=body, headers={"content-type": ct})
            for ct in (CONTENT_TYPE, CONTENT_TYPE + "; charset=utf-8")
        ]

    for response in bystanders.run(hostile):
        assert_error(response, 400, "malformed")


@pytest.mark.parametrize(
    "content_type",
    ["multipart/form-data", "multipart/form-data; boundary=", "multipart/form-data; boundary="
     + "x" * 5000],
    ids=["no-boundary", "empty-boundary", "huge-boundary"],
)  # fmt: skip
def test_bad_boundary_gets_400(server, content_type):
    """Case 4: a missing, empty or absurd boundary parameter."""
    response = http.post(
        server.url + "/predict", content=part(b"file", IMAGE) + END,
        headers={"content-type": content_type},
    )  # fmt: skip
    assert_error(response, 400, "malformed")


def test_too_many_files_are_refused(server):
    """Case 4: more file parts than allowed (64) is refused as a whole, nothing runs."""
    body = b"".join(part(b"file", IMAGE) for _ in range(65)) + END
    response = http.post(
        server.url + "/predict", content=body, headers={"content-type": CONTENT_TYPE}
    )
    assert_error(response, 413, "too_large")


def test_a_well_formed_upload_next_to_the_hostile_ones(server, bystanders):
    """Case 4, the good side: the same image as a multipart part answers as the raw image."""
    response = http.post(server.url + "/predict?raw=true", files={"file": bystanders.images[0]})
    assert response.status_code == 200, response.text
    assert response.json()["results"][0]["output"] == pytest.approx(
        list(bystanders.expected[0]), rel=1e-4, abs=1e-5
    )
