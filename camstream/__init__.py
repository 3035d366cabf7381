"""camstream: a webcam (or any OpenCV source, or frames your app makes) as a live WebSocket stream.

>>> from camstream import Streamer
>>> Streamer("test").serve_forever()   # ws://127.0.0.1:8765/  (Ctrl+C stops)

JSON text messages carry metadata and events; binary messages are whole JPEG files.
"""

from __future__ import annotations

import logging

from .app import AppClient
from .capture.camera import CameraState, CameraThread
from .capture.frame import Frame
from .errors import (
    CamstreamError,
    ConfigError,
    ConnectionClosedError,
    DataError,
    DataTooLargeError,
    ServerError,
    SourceError,
)
from .protocol import PROTOCOL_VERSION, CloseCode
from .server import Streamer
from .version import __version__

__all__ = [
    "AppClient",
    "CameraState",
    "CameraThread",
    "CamstreamError",
    "CloseCode",
    "ConfigError",
    "ConnectionClosedError",
    "DataError",
    "DataTooLargeError",
    "Frame",
    "PROTOCOL_VERSION",
    "ServerError",
    "SourceError",
    "Streamer",
    "__version__",
]

# A library never configures logging: records go nowhere unless the application sets handlers.
logging.getLogger(__name__).addHandler(logging.NullHandler())
