"""HTTP endpoints on the WebSocket port (placeholder; the browser issue fills this in)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .transport import HttpExchange

if TYPE_CHECKING:
    from .server import Streamer

__all__ = ["HttpRoutes"]


class HttpRoutes:
    """Answers plain HTTP GETs that are not WebSocket upgrades."""

    def __init__(self, streamer: Streamer) -> None:
        self.streamer = streamer

    def handle(self, exchange: HttpExchange) -> None:
        """Answer one request (runs in that connection's handler thread)."""
        body = f"camstream: connect a WebSocket client to {self.streamer.url}\n".encode()
        status = 426 if exchange.request.path == "/" else 404
        exchange.send_response(status, body, headers={"Sec-WebSocket-Version": "13"})

    def stats(self) -> dict[str, Any]:
        """Counters of the HTTP endpoints, for ``Streamer.stats()``."""
        return {}
