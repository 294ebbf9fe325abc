"""Classify image files with a running gemmserve, using only the Python standard library.

    python examples/classify.py --url http://127.0.0.1:8000 examples/digit-*.png
    python examples/classify.py --url http://127.0.0.1:8000 --batch examples/digit-*.png

Prints one line per image: the path, the top label and its score. Without --batch every image is
its own request (the service batches concurrent requests itself); with --batch all go in one
multipart request.
"""

from __future__ import annotations

import argparse
import json
import mimetypes
import sys
import urllib.error
import urllib.request
import uuid
from pathlib import Path


def post(url: str, body: bytes, content_type: str) -> dict:
    """POST `body` and return the decoded JSON answer; an HTTP error exits with its message."""
    request = urllib.request.Request(url, data=body, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.load(response)
    except urllib.error.HTTPError as error:
        sys.exit(f"{url}: HTTP {error.code}: {error.read().decode(errors='replace')}")


def content_type(path: Path) -> str:
    return mimetypes.guess_type(path.name)[0] or "application/octet-stream"


def multipart(paths: list[Path]) -> tuple[bytes, str]:
    """A multipart/form-data body with one `file` part per path, and its Content-Type."""
    boundary = uuid.uuid4().hex
    parts = []
    for path in paths:
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="{path.name}"\r\nContent-Type: {content_type(path)}\r\n\r\n'
        )
        parts.append(head.encode() + path.read_bytes() + b"\r\n")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def classify(base_url: str, paths: list[Path], batch: bool) -> list[dict]:
    """One /predict result per path, in order."""
    url = base_url.rstrip("/") + "/predict?top_k=1"
    if batch:
        return post(url, *multipart(paths))["results"]
    return [post(url, path.read_bytes(), content_type(path))["results"][0] for path in paths]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="+", type=Path)
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the service's base URL")
    parser.add_argument("--batch", action="store_true", help="send all images in one request")
    args = parser.parse_args()
    for path, result in zip(args.images, classify(args.url, args.images, args.batch), strict=True):
        top = result["predictions"][0]
        print(f"{path} {top['label']} {top['score']:.3f}")


if __name__ == "__main__":
    main()
