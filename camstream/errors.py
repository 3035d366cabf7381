"""Exceptions raised by camstream.

Every exception camstream raises on purpose derives from :class:`CamstreamError`; some also
derive from the builtin a caller would naturally catch (``ValueError``, ``OSError``).
"""

from __future__ import annotations

__all__ = [
    "CamstreamError",
    "ConfigError",
    "SourceError",
    "ServerError",
    "ConnectionClosedError",
    "DataError",
    "DataTooLargeError",
]


class CamstreamError(Exception):
    """Base class of every camstream exception."""


class ConfigError(CamstreamError, ValueError):
    """An argument or option has a value camstream cannot use."""


class SourceError(CamstreamError, OSError):
    """A frame source could not be opened or read.

    The message names the source and says what to try instead.
    """

    def __init__(self, source: object, message: str) -> None:
        super().__init__(message)
        self.source = source


class ServerError(CamstreamError, OSError):
    """The server could not start (port in use, bad TLS files, ...)."""


class ConnectionClosedError(CamstreamError, ConnectionError):
    """A message could not be sent because the WebSocket connection is closed."""


class DataError(ConfigError):
    """A value the application sends to clients (frame data, an ``app`` message) cannot be
    sent: it is not JSON (a numpy number, NaN, a set, a circular list...)."""


class DataTooLargeError(DataError):
    """A value for clients is larger, as JSON, than the Streamer's ``max_data_bytes``.

    Attributes:
        size: its size as compact UTF-8 JSON, in bytes.
        limit: the limit (``max_data_bytes``).
    """

    def __init__(self, message: str, size: int, limit: int) -> None:
        super().__init__(message)
        self.size = size
        self.limit = limit
