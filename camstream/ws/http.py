"""HTTP/1.1 pieces of the handshake without I/O: request parsing, headers, response heads.

:class:`RequestParser` is fed the request's lines (read by :mod:`camstream.ws.handler`) and
checks them as RFC 9112 asks; :func:`check_upgrade` validates a WebSocket upgrade request.
"""

from __future__ import annotations

import base64
import http
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

__all__ = [
    "TOKEN",
    "HandshakeRejected",
    "Headers",
    "HttpError",
    "Request",
    "RequestParser",
    "check_header_text",
    "check_upgrade",
    "http_head",
]

TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
"""An HTTP token (RFC 9110 section 5.6.2): method and header names."""
_CTL_IN_TARGET = re.compile(r"[\x00-\x20\x7f]")  # no control character or space in a target
_BAD_IN_VALUE = re.compile(r"[\x00\r\n]")  # RFC 9110 5.5: a field value never has CR, LF, NUL


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


class HttpError(Exception):
    """Refuse the request with ``status`` (a malformed or unsupported request)."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, dict(headers or {})


_METHODS = ("GET", "HEAD", "OPTIONS")  # OPTIONS: CORS preflights, answered by the application
_HOST = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~%!$&'()*+;=]+)(:[0-9]{0,5})?")
"""A ``Host`` value (RFC 9110 section 7.2: uri-host [":" port]); no comma, so two joined values
(``a, b``) are refused, as are spaces and userinfo."""
_ABSOLUTE_SCHEMES = ("http", "https", "ws", "wss")


def _origin_form(
    target: str, items: list[tuple[str, str]], host_required: bool = True
) -> tuple[str, list[tuple[str, str]]]:
    """Check the request target and the Host header (RFC 9112 section 3.2).

    Returns the target as a path (origin-form) and the header list. An absolute-form target
    (``http://host:port/path``, as sent to proxies) is accepted: its authority replaces the
    ``Host`` header, as RFC 9112 section 3.2.2 requires, so every Host rule applies to it.

    Raises:
        HttpError: 400 for no ``Host`` (when ``host_required``: HTTP/1.1), several, an empty or
            malformed one, or a target that is neither a path nor an absolute http(s)/ws(s) URL.
    """
    hosts = [value for name, value in items if name.lower() == "host"]
    if not hosts and host_required:
        raise HttpError(400, "missing Host header")
    if len(hosts) > 1:
        raise HttpError(400, "more than one Host header")
    if hosts and not _HOST.fullmatch(hosts[0]):
        raise HttpError(400, "invalid Host header" if hosts[0] else "empty Host header")
    if target.startswith("/"):
        return target, items
    try:
        url = urlsplit(target)
    except ValueError:  # "http://[::1/"
        raise HttpError(400, "malformed request target") from None
    if url.scheme.lower() not in _ABSOLUTE_SCHEMES or not target.lower().startswith(
        url.scheme.lower() + "://"
    ):
        raise HttpError(400, "request target must be a path or an absolute http:// URL")
    if not _HOST.fullmatch(url.netloc):  # also refuses userinfo ("user@host")
        raise HttpError(400, "invalid authority in the request target")
    items = [(n, v) for n, v in items if n.lower() != "host"] + [("Host", url.netloc)]
    return (url.path or "/") + ("?" + url.query if url.query else ""), items


class RequestParser:
    """Parses one request head fed line by line (without the CRLF), as RFC 9112 asks.

    Feed the request line to :meth:`feed_request_line`, then each header line to
    :meth:`feed_header_line` until it returns True (the empty line), then call :meth:`request`.

    Args:
        max_headers: More header lines than this are refused with 431.
    """

    def __init__(self, max_headers: int) -> None:
        self.max_headers = max_headers
        self.method = "GET"  # of the request being answered: no body in answers to HEAD
        self._target = self._version = ""
        self._items: list[tuple[str, str]] = []

    def feed_request_line(self, line: str) -> None:
        """Take the request line.

        Raises:
            HttpError: 400 for a malformed request line, or a control character in the target.
        """
        parts = line.split(" ")
        if len(parts) != 3 or not TOKEN.fullmatch(parts[0]) or not parts[2].startswith("HTTP/"):
            raise HttpError(400, "malformed request line")
        if _CTL_IN_TARGET.search(parts[1]):  # a bare CR or ESC: a forged log line in the making
            raise HttpError(400, "control character in the request target")
        self.method, self._target, self._version = parts

    def feed_header_line(self, line: str) -> bool:
        """Take one header line; True for the empty line that ends the head.

        Raises:
            HttpError: 431 for too many header lines, 400 for a malformed one.
        """
        if not line:
            return True
        if len(self._items) >= self.max_headers:
            raise HttpError(431, "too many header lines")
        name, sep, value = line.partition(":")
        if not sep or not TOKEN.fullmatch(name) or _BAD_IN_VALUE.search(value):
            raise HttpError(400, "malformed header line")
        self._items.append((name, value.strip(" \t")))
        return False

    def request(self, remote_address: tuple[str, int]) -> Request:
        """The parsed request, once the head is complete.

        HTTP/1.0 is accepted for plain requests (health checkers such as HAProxy's ``option
        httpchk`` send them, often without ``Host``); a WebSocket upgrade needs HTTP/1.1.

        Raises:
            HttpError: 505 for a version other than HTTP/1.1 and 1.0 (or an upgrade in 1.0), 405
                for a method other than GET, HEAD and OPTIONS, 400 for a bad target or Host.
        """
        http10 = self._version == "HTTP/1.0"
        if self._version != "HTTP/1.1" and not (
            http10 and not any(name.lower() == "upgrade" for name, _ in self._items)
        ):
            raise HttpError(505, "HTTP/1.1 required")
        if self.method not in _METHODS:
            raise HttpError(405, "only GET and HEAD are supported", {"Allow": "GET, HEAD"})
        target, items = _origin_form(self._target, self._items, host_required=not http10)
        path, _, query = target.partition("#")[0].partition("?")
        return Request(
            method=self.method,
            path=path,
            query={k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()},
            headers=Headers(items),
            remote_address=remote_address,
        )


def check_upgrade(request: Request, subprotocols: Sequence[str]) -> tuple[str, str | None]:
    """Validate a WebSocket upgrade request (RFC 6455 section 4.2.1).

    Returns:
        The ``Sec-WebSocket-Key`` and the first offered subprotocol in ``subprotocols`` (or None).

    Raises:
        HttpError: 400 without ``Connection: Upgrade`` or with a bad key, 426 for a version
            other than 13.
    """
    headers = request.headers
    if "upgrade" not in headers.tokens("connection"):
        raise HttpError(400, "missing 'Connection: Upgrade'")
    if headers.get("sec-websocket-version", "").strip() != "13":
        raise HttpError(426, "unsupported WebSocket version", {"Sec-WebSocket-Version": "13"})
    key = headers.get("sec-websocket-key", "").strip()
    try:
        valid = len(base64.b64decode(key, validate=True)) == 16
    except ValueError:
        valid = False
    if not valid:
        raise HttpError(400, "invalid Sec-WebSocket-Key")
    offered = [p.strip() for p in headers.get("sec-websocket-protocol", "").split(",")]
    chosen = next((p for p in offered if p and p in subprotocols), None)
    return key, chosen
