"""The per-connection limits a :class:`~camstream.ws.connection.Connection` is given."""

from __future__ import annotations

import dataclasses

__all__ = ["FRAME_COST", "Limits"]

FRAME_COST = 64
"""Bytes a frame costs the byte budgets at the least, whatever its size: a flood of empty
frames (each a parse and a loop turn) is budgeted like one of small messages."""


@dataclasses.dataclass(frozen=True)
class Limits:
    """What a connection may cost; built once by the server from its (validated) options.

    Attributes:
        send_timeout: Seconds a write may block before the watchdog sheds the connection.
        close_timeout: Seconds the closing handshake may take before the socket is shut down.
        message_rate: Messages a second a client may send on average (None: no limit). A
            message costs one however many fragments it comes in; each ping and pong costs one
            on its own; Close costs nothing.
        message_burst: Messages a client may send in a burst above ``message_rate``.
        byte_rate: Bytes a second a client may send on average, frame headers included and
            each frame at least :data:`FRAME_COST` (None: no limit).
        byte_burst: Bytes a client may send in a burst above ``byte_rate``.
    """

    send_timeout: float = 5.0
    close_timeout: float = 1.0
    message_rate: float | None = None
    message_burst: float = 0.0
    byte_rate: float | None = None
    byte_burst: float = 0.0
