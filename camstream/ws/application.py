"""What the server calls: the :class:`Application` protocol and a do-nothing base."""

from __future__ import annotations

from typing import Protocol

from .connection import Connection
from .exchange import HttpExchange
from .http import Request

__all__ = ["Application", "BaseApplication"]


class Application(Protocol):
    """What the server calls: every method below, nothing else (none is optional; subclass
    :class:`BaseApplication` for the defaults). Every callback runs in the connection's own
    handler thread, except :meth:`is_trusted_proxy` (the accepting thread)."""

    def authorize(self, request: Request) -> None:
        """Called before the 101; raise :class:`HandshakeRejected` to refuse."""

    def on_open(self, conn: Connection) -> None:
        """Called after the 101 was sent, before any message is read."""

    def on_text(self, conn: Connection, text: str) -> None:
        """Called for each complete TEXT message."""

    def on_binary(self, conn: Connection, data: bytes) -> None:
        """Called for each complete BINARY message."""

    def on_close(self, conn: Connection) -> None:
        """Called once for every connection that got on_open, after it left the registry."""

    def on_http(self, exchange: HttpExchange) -> None:
        """Called for a GET that is not a WebSocket upgrade, and for a HEAD or an OPTIONS."""

    def authenticated(self, request: Request) -> bool:
        """Whether ``request`` carries the server's credential (e.g. a valid token).

        Called once the request head is read, before anything else. Only such connections may
        use the server's ``reserved_connections``.
        """

    def is_trusted_proxy(self, address: str) -> bool:
        """Whether the TCP peer ``address`` is a reverse proxy that carries many clients.

        Called in the accepting thread for every socket (keep it cheap). Such a peer's
        connections are not counted against ``max_connections_per_address`` at accept; each
        counts against the client :meth:`client_address` names once its request is read.
        """

    def client_address(self, request: Request) -> str | None:
        """The client a trusted proxy's ``request`` carries (e.g. from ``X-Forwarded-For``), or
        None if it names none. Called only for requests from a trusted proxy."""


class BaseApplication:
    """An :class:`Application` whose callbacks do nothing: no credential, no trusted proxy.

    ``on_http`` answers ``/`` with 426 Upgrade Required (``Sec-WebSocket-Version: 13``) and any
    other path with 404.
    """

    def authorize(self, request: Request) -> None:
        pass

    def on_open(self, conn: Connection) -> None:
        pass

    def on_text(self, conn: Connection, text: str) -> None:
        pass

    def on_binary(self, conn: Connection, data: bytes) -> None:
        pass

    def on_close(self, conn: Connection) -> None:
        pass

    def authenticated(self, request: Request) -> bool:
        return False

    def is_trusted_proxy(self, address: str) -> bool:
        return False

    def client_address(self, request: Request) -> str | None:
        return None

    def on_http(self, exchange: HttpExchange) -> None:
        if exchange.request.path == "/":
            exchange.send_response(
                426,
                b"This is a WebSocket endpoint.\n",
                headers={"Upgrade": "websocket", "Sec-WebSocket-Version": "13"},
            )
        else:
            exchange.send_response(404, b"Not Found\n")
