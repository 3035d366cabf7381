"""Checks of the :class:`~camstream.server.Streamer` options, run by its constructor.

Each failure is a :class:`~camstream.errors.ConfigError` whose message starts with the option's
name as the user wrote it (``send_timeout must be ...``), so a mistake is caught where it is
made, not when the server starts.

**One meaning for 0.** Every option where ``None`` means "no limit" (or "off") takes ``0`` for
the same, in the API as on the command line: ``max_bytes``, ``max_clients``,
``max_connections_per_address`` (``0``: no limit) and ``ping_interval`` (``0``: no pings).
:func:`no_limit` turns such a ``0`` into ``None``. Where 0 is a value of its own (``port=0``:
any free port; ``max_variants=0``: the default variant only) it keeps that meaning; where it
makes no sense (a quality, a rate, a timeout, a size) it is refused with the same message from
``Streamer(...)`` and from the ``camstream`` command.
"""

from __future__ import annotations

from typing import TypeVar

from . import protocol
from .capture.sources import check_fps
from .checks import MAX_SECONDS, check_int, check_port, check_seconds, is_number
from .errors import ConfigError

__all__ = ["FULL_REMEDY", "check_streamer_options", "no_limit"]

FULL_REMEDY = (
    "server full: every max_clients place is taken (WebSocket and MJPEG viewers together); "
    "raise --max-clients / Streamer(max_clients=...), 0 for no limit"
)
"""What a refusal for ``max_clients`` logs: what lifts it."""

_N = TypeVar("_N", int, float)
_MAX_NAME = 64  # characters of a Streamer's name (it starts every log line)


def check_streamer_options(
    *,
    quality: int, fps: float, max_clients: int | None, port: int, token: str | None,
    max_bytes: int | None, max_variants: int, max_encodes_per_s: float | None,
    send_timeout: float, ping_interval: float | None, ping_timeout: float,
    handshake_timeout: float, first_line_timeout: float, max_message_size: int,
    max_connections_per_address: int | None, host: str, name: str | None = None,
) -> None:
    """Raise :class:`ConfigError` naming the first :class:`Streamer` argument out of range."""
    if not isinstance(host, str):
        raise ConfigError(f"host must be a string, not {host!r}")
    check_int("quality", quality, 1, 100)
    check_fps(fps)
    if max_clients is not None:
        check_int("max_clients", max_clients, 0, None, "at least 1 (0: no limit)")
    check_port(port)
    if token is not None and (not isinstance(token, str) or not token):
        raise ConfigError("token must not be empty" if token == "" else
                          f"token must be a string, not {type(token).__name__}")
    if max_bytes is not None and not (
        isinstance(max_bytes, int) and not isinstance(max_bytes, bool)
        and (max_bytes == 0 or protocol.MIN_MAX_BYTES <= max_bytes <= 2**31 - 1)
    ):
        raise ConfigError(
            f"max_bytes must be 0 (no limit) or {protocol.MIN_MAX_BYTES}-{2**31 - 1}, "
            f"not {max_bytes}"
        )
    check_int("max_variants", max_variants, 0, 64)
    if max_encodes_per_s is not None and not (
        is_number(max_encodes_per_s) and 1 <= max_encodes_per_s <= 100_000
    ):
        raise ConfigError(f"max_encodes_per_s must be 1-100000, not {max_encodes_per_s}")
    if ping_interval is not None and not (is_number(ping_interval) and ping_interval == 0):
        if not is_number(ping_interval) or not 0 < ping_interval <= MAX_SECONDS:
            raise ConfigError(
                f"ping_interval must be seconds above 0 (at most {MAX_SECONDS}; 0: no pings), "
                f"not {ping_interval!r}"
            )
    for option, seconds in (
        ("send_timeout", send_timeout),
        ("ping_timeout", ping_timeout),
        ("handshake_timeout", handshake_timeout),
        ("first_line_timeout", first_line_timeout),
    ):
        check_seconds(option, seconds)
    check_int("max_message_size", max_message_size, 1, 2**31 - 1)
    if max_connections_per_address is not None:
        check_int("max_connections_per_address", max_connections_per_address, 0, None,
                   "a positive integer (0: no limit)")
    if name is not None and not (
        isinstance(name, str) and 0 < len(name) <= _MAX_NAME and name.isprintable()
    ):
        raise ConfigError(f"name must be 1-{_MAX_NAME} printable characters, not {name!r}")


def no_limit(value: _N | None) -> _N | None:
    """``None`` for ``0`` (the "no limit" / "off" spelling shared with the CLI), else ``value``."""
    return None if value == 0 else value
