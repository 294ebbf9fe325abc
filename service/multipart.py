"""A bounded ``multipart/form-data`` parser over an already size-limited body.

Counts parts, fields and header lines as they stream past, so a hostile body (thousands of parts or
header lines) fails fast with a typed error instead of building large structures.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from service.errors import MalformedRequest, PayloadTooLarge

MAX_HEADER_BYTES = 8192


@dataclass(frozen=True)
class MultipartLimits:
    max_files: int
    max_fields: int
    max_headers: int


@dataclass
class _Part:
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    chunks: list[bytes] = field(default_factory=list)
    header_bytes: int = 0


class _Collector:
    """Parser callbacks that keep the parts named ``file_field`` and enforce the limits."""

    def __init__(self, file_field: str, limits: MultipartLimits):
        self.file_field = file_field.encode()
        self.limits = limits
        self.files: list[bytes] = []
        self.fields = 0
        self.ended = False
        self._part = _Part()
        self._name = b""
        self._value = b""

    def part_begin(self) -> None:
        self._part = _Part()

    def header_field(self, data: bytes, start: int, end: int) -> None:
        self._grow(end - start)
        self._name += data[start:end]

    def header_value(self, data: bytes, start: int, end: int) -> None:
        self._grow(end - start)
        self._value += data[start:end]

    def header_end(self) -> None:
        self._part.headers.append((self._name.lower(), self._value))
        self._name = self._value = b""
        if len(self._part.headers) > self.limits.max_headers:
            raise MalformedRequest(f"a multipart part has over {self.limits.max_headers} headers")

    def part_data(self, data: bytes, start: int, end: int) -> None:
        self._part.chunks.append(data[start:end])

    def part_end(self) -> None:
        disposition = dict(self._part.headers).get(b"content-disposition", b"")
        _, options = parse_options_header(disposition)
        if options.get(b"name") == self.file_field:
            self.files.append(b"".join(self._part.chunks))
            if len(self.files) > self.limits.max_files:
                raise PayloadTooLarge(f"more than {self.limits.max_files} files in one request")
        else:
            self.fields += 1
            if self.fields > self.limits.max_fields:
                raise MalformedRequest(f"more than {self.limits.max_fields} non-file fields")

    def end(self) -> None:
        self.ended = True

    def _grow(self, count: int) -> None:
        self._part.header_bytes += count
        if self._part.header_bytes > MAX_HEADER_BYTES:
            raise MalformedRequest(f"multipart part headers exceed {MAX_HEADER_BYTES} bytes")


def parse_files(body: bytes, content_type: str, file_field: str, limits: MultipartLimits):
    """Return the contents of every part named ``file_field``, in order."""
    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary or len(boundary) > 200:
        raise MalformedRequest("multipart/form-data needs a boundary parameter (1..200 characters)")
    c = _Collector(file_field, limits)
    callbacks = {
        "on_part_begin": c.part_begin,
        "on_part_data": c.part_data,
        "on_part_end": c.part_end,
        "on_header_field": c.header_field,
        "on_header_value": c.header_value,
        "on_header_end": c.header_end,
        "on_end": c.end,
    }
    parser = MultipartParser(boundary, callbacks)
    try:
        parser.write(body)
        parser.finalize()
    except MultipartParseError as exc:
        raise MalformedRequest(f"malformed multipart body: {exc}") from None
    if not c.ended:
        raise MalformedRequest("multipart body is truncated (no closing boundary)")
    return c.files
