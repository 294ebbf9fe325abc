"""RELIABILITY.md cases 1, 2, 3 and 5: body size, Content-Length, Content-Type, base64."""

from __future__ import annotations

import base64
import json

import pytest

from tests.reliability import rawhttp
from tests.reliability.harness import Bystanders, assert_error, http, metric_samples, random_pngs

LIMIT = 256 * 1024
HEAD = b"POST /predict HTTP/1.1\r\nHost: test\r\nContent-Type: image/png\r\n"


@pytest.fixture(scope="module")
def server(server_factory):
    server = server_factory("--max-body-bytes", str(LIMIT))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def bystanders(server):
    return Bystanders(server.url, seed=1)


def test_declared_body_over_limit_gets_413_before_reading(server, bystanders):
    """Case 1 (declared): a Content-Length above the limit is refused before the body is read."""
    request = HEAD + f"Content-Length: {LIMIT * 400}\r\n\r\n".encode() + b"x" * 1000

    def hostile():
        return [rawhttp.parse(rawhttp.exchange(server.port, request)) for _ in range(5)]

    for response in bystanders.run(hostile):
        assert response.status == 413
        assert response.json()["error"]["code"] == "too_large"
        assert response.headers["connection"] == "close"


def test_streamed_body_over_limit_gets_413_and_memory_stays_flat(server, bystanders):
    """Case 1 (streamed): a chunked body is cut off at the limit (413, connection closed so the
    rest is not read); 4 x 16 MB offered, RSS flat."""
    head = HEAD + b"Transfer-Encoding: chunked\r\n\r\n"
    chunk = b"10000\r\n" + b"\x89" * 0x10000 + b"\r\n"
    rss_before = server.rss_bytes()

    def hostile():
        return [rawhttp.stream_until_refused(server.port, head, chunk, 16 << 20) for _ in range(4)]

    for answer, closed in bystanders.run(hostile):
        response = rawhttp.parse(answer)
        assert response.status == 413, answer[:300]
        assert response.json()["error"]["code"] == "too_large"
        assert closed, "the server kept reading a body it had refused"
    # Up to 64 MB offered in all; holding even one body would show as 16 MB.
    assert server.rss_bytes() - rss_before < 12 << 20


def test_too_large_body_gets_413_from_a_standard_client(server):
    """Case 1: the plain path most clients take (httpx sets Content-Length itself)."""
    response = http.post(
        server.url + "/predict",
        content=b"\x89PNG" + b"\0" * (LIMIT + 1),
        headers={"content-type": "image/png"},
    )
    assert_error(response, 413, "too_large")


@pytest.mark.parametrize(
    "length",
    [b"-5", b"12abc", b"0x10", b"1e3", b" ", b"99999999999999999999999999"],
    ids=["negative", "suffix", "hex", "exponent", "blank", "huge"],
)
def test_malformed_content_length_gets_400_or_413(server, length):
    """Case 2: a Content-Length that is not a plain number is refused without reading a body."""
    request = HEAD + b"Content-Length: " + length + b"\r\n\r\nabc"
    response = rawhttp.parse(rawhttp.exchange(server.port, request))
    # A number too large for the parser is its 400; one it can read is our 413.
    assert response.status in ((400, 413) if length.isdigit() else (400,)), response


@pytest.mark.parametrize(
    "headers",
    [
        b"Content-Length: 3\r\nContent-Length: 5\r\n",
        b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n",
    ],
    ids=["two-lengths", "length-and-chunked"],
)
def test_ambiguous_framing_gets_400(server, headers):
    """Case 2: two framings of one body (request smuggling) are refused."""
    request = HEAD + headers + b"\r\n3\r\nabc\r\n0\r\n\r\n"
    assert rawhttp.parse(rawhttp.exchange(server.port, request)).status == 400


def test_content_length_shorter_than_body_leaves_the_rest_refused(server):
    """Case 2: bytes beyond the declared length are parsed as a next request, which is junk: 400."""
    image = random_pngs(1, seed=5)[0]
    request = HEAD + f"Content-Length: {len(image)}\r\n\r\n".encode() + image + b"JUNK\r\n\r\n"
    answer = rawhttp.exchange(server.port, request)
    # The parser may refuse the junk before the first answer is written: never a second 200.
    assert b"HTTP/1.1 400" in answer, answer[:300]
    assert answer.count(b"HTTP/1.1 200") <= 1


def test_content_length_longer_than_body_is_not_a_server_error(server):
    """Case 2: a client that promises more than it sends and hangs up costs no 500."""
    request = HEAD + b"Content-Length: 100000\r\n\r\n\x89PNG"
    for _ in range(3):
        assert rawhttp.exchange(server.port, request, half_close=True) == b""
    statuses = {dict(k).get("status") for k in metric_samples(server.url, _COUNT)}
    assert "500" not in statuses
    assert "Traceback" not in server.log()


_COUNT = "gemmserve_request_duration_seconds_count"


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/xml", "image/tiff", "image/svg+xml", "", "a/b/c"]
)
def test_wrong_content_type_gets_415(server, content_type):
    """Case 3: a media type outside the accepted list."""
    image = random_pngs(1, seed=2)[0]
    response = http.post(
        server.url + "/predict", content=image, headers={"content-type": content_type}
    )
    assert_error(response, 415, "unsupported_media_type")


def test_multipart_without_file_part_gets_422(server, bystanders):
    """Case 3: a form with fields but no ``file`` part."""

    def hostile():
        return http.post(server.url + "/predict", data={"name": "x"}, files={"other": b"abc"})

    assert_error(bystanders.run(hostile), 422, "unprocessable")


@pytest.mark.parametrize(
    "text", ["not base64!", "QUJD\x00", "QUJ", "QU=JD", "////====", "é"], ids=repr
)
def test_invalid_base64_gets_400(server, text):
    """Case 5: strict base64 decoding; bad padding, bad characters and non-ASCII are 400."""
    response = http.post(server.url + "/predict", json={"instances": [{"b64": text}]})
    assert_error(response, 400)


def test_base64_over_the_limit_gets_413_before_decoding(server, bystanders):
    """Case 5: a base64 image longer than the body limit is refused before any decoding."""
    text = base64.b64encode(b"\x89PNG" + b"\0" * LIMIT).decode()
    body = json.dumps({"instances": [{"b64": text}]}).encode()

    def hostile():
        return http.post(
            server.url + "/predict", content=body, headers={"content-type": "application/json"}
        )

    assert_error(bystanders.run(hostile), 413, "too_large")


def test_base64_of_a_valid_image_is_answered(server, bystanders):
    """Case 5, the good side: the same image as base64 JSON and as a raw body answer alike."""
    text = base64.b64encode(bystanders.images[0]).decode()
    response = http.post(server.url + "/predict?raw=true", json={"instances": [{"b64": text}]})
    assert response.status_code == 200
    output = response.json()["results"][0]["output"]
    assert output == pytest.approx(list(bystanders.expected[0]), rel=1e-4, abs=1e-5)
