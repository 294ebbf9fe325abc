"""Hand-written HTTP/1.1 over a socket: for requests no well-behaved client library will send."""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self):
        return json.loads(self.body)


def parse(data: bytes) -> RawResponse:
    """Parse the first response of ``data`` (status line, headers, body by Content-Length)."""
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", len(rest)))
    return RawResponse(status, headers, rest[:length])


def connect(port: int, timeout_s: float = 10.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
    sock.settimeout(timeout_s)
    return sock


def read_all(sock: socket.socket) -> bytes:
    """Read until the server closes the connection (or the socket's timeout passes)."""
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except (TimeoutError, ConnectionResetError):
        pass
    return b"".join(chunks)


def read_response(sock: socket.socket) -> bytes:
    """Read one complete response (headers and Content-Length body), or until the server closes."""
    data = b""
    while True:
        head, sep, rest = data.partition(b"\r\n\r\n")
        if sep:
            length = parse(data).headers.get("content-length")
            if length is not None and len(rest) >= int(length):
                return data
        try:
            chunk = sock.recv(65536)
        except (TimeoutError, ConnectionResetError):
            return data
        if not chunk:
            return data
        data += chunk


def closed_by_server(sock: socket.socket) -> bool:
    """True when the server closes the connection before the socket's timeout (any bytes it
    sends first, such as an error response, are read and dropped)."""
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return True


def exchange(port: int, request: bytes, half_close: bool = False, timeout_s: float = 10.0) -> bytes:
    """Send ``request`` as is, optionally close our sending side, return every byte received."""
    with connect(port, timeout_s) as sock:
        sock.sendall(request)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        return read_all(sock)


def stream_until_refused(
    port: int, head: bytes, chunk: bytes, max_bytes: int
) -> tuple[bytes, bool]:
    """Send ``head`` then ``chunk`` repeatedly (up to ``max_bytes``) until the server answers or
    stops reading. Returns (the response, whether the server then closed the connection)."""
    sent = 0
    with connect(port) as sock:
        sock.sendall(head)
        sock.settimeout(0.2)
        while sent < max_bytes:
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError, TimeoutError):
                break
            sent += len(chunk)
        sock.settimeout(10)
        response = read_response(sock)
        sock.settimeout(2)
        return response, closed_by_server(sock)
