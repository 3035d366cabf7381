"""What the transport calls: the Streamer's private adapter, and how a close is told in logs.

The transport (:mod:`camstream.ws`) calls an ``Application``; the :class:`~camstream.server.
Streamer` hands it a :class:`TransportCallbacks` instead of being one, so none of these
callbacks is part of its public surface.
"""

from __future__ import annotations

from typing import Callable

from .delivery.session import ClientSession
from .protocol import CloseCode
from .web.policy import AccessPolicy
from .ws import Connection, HandshakeRejected, HttpExchange, Request

__all__ = ["TransportCallbacks", "how_it_closed"]


class TransportCallbacks:
    """What the transport calls (its ``Application``): the Streamer's private adapter.

    Every callback runs in that connection's own handler thread. WebSocket upgrades are
    accepted where ``websocket_refusal(path)`` finds nothing to say (``/``, ``/ws`` and each
    camera's ``/NAME``, ``/NAME/ws``), else answered 404 with what it said; who may watch is
    decided after the 101, so a refused client learns why from the close code (the policy's
    refusal).
    """

    def __init__(
        self,
        policy: AccessPolicy,
        *,
        opened: Callable[[Connection], None],
        closed: Callable[[Connection], None],
        http: Callable[[HttpExchange], None],
        websocket_refusal: Callable[[str], str | None],
    ) -> None:
        self._policy = policy
        self._websocket_refusal = websocket_refusal
        self.on_open = opened
        self.on_close = closed
        self.on_http = http

    def authorize(self, request: Request) -> None:
        refusal = self._websocket_refusal(request.path)
        if refusal is not None:
            raise HandshakeRejected(404, refusal)

    def authenticated(self, request: Request) -> bool:
        """The request carries the valid token: it may use the places reserved for such."""
        return self._policy.authenticated(request)

    def is_trusted_proxy(self, address: str) -> bool:
        """A trusted proxy's connections count by their forwarded address, not the proxy's."""
        return self._policy.is_trusted_proxy(address)

    def client_address(self, request: Request) -> str | None:
        """The address a trusted proxy's connection counts against: the client it carries."""
        return self._policy.client_of(request).address

    def on_text(self, conn: Connection, text: str) -> None:
        session = conn.session
        if isinstance(session, ClientSession):
            session.handle_text(text)

    def on_binary(self, conn: Connection, data: bytes) -> None:
        conn.close(CloseCode.UNSUPPORTED_DATA, "binary messages are not accepted")


def how_it_closed(conn: Connection) -> str:
    """The close as the client saw it: the code we sent if we closed first, else its own."""
    if conn.sent_close_code is not None:
        return f"server closed with code {conn.sent_close_code}"
    if conn.close_code is not None:
        return f"client closed with code {conn.close_code}"
    return "connection lost, code 1006"
