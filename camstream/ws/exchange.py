"""A plain (non-upgrade) HTTP request and its response, on the connection's link."""

from __future__ import annotations

from collections.abc import Mapping

from .http import Request, http_head
from .link import Link

__all__ = ["HttpExchange"]


class HttpExchange:
    """A plain (non-upgrade) HTTP GET or HEAD handed to :meth:`Application.on_http`.

    Respond with :meth:`send_response`, or with :meth:`start_stream` followed by any number of
    :meth:`write` calls (multipart MJPEG). Every response carries ``Connection: close``; the
    transport closes the socket when ``on_http`` returns. Writes are bounded by ``send_timeout``.
    For a HEAD request (:attr:`head_only`) only the status line and headers go out: bodies and
    :meth:`write` data are dropped, so a route answers HEAD by doing what it does for GET (a
    streaming route should return right after :meth:`start_stream`).
    """

    def __init__(self, link: Link, request: Request) -> None:
        self.request = request
        self.head_only = request.method == "HEAD"
        self._link = link
        self.started = False

    @property
    def link(self) -> Link:
        """The connection's link (its socket, for adaptive delivery's link estimate)."""
        return self._link

    def send_response(
        self,
        status: int,
        body: bytes = b"",
        content_type: str = "text/plain; charset=utf-8",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Send a complete response with ``Content-Length`` and ``Connection: close``.

        Raises:
            RuntimeError: a response was already started.
            ConnectionClosedError: the write failed or timed out.
        """
        head = {
            "Content-Type": content_type,
            "Content-Length": str(len(body)),
            "Connection": "close",
        }
        head.update(headers or {})
        self._start(status, head)
        self.write(body)

    def start_stream(self, status: int, headers: Mapping[str, str]) -> None:
        """Send the status line and ``headers`` (plus ``Connection: close``), no Content-Length."""
        self._start(status, {**headers, "Connection": "close"})

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Write ``data`` completely.

        Raises:
            ConnectionClosedError: the client went away, or the write blocked > send_timeout.
        """
        if not self.started:
            raise RuntimeError("write() before send_response()/start_stream()")
        if data and not self.head_only:
            self._link.send(data)

    def try_write(self, *chunks: bytes | memoryview) -> int | None:
        """Write ``chunks`` (one piece of the stream, e.g. a multipart part) without blocking,
        if the connection is idle (see :meth:`~camstream.ws.link.Link.try_send`: what the
        kernel does not take now is written first by the next :meth:`write` or :meth:`flush`).

        Returns:
            None if nothing was written (busy, a rest pending, not started, or a HEAD); else
            the bytes the link still holds (0: all written).
        """
        if not self.started or self.head_only:
            return None
        return self._link.try_send(*chunks)

    @property
    def pending(self) -> int:
        """Bytes :meth:`try_write` left unwritten (0: none)."""
        return self._link.pending

    def flush(self) -> None:
        """Write what :meth:`try_write` left, if anything (blocking, bounded by
        ``send_timeout``).

        Raises:
            ConnectionClosedError: the client went away, or the write blocked > send_timeout.
        """
        self._link.flush()

    def peer_closed(self) -> bool:
        """Whether the client is gone: its connection reset (:meth:`.Link.peer_closed`)."""
        return self._link.peer_closed()

    def unsent_bytes(self) -> int | None:
        """See :meth:`camstream.ws.connection.Connection.unsent_bytes`."""
        return self._link.unsent_bytes()

    def _start(self, status: int, headers: Mapping[str, str]) -> None:
        if self.started:
            raise RuntimeError("the response was already started")
        head = http_head(status, headers)
        self.started = True
        self._link.send(head)
