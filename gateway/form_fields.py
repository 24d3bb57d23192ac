"""The small text fields of the upload form (e.g. `callback_url`), read as the body streams past.

The upload parser (uploads.py) keeps only the `file` field; this one reads the same chunks on the side and
keeps named text fields, each at most `max_chars`. Malformed bodies are the upload parser's to report.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from python_multipart import MultipartParser
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import parse_options_header

from gateway.errors import BadRequestField


class FormFields:
    def __init__(self, content_type: str | None, names: tuple[str, ...], max_chars: int = 2048) -> None:
        self.names = {n.encode() for n in names}
        self.max_chars = max_chars
        self.values: dict[str, str] = {}
        self.too_long: set[str] = set()
        self._current: bytes | None = None
        self._buffer = bytearray()
        self._header_name = b""
        self._header_value = b""
        kind, options = parse_options_header(content_type)
        self._parser = None
        if kind == b"multipart/form-data" and options.get(b"boundary"):
            try:
                self._parser = self._make_parser(options[b"boundary"])
            except (ValueError, TypeError):  # an unusable boundary: the upload parser answers 400
                self._parser = None

    def _make_parser(self, boundary: bytes) -> MultipartParser:
        return MultipartParser(boundary, {
            "on_part_begin": self._part_begin,
            "on_header_field": lambda d, s, e: self._add("_header_name", d[s:e]),
            "on_header_value": lambda d, s, e: self._add("_header_value", d[s:e]),
            "on_header_end": self._header_end,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
        })

    def _add(self, attr: str, data: bytes) -> None:
        setattr(self, attr, getattr(self, attr) + data)

    def _part_begin(self) -> None:
        self._current = None
        self._buffer.clear()

    def _header_end(self) -> None:
        if self._header_name.lower() == b"content-disposition":
            _, options = parse_options_header(self._header_value)
            name = options.get(b"name")
            if name in self.names and b"filename" not in options:
                self._current = name
        self._header_name = self._header_value = b""

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._current is not None and len(self._buffer) <= self.max_chars * 4:
            self._buffer += data[start:end]

    def _part_end(self) -> None:
        if self._current is None:
            return
        name = self._current.decode()
        text = self._buffer.decode("utf-8", errors="replace").strip()
        if len(text) > self.max_chars:
            self.too_long.add(name)
        elif name not in self.values:
            self.values[name] = text
        self._current = None

    async def tee(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        async for chunk in chunks:
            if self._parser is not None:
                try:
                    self._parser.write(chunk)
                except MultipartParseError:
                    self._parser = None  # the upload parser says what is wrong with the body
            yield chunk

    def get(self, name: str) -> str | None:
        if name in self.too_long:
            raise BadRequestField(f"the form field {name!r} is longer than {self.max_chars} characters")
        return self.values.get(name) or None
