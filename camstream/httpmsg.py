"""HTTP/1.1 pieces of the handshake: request headers, the parsed request, response heads."""

from __future__ import annotations

import http
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

__all__ = ["TOKEN", "HandshakeRejected", "Headers", "Request", "check_header_text", "http_head"]

TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
"""An HTTP token (RFC 9110 section 5.6.2): method and header names."""


class Headers(Mapping[str, str]):
    """Case-insensitive, read-only HTTP headers; repeated headers are joined with ``", "``."""

    def __init__(self, items: Sequence[tuple[str, str]] = ()) -> None:
        self._items = list(items)
        self._values: dict[str, list[str]] = {}
        for name, value in self._items:
            self._values.setdefault(name.lower(), []).append(value)

    def __getitem__(self, name: str) -> str:
        return ", ".join(self._values[name.lower()])

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._values

    def get_all(self, name: str) -> list[str]:
        """Return every value of ``name`` in request order (empty list if absent)."""
        return list(self._values.get(name.lower(), ()))

    def raw_items(self) -> list[tuple[str, str]]:
        """Return the headers as received: original spelling, order and repeats."""
        return list(self._items)

    def tokens(self, name: str) -> list[str]:
        """Return the comma-separated tokens of ``name``, stripped and lower-cased."""
        return [t.strip().lower() for t in self.get(name, "").split(",") if t.strip()]

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"


@dataclass
class Request:
    """The request line and headers of one incoming HTTP request (WebSocket or plain)."""

    method: str
    path: str  # as sent, without the query string, e.g. "/" or "/stream.mjpg"
    query: dict[str, str]  # parse_qs of the query string; for repeated names the last one wins
    headers: Headers
    remote_address: tuple[str, int]

    @property
    def origin(self) -> str | None:
        """The ``Origin`` header (browsers send it; Godot and Python clients usually do not)."""
        return self.headers.get("origin")


class HandshakeRejected(Exception):
    """Raised by :meth:`Application.authorize` to refuse a connection with an HTTP status.

    Args:
        status: HTTP status code of the refusal (4xx or 5xx), e.g. 401, 403 or 404.
        message: Short plain-text body; also logged at INFO.
        headers: Extra response headers, e.g. ``{"WWW-Authenticate": ...}``.
    """

    def __init__(self, status: int, message: str = "", headers: Mapping[str, str] | None = None):
        super().__init__(status, message)
        self.status = status if 400 <= status <= 599 else 403
        self.message = message
        self.headers = dict(headers or {})


def check_header_text(text: str) -> str:
    """``text``, refused if it would split a header line (response splitting)."""
    if "\r" in text or "\n" in text:
        raise ValueError(f"CR/LF in HTTP header text: {text!r}")
    return text


def http_head(status: int, headers: Mapping[str, str]) -> bytes:
    """An HTTP/1.1 status line and headers, ending with the blank line."""
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:
        phrase = "Status"
    lines = [f"HTTP/1.1 {status} {phrase}"]
    lines += [f"{check_header_text(k)}: {check_header_text(v)}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
