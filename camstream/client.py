"""A small synchronous client for camstream servers.

Needs ``websocket-client``: ``pip install '.[client]'`` in a camstream checkout (camstream is not
on PyPI), or ``pip install websocket-client``.

    from camstream.client import Client

    with Client("ws://127.0.0.1:8765/", fps=10) as client:
        for frame in client:            # ReceivedFrame: .jpeg bytes, .image (decoded BGR array)
            print(frame.width, frame.height, frame.seq)

The application's data (``Client(data=True)``): ``frame.data`` is the value the server's
application attached to that very frame (None if none); ``client.send_app(value)`` talks back
(``Streamer(on_message=...)``), and its answers arrive in ``on_app`` / :attr:`Client.app_messages`.

Built on ``websocket-client``. It follows protocol v1 (see PROTOCOL.md): text messages are JSON
(metadata, events, replies), binary messages are whole JPEG files.
"""

from __future__ import annotations

import collections
import json
import time
import urllib.parse
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import cv2
import numpy as np

from .errors import CamstreamError, ConfigError, ConnectionClosedError

__all__ = ["Client", "ReceivedFrame", "RequestRefusedError"]

_ERROR_HANDLING = ("raise", "warn", "ignore")
_INSTALL_HINT = (
    "camstream.client needs websocket-client: pip install '.[client]' in a camstream checkout, "
    "or pip install websocket-client"
)


class RequestRefusedError(CamstreamError, ValueError):
    """The server refused a setting or request: it sent an ``error`` message.

    The connection stays open; iterating again goes on with the settings in force.
    """

    def __init__(self, message: dict[str, Any]) -> None:
        super().__init__(f"the server refused: {message.get('message', message)}")
        self.message = message


@dataclass
class ReceivedFrame:
    """One JPEG from the server, with the metadata in force when it arrived."""

    jpeg: bytes
    metadata: dict[str, Any]
    received_at: float
    """``time.time()`` when the message arrived."""
    info: dict[str, Any] | None = None
    """The ``frame`` message that came before it, if the client asked for ``frame_info``."""
    data: Any = None
    """The application's data for this frame (``Client(data=True)``), or None if it has none."""
    data_seq: int | None = field(default=None, repr=False)
    _image: np.ndarray | None = field(default=None, repr=False)

    @property
    def image(self) -> np.ndarray:
        """The decoded BGR picture (decoded on first use)."""
        if self._image is None:
            image = cv2.imdecode(np.frombuffer(self.jpeg, np.uint8), cv2.IMREAD_COLOR)
            if image is None:
                raise CamstreamError("received a binary message that is not a JPEG")
            self._image = image
        return self._image

    @property
    def width(self) -> int:
        return int(self.metadata.get("width", 0))

    @property
    def height(self) -> int:
        return int(self.metadata.get("height", 0))

    @property
    def seq(self) -> int | None:
        """The frame's number (from its ``frame`` or ``data`` message; None without either)."""
        return self.data_seq if self.info is None else self.info.get("seq")


