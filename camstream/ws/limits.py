"""The per-connection limits a :class:`~camstream.ws.connection.Connection` is given."""

from __future__ import annotations

import dataclasses

__all__ = ["Limits"]


@dataclasses.dataclass(frozen=True)
class Limits:
    """What a connection may cost; built once by the server from its (validated) options.

    Attributes:
        send_timeout: Seconds a write may block before the watchdog sheds the connection.
        close_timeout: Seconds the closing handshake may take before the socket is shut down.
        message_rate: Frames a second a client may send on average (None: no limit).
        message_burst: Frames a client may send in a burst above ``message_rate``.
    """

    send_timeout: float = 5.0
    close_timeout: float = 1.0
    message_rate: float | None = None
    message_burst: float = 0.0
