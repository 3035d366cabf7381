"""What the server calls: the :class:`Application` protocol and a do-nothing base."""

from __future__ import annotations

from typing import Protocol

from .connection import Connection
from .exchange import HttpExchange
from .http import Request

__all__ = ["Application", "BaseApplication"]


class Application(Protocol):
    """What the server calls. Every callback runs in the connection's own handler thread."""

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
        use the server's ``reserved_connections``. Optional: a missing method means False.
        """


class BaseApplication:
    """An :class:`Application` whose callbacks do nothing.

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

    def on_http(self, exchange: HttpExchange) -> None:
        if exchange.request.path == "/":
            exchange.send_response(
                426,
                b"This is a WebSocket endpoint.\n",
                headers={"Upgrade": "websocket", "Sec-WebSocket-Version": "13"},
            )
        else:
            exchange.send_response(404, b"Not Found\n")