class Client:
    """Connects to a camstream server and yields its frames.

    Args:
        url: ``ws://host:port/`` or ``wss://...``; on a server of several cameras,
            ``ws://host:port/NAME`` is camera NAME (the bare address: the first camera).
        camera: the camera's name on a server of several (``camstream --source front=0
            --source rear=1``); it replaces the URL's path. None: the URL's path decides.
        token: sent as ``Authorization: Bearer`` (never put in the URL by this client).
        fps, width, height, quality, frame_info: the stream this client wants; sent as URL
            query parameters (see PROTOCOL.md). None: the server's choice.
        data: receive the application's data with each frame (:attr:`ReceivedFrame.data`) and
            its broadcasts (``?data=1``).
        on_app: called with the value of every ``app`` message from the server's application
            (in the thread that iterates); they are also kept in :attr:`app_messages`.
        max_bytes: the largest JPEG this client takes (default 0: no limit, the full frames).
            ``None`` leaves it to the server, which keeps frames within 65535 bytes (Godot's
            limit) unless configured otherwise.
        adapt: adaptive delivery (``?adapt=on|off``): the server sends each frame on the rung of
            a quality ladder this client's link carries. None: the server's default (on). The
            state is in :attr:`metadata` (``adapt``, ``rung``, ``rungs``, ``link_kbps``,
            ``rtt_ms``, ``adapt_reason``; absent from servers before it).
        timeout: seconds to wait for the connection and for each message (default 10).
        on_event: called with every JSON message that is not metadata (events, errors, pongs).
        errors: what an ``error`` message from the server (a refused setting, such as
            ``fps=0``) does: ``"raise"`` (default) raises :class:`RequestRefusedError` from the
            call that received it (``connect``, iterating, ``snapshot``), ``"warn"`` issues a
            ``RuntimeWarning``, ``"ignore"`` only records it in :attr:`events`.
        sslopt: passed to websocket-client for ``wss://`` (e.g. ``{"ca_certs": path}``).

    Raises:
        ConfigError: the URL is not ``ws://`` or ``wss://``, ``errors`` is unknown, or
            ``camera`` is not a camera name (1-32 letters, digits, ``-``, ``_``).

    Iterating ends when the server closes the connection; :attr:`close_code` and
    :attr:`close_reason` then say why. If no message arrives for ``timeout`` seconds (a camera
    lost, a paused stream), iterating raises ``TimeoutError``; the connection stays open and
    iterating again goes on.
    """

    def __init__(
        self,
        url: str,
        *,
        camera: str | None = None,
        token: str | None = None,
        fps: float | None = None,
        width: int | None = None,
        height: int | None = None,
        quality: int | None = None,
        max_bytes: int | None = 0,
        frame_info: bool = False,
        adapt: bool | None = None,
        data: bool = False,
        on_app: Callable[[Any], None] | None = None,
        timeout: float = 10.0,
        on_event: Callable[[dict[str, Any]], None] | None = None,
        errors: str = "raise",
        sslopt: dict[str, Any] | None = None,
    ) -> None:
        scheme = urllib.parse.urlsplit(url).scheme.lower()
        if scheme not in ("ws", "wss"):
            raise ConfigError(
                f"cannot connect to {url!r}: use ws:// or wss:// (camstream's WebSocket URL, "
                "e.g. ws://127.0.0.1:8765/)"
            )
        if camera is not None:
            url = _at_camera(url, camera)
        if errors not in _ERROR_HANDLING:
            raise ConfigError(f"errors must be one of {', '.join(_ERROR_HANDLING)}, not {errors!r}")
        self._errors = errors
        query = {
            key: value
            for key, value in (
                ("fps", fps), ("width", width), ("height", height), ("quality", quality),
                ("max_bytes", max_bytes), ("frame_info", "true" if frame_info else None),
                ("adapt", None if adapt is None else "on" if adapt else "off"),
                ("data", "true" if data else None),
            )
            if value is not None
        }
        self.url = _with_query(url, query)
        self._token = token
        self._timeout = timeout
        self._sslopt = sslopt
        self._on_event = on_event
        self._on_app = on_app
        self.app_messages: collections.deque[Any] = collections.deque(maxlen=100)
        """The values of the latest ``app`` messages from the server's application."""
        self._ws: Any = None
        self.metadata: dict[str, Any] = {}
        self.events: collections.deque[dict[str, Any]] = collections.deque(maxlen=100)
        self.close_code: int | None = None
        self.close_reason: str = ""

    # Lifecycle

    def connect(self) -> Client:
        """Open the connection and wait for the first metadata message; returns ``self``.

        Raises:
            ConnectionClosedError: the server refused or closed the connection.
            ConfigError: websocket-client cannot use the URL.
            OSError: the server cannot be reached.
        """
        try:
            import websocket  # websocket-client
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise CamstreamError(_INSTALL_HINT) from exc
        headers = [f"Authorization: Bearer {self._token}"] if self._token else []
        try:
            self._ws = websocket.create_connection(
                self.url, timeout=self._timeout, header=headers, sslopt=self._sslopt,
                enable_multithread=True,
            )
        except ValueError as exc:  # websocket-client's word for a URL it cannot use
            raise ConfigError(
                f"cannot connect to {self.url!r}: {exc} (use ws:// or wss://)"
            ) from None
        try:
            while not self.metadata:
                if self._receive() is None:
                    raise ConnectionClosedError(self._closed_text())
        except BaseException:
            self.close()
            raise
        return self

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Close the connection (idempotent)."""
        ws, self._ws = self._ws, None
        if ws is not None:
            try:
                ws.close(status=code, reason=reason.encode(), timeout=1)
            except Exception:  # the socket may already be gone; closing must not raise
                pass
            finally:
                ws.shutdown()  # releases the socket even when close() had nothing to do

    def __enter__(self) -> Client:
        return self.connect() if self._ws is None else self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # Receiving

    def __iter__(self) -> Iterator[ReceivedFrame]:
        return self.frames()

    def frames(self) -> Iterator[ReceivedFrame]:
        """Yield frames until the server closes the connection."""
        info: dict[str, Any] | None = None
        data: dict[str, Any] | None = None
        while True:
            message = self._receive()
            if message is None:
                return
            if isinstance(message, bytes):
                yield ReceivedFrame(
                    message, dict(self.metadata), time.time(), info,
                    data=None if data is None else data.get("value"),
                    data_seq=None if data is None else data.get("seq"),
                )
                info = data = None
            elif message.get("type") == "frame":
                info = message
            elif message.get("type") == "data":
                data = message  # the data of the JPEG that comes next

    def _receive(self) -> bytes | dict[str, Any] | None:
        """The next message: JPEG bytes, or a JSON dict (metadata is stored); None when closed."""
        import websocket

        if self._ws is None:
            return None
        try:
            opcode, data = self._ws.recv_data(control_frame=False)
        except websocket.WebSocketTimeoutException:
            raise TimeoutError(f"no message from the server in {self._timeout} s") from None
        except websocket.WebSocketConnectionClosedException:
            self.close_code = self.close_code or 1006
            return None
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            self.close_code = int.from_bytes(data[:2], "big") if len(data) >= 2 else 1005
            self.close_reason = data[2:].decode("utf-8", "replace")
            return None
        if opcode == websocket.ABNF.OPCODE_BINARY:
            return bytes(data)
        message = json.loads(data.decode("utf-8"))
        if not isinstance(message, dict):
            return {"type": "unknown", "value": message}
        if message.get("type", "metadata") == "metadata":
            self.metadata = message
        elif message.get("type") not in ("frame", "data"):
            self.events.append(message)
            if self._on_event is not None:
                self._on_event(message)
            if message.get("type") == "error":
                self._server_error(message)
            elif message.get("type") == "app":
                self.app_messages.append(message.get("value"))
                if self._on_app is not None:
                    self._on_app(message.get("value"))
        return message

    def _server_error(self, message: dict[str, Any]) -> None:
        if self._errors == "raise":
            raise RequestRefusedError(message)
        if self._errors == "warn":
            warnings.warn(str(RequestRefusedError(message)), RuntimeWarning, stacklevel=4)

    # Control messages

    def send(self, message: dict[str, Any]) -> None:
        """Send one JSON control message."""
        if self._ws is None:
            raise ConnectionClosedError("not connected")
        self._ws.send(json.dumps(message))

    def configure(self, **settings: Any) -> None:
        """Change fps, width, height, quality, max_bytes or frame_info for this client."""
        self.send({"type": "config", **settings})

    def send_app(self, value: Any) -> None:
        """Send ``value`` (any JSON value) to the server's application, as an ``app`` message
        (``Streamer(on_message=...)``; a server without one answers with an ``error``)."""
        self.send({"type": "app", "value": value})

    def pause(self) -> None:
        self.send({"type": "pause"})

    def resume(self) -> None:
        self.send({"type": "resume"})

    def snapshot(self, quality: int = 95) -> bytes:
        """Ask for a full-resolution JPEG and return it.

        Live frames that arrive before it are dropped.
        """
        self.send({"type": "snapshot", "quality": quality})
        announced = False
        while True:
            message = self._receive()
            if message is None:
                raise ConnectionClosedError(self._closed_text())
            if isinstance(message, dict):
                if message.get("type") == "snapshot":
                    announced = True
                elif message.get("type") == "error":
                    raise CamstreamError(f"snapshot refused: {message.get('message')}")
            elif announced:
                return message

    def _closed_text(self) -> str:
        return f"connection closed (code {self.close_code}: {self.close_reason or 'no reason'})"


def _at_camera(url: str, camera: str) -> str:
    """``url`` with its path replaced by ``/camera`` (the query kept)."""
    from .cameraset import CAMERA_NAME

    if not isinstance(camera, str) or not CAMERA_NAME.fullmatch(camera):
        raise ConfigError(
            f"camera must be a camera name (1-32 letters, digits, '-' or '_'), not {camera!r}"
        )
    return urllib.parse.urlunsplit(urllib.parse.urlsplit(url)._replace(path=f"/{camera}"))


def _with_query(url: str, params: dict[str, Any]) -> str:
    if not params:
        return url
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qsl(parts.query) + [(k, str(v)) for k, v in params.items()]
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))
