"""camstream wire protocol v1: close codes and message builders.

Server → client text messages are JSON objects with a ``type`` field; binary messages are whole
JPEG files. See ``PROTOCOL.md`` for the full description.
"""

from __future__ import annotations

import datetime
import enum
import json
import math
import time
from dataclasses import dataclass
from typing import Any, Mapping

from .errors import DataError, DataTooLargeError

PROTOCOL_VERSION = 1
"""Bumped only for changes an existing client would misread (see PROTOCOL.md, Versioning)."""


class CloseCode(enum.IntEnum):
    """WebSocket close codes camstream sends (RFC 6455 section 7.4.1)."""

    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    NO_STATUS = 1005  # never sent on the wire: "the Close frame had no code"
    ABNORMAL = 1006  # never sent on the wire: "the connection dropped without a Close"
    INVALID_DATA = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    TRY_AGAIN_LATER = 1013


# Server → client messages


def iso_utc(timestamp: float | None = None) -> str:
    """ISO 8601 UTC with a ``Z``, to the second, as in the seed: ``2026-11-25T12:00:00Z``."""
    moment = datetime.datetime.fromtimestamp(
        time.time() if timestamp is None else timestamp, datetime.timezone.utc
    )
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def encode_message(message: Mapping[str, Any]) -> str:
    """One compact JSON text message."""
    return json.dumps(message, separators=(",", ":"), allow_nan=False)


def metadata_message(
    *, width: int, height: int, fps: float, quality: int | None, **extra: Any
) -> dict[str, Any]:
    """The ``metadata`` message: the first message of every connection, resent on changes."""
    return {
        "type": "metadata",
        "protocol": PROTOCOL_VERSION,
        "width": width,
        "height": height,
        "fps": _number(fps),
        "format": "MJPEG",
        "timestamp": iso_utc(),
        "quality": quality,
        **extra,
    }


def error_message(message: str) -> dict[str, Any]:
    """The ``error`` message: a client's request or value could not be used (``message`` says
    why, for people)."""
    return {"type": "error", "message": message}


def pong_message(t: float | str | None) -> dict[str, Any]:
    """The ``pong`` answer to a client's ``ping``: its ``t`` echoed, the server's clock."""
    return {"type": "pong", "t": t, "server_time": time.time()}


def frame_message(
    *,
    seq: int,
    captured_at: float,
    skipped: int,
    size: int,
    width: int,
    height: int,
    quality: int | None,
) -> dict[str, Any]:
    """The ``frame`` message sent right before a frame's JPEG to viewers that asked for
    ``frame_info`` (``size``: the JPEG's length in bytes; ``skipped``: frames that went unsent
    since the previous one; ``sent_at``: now)."""
    return {
        "type": "frame",
        "seq": seq,
        "captured_at": round(captured_at, 6),
        "sent_at": round(time.time(), 6),
        "skipped": skipped,
        "bytes": size,
        "width": width,
        "height": height,
        "quality": quality,
    }


def snapshot_message(
    *, seq: int, width: int, height: int, quality: int | None, size: int, captured_at: float
) -> dict[str, Any]:
    """The ``snapshot`` message; the JPEG (``size`` bytes) follows as the next binary message."""
    return {
        "type": "snapshot",
        "seq": seq,
        "width": width,
        "height": height,
        "quality": quality,
        "bytes": size,
        "captured_at": round(captured_at, 6),
    }


CAMERA_EVENTS = frozenset({
    "camera_lost", "camera_restored", "source_ended",
    "camera_starting", "camera_started", "camera_idle",  # on-demand cameras only
})
"""The camera's events (``capture.states.CameraListener``), sent to every WebSocket viewer as
they happen."""


def event_message(event: str, details: Mapping[str, Any]) -> dict[str, Any]:
    """A camera event (one of :data:`CAMERA_EVENTS`) with its details (``source``,
    ``reason``), stamped now.

    Raises:
        ValueError: ``event`` is not a camera event (a programming error).
    """
    if event not in CAMERA_EVENTS:
        raise ValueError(f"unknown camera event {event!r}")
    return {"type": event, "timestamp": iso_utc(), **details}


# Application data (PROTOCOL.md, "Application data"): frame data and app messages

DEFAULT_MAX_DATA_BYTES = 16384
"""The default ``max_data_bytes``: the largest frame data or ``app`` value, as JSON, in bytes."""
MAX_DATA_BYTES = 61440
"""The highest ``max_data_bytes`` a Streamer takes: a ``data`` or ``app`` message then stays
well under 65535 bytes, the largest message Godot 4 accepts by default (its envelope adds
fewer than 50 bytes)."""


