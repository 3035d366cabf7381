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
