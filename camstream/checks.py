"""The checks of option values shared by every layer: numbers, whole numbers, seconds, ports.

Each failure is a :class:`~camstream.errors.ConfigError` whose message starts with the option's
name (``send_timeout must be ...``). ``Streamer``'s options (:mod:`camstream.options`) and the
transport's (:class:`~camstream.ws.server.WebSocketServer`) use the same rules, so the same
value is accepted or refused with the same words wherever it is given.
"""

from __future__ import annotations

import math

from .errors import ConfigError

__all__ = ["MAX_SECONDS", "check_int", "check_port", "check_seconds", "is_number"]

MAX_SECONDS = 86_400
"""The longest timeout or interval an option takes: a day."""


def is_number(value: object) -> bool:
    """Whether ``value`` is a finite int or float (``bool`` is not a number here)."""
    return (
        isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    )


def check_int(
    name: str, value: object, low: int, high: int | None, wanted: str | None = None
) -> None:
    """``value`` must be an int (not a bool) from ``low`` to ``high`` (None: no top)."""
    if (
        isinstance(value, int) and not isinstance(value, bool)
        and value >= low and (high is None or value <= high)
    ):
        return
    raise ConfigError(f"{name} must be {wanted or f'{low}-{high}'}, not {value!r}")


def check_seconds(name: str, value: object) -> None:
    """``value`` must be seconds above 0, finite, at most :data:`MAX_SECONDS`."""
    if not is_number(value) or not 0 < value <= MAX_SECONDS:  # type: ignore[operator]
        raise ConfigError(
            f"{name} must be seconds above 0 (at most {MAX_SECONDS}), not {value!r}"
        )


def check_port(value: object) -> None:
    """A TCP port to listen on: 0 (any free port) to 65535."""
    check_int("port", value, 0, 65535)