def encode_value(value: Any, limit: int, what: str = "data") -> str:
    """``value`` as the compact JSON that goes on the wire, at most ``limit`` bytes in UTF-8.

    Called once per value, in the thread that hands it in (``publish``, ``annotate``,
    ``client.send``, ``broadcast``): every client gets these bytes.

    Raises:
        DataError: ``value`` is not JSON (the message says what is not).
        DataTooLargeError: larger than ``limit`` (the message names the limit).
    """
    try:
        text = json.dumps(value, separators=(",", ":"), allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise DataError(
            f"{what} must be a JSON value (dict, list, str, int, float, bool or None; numpy "
            f"numbers: int()/float()/.tolist()): {type(exc).__name__}: {exc}"
        ) from None
    size = len(text) if text.isascii() else len(text.encode("utf-8"))
    if size > limit:
        raise DataTooLargeError(
            f"{what} is {size} bytes as JSON, over the limit of {limit} bytes "
            f"(Streamer(max_data_bytes=...), at most {MAX_DATA_BYTES}); send less per frame",
            size, limit,
        )
    return text


def data_message_text(seq: int, value_json: str) -> str:
    """The ``data`` message of frame ``seq`` (``value_json``: from :func:`encode_value`), sent
    right before that frame's JPEG to viewers that asked for ``data``."""
    return f'{{"type":"data","seq":{seq},"value":{value_json}}}'


def app_message_text(value_json: str) -> str:
    """An ``app`` message from the application to a client (``value_json``: from
    :func:`encode_value`)."""
    return f'{{"type":"app","value":{value_json}}}'


def _number(value: float) -> float | int:
    """30.0 → 30 and 7.5 → 7.5: what a reader of the JSON expects."""
    return int(value) if float(value).is_integer() else round(float(value), 3)


# Client → server messages

CONTROL_TYPES = frozenset({"config", "pause", "resume", "snapshot", "ping", "app"})

MAX_FPS = 240.0
MAX_SIDE = 8192
MIN_MAX_BYTES = 4096
GODOT_MAX_MESSAGE = 65535
"""Godot 4's default ``WebSocketPeer.inbound_buffer_size``: the largest message it accepts (the
server's default ``max_bytes``, so the seed's bare Godot client streams as it is)."""
MAX_JPEG_SIDE = 65500
"""The largest width or height a JPEG file (a binary message) can have: libjpeg's limit."""


class ProtocolInputError(ValueError):
    """A client message camstream cannot act on; the text goes back in an ``error`` message."""


@dataclass(frozen=True)
class _Field:
    kind: type
    low: float
    high: float
    nullable: bool = False
    zero_is_none: bool = False  # 0 means "no limit", like null


CONFIG_FIELDS: dict[str, _Field] = {
    "fps": _Field(float, 0.1, MAX_FPS),
    "quality": _Field(int, 1, 100, nullable=True),  # null: as the source
    "width": _Field(int, 16, MAX_SIDE, nullable=True),
    "height": _Field(int, 16, MAX_SIDE, nullable=True),
    "max_bytes": _Field(int, MIN_MAX_BYTES, 2**31 - 1, nullable=True, zero_is_none=True),
    "frame_info": _Field(bool, 0, 1),
    "adapt": _Field(bool, 0, 1),  # adaptive delivery (issue 18); URL: on/off, 1/0, true/false
    "data": _Field(bool, 0, 1),  # the application's frame data (and its broadcasts)
}
"""The settings a client can choose, in a ``config`` message or as URL query parameters."""

_TRUE_WORDS = {"1", "true", "yes", "on"}
_FALSE_WORDS = {"0", "false", "no", "off"}


def parse_control(text: str) -> dict[str, Any]:
    """Parse and check one client text message.

    Every field camstream reads is checked here or in :func:`parse_config`, so whatever JSON a
    client sends, the caller gets either a message it can act on or a :class:`ProtocolInputError`
    whose text can go back to the client as is. Unknown fields are ignored (see PROTOCOL.md).

    Returns:
        The message, with ``type`` one of :data:`CONTROL_TYPES`; for ``ping``, ``t`` a
        finite number, a string or None (absent); for ``app``, a ``value`` (any JSON).

    Raises:
        ProtocolInputError: not JSON, a number out of range (``1e309``), not an object, no or an
            unknown ``type``, a ``ping`` whose ``t`` is neither a number nor a string, or an
            ``app`` message without ``value``.
    """
    try:
        message = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except ProtocolInputError:
        raise
    except (ValueError, RecursionError):
        raise ProtocolInputError("message is not valid JSON") from None
    if not isinstance(message, dict):
        raise ProtocolInputError('message must be a JSON object with a "type"')
    kind = message.get("type")
    known = ", ".join(sorted(CONTROL_TYPES))
    if kind is None:
        raise ProtocolInputError(f'message has no "type"; known types: {known}')
    if not isinstance(kind, str) or kind not in CONTROL_TYPES:
        raise ProtocolInputError(f"unknown message type {show_value(kind)}; known types: {known}")
    if kind == "ping":
        stamp = message.get("t")
        if isinstance(stamp, bool) or not isinstance(stamp, (int, float, str, type(None))):
            shown = show_value(stamp)
            raise ProtocolInputError(f"ping t: expected a number or a string, not {shown}")
    elif kind == "app" and "value" not in message:
        raise ProtocolInputError('app message has no "value"')
    return message


def show_value(value: Any, limit: int = 40) -> str:
    """A client's value as the client wrote it, in JSON (``true``, ``"abc"``, ``[1]``), cut short.

    Used in ``error`` messages, which should speak the protocol's language, not Python's.
    """
    try:
        text = json.dumps(value, allow_nan=False)
    except (ValueError, TypeError, RecursionError):
        text = str(value)  # non-finite from a URL ("inf"): shown as the word itself
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _refuse_constant(name: str) -> None:
    """NaN and Infinity are not JSON, whatever Python's json module accepts."""
    raise ValueError(f"{name} is not JSON")


def _finite_float(literal: str) -> float:
    """``1e309`` is valid JSON syntax but no finite double: refuse it by name."""
    value = float(literal)
    if not math.isfinite(value):
        shown = literal if len(literal) <= 40 else literal[:37] + "..."
        raise ProtocolInputError(f"number {shown} is out of range")
    return value


def parse_config(
    values: Mapping[str, Any], *, from_url: bool = False
) -> tuple[dict[str, Any], list[str]]:
    """Validate client settings.

    Args:
        values: a ``config`` message's fields, or URL query parameters (``from_url=True``: the
            values are strings). Keys camstream does not know are ignored: URLs carry other
            things such as ``token``, and a newer client may send fields an older server lacks.

    Returns:
        ``(settings, problems)``: the valid settings, and one sentence per value refused.
    """
    settings: dict[str, Any] = {}
    problems: list[str] = []
    for key, raw in values.items():
        spec = CONFIG_FIELDS.get(key)
        if spec is None:
            continue
        try:
            settings[key] = _convert(spec, raw, from_url)
        except ValueError as exc:
            problems.append(f"{key}: {exc}")
    return settings, problems


def adapt_of(values: Mapping[str, Any], *, from_url: bool = False) -> bool:
    """Whether settings (a URL query, ``from_url``, or a ``config`` message) ask for adaptive
    delivery: their ``adapt``, on by default (and where the value is bad, which
    :func:`parse_config` reports)."""
    settings, _ = parse_config({"adapt": values.get("adapt", True)}, from_url=from_url)
    return bool(settings.get("adapt", True))


def _convert(spec: _Field, raw: Any, from_url: bool) -> Any:
    if raw is None or (from_url and raw in ("", "none", "null")):
        if spec.nullable:
            return None
        raise ValueError("a value is required")
    if spec.kind is bool:
        if isinstance(raw, bool):
            return raw
        if from_url and str(raw).lower() in _TRUE_WORDS | _FALSE_WORDS:
            return str(raw).lower() in _TRUE_WORDS
        raise ValueError(f"expected true or false, not {show_value(raw)}")
    if from_url:
        try:
            raw = float(raw) if spec.kind is float else int(raw)
        except ValueError:
            raise ValueError(f"expected a number, not {show_value(raw)}") from None
    if isinstance(raw, bool) or not isinstance(raw, (int, float)):
        raise ValueError(f"expected a number, not {show_value(raw)}")
    # Compared as they are: float() of a huge JSON integer would overflow.
    if isinstance(raw, float) and spec.kind is int and not raw.is_integer():
        raise ValueError(f"expected a whole number, not {show_value(raw)}")
    if spec.zero_is_none and raw == 0:
        return None
    if not spec.low <= raw <= spec.high:  # also false for a NaN or infinity from a URL
        low, high = _number(spec.low), _number(spec.high)
        no_limit = " (or 0 for no limit)" if spec.zero_is_none else ""
        raise ValueError(f"must be between {low} and {high}{no_limit}, not {show_value(raw)}")
    return spec.kind(raw)
