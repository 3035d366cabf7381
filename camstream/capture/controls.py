"""Camera controls (exposure, focus, white balance, ...): parsed once, applied after every open.

Each control maps to an OpenCV capture property. What a value means is the driver's business
(V4L2 passes most values straight to the camera: ``auto_exposure`` is 1 for manual and 3 for
automatic on UVC cameras, ``exposure`` is in units of 100 µs); camstream sets the value, reads
it back and reports each as granted or refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Mapping, Union

import cv2

from .. import logs
from ..errors import ConfigError

__all__ = ["CONTROLS", "ControlResult", "apply_controls", "parse_control", "parse_controls"]

logger = logs.get_logger(__name__)

CONTROLS: dict[str, int] = {
    "exposure": cv2.CAP_PROP_EXPOSURE,
    "auto_exposure": cv2.CAP_PROP_AUTO_EXPOSURE,
    "focus": cv2.CAP_PROP_FOCUS,
    "autofocus": cv2.CAP_PROP_AUTOFOCUS,
    "brightness": cv2.CAP_PROP_BRIGHTNESS,
    "contrast": cv2.CAP_PROP_CONTRAST,
    "saturation": cv2.CAP_PROP_SATURATION,
    "sharpness": cv2.CAP_PROP_SHARPNESS,
    "gain": cv2.CAP_PROP_GAIN,
    "white_balance": cv2.CAP_PROP_WB_TEMPERATURE,
    "auto_white_balance": cv2.CAP_PROP_AUTO_WB,
    "zoom": cv2.CAP_PROP_ZOOM,
}
"""Control names accepted by ``camera_settings`` / ``--camera-set``."""

_WORDS = {"on": 1.0, "true": 1.0, "yes": 1.0, "off": 0.0, "false": 0.0, "no": 0.0}
_LIMIT = 1e9  # no camera control goes anywhere near this

ControlValue = Union[float, int, str, bool]


@dataclass(frozen=True)
class ControlResult:
    """One control after it was applied: what was asked, what the device reports."""

    name: str
    requested: float
    actual: float | None  # None: the device does not report it
    granted: bool


def parse_control(text: str) -> tuple[str, float]:
    """Parse ``NAME=VALUE`` (as given to ``--camera-set``).

    Raises:
        ConfigError: no ``=``, an unknown name or a value that is not a finite number / on / off.
    """
    if not isinstance(text, str) or "=" not in text:
        raise ConfigError(f"camera setting {text!r} must be NAME=VALUE, e.g. exposure=100")
    name, _, value = text.partition("=")
    return _check(name.strip(), value.strip())


def parse_controls(
    settings: Mapping[str, ControlValue] | Iterable[str] | None,
) -> dict[str, float]:
    """Validate ``camera_settings``: a mapping ``{name: value}`` or ``["NAME=VALUE", ...]``."""
    if settings is None:
        return {}
    if isinstance(settings, Mapping):
        pairs = [_check(name, value) for name, value in settings.items()]
    elif isinstance(settings, (str, bytes)):
        raise ConfigError("camera_settings takes a mapping or a list of 'NAME=VALUE' strings")
    else:
        pairs = [parse_control(item) for item in settings]
    return dict(pairs)


def _check(name: object, value: object) -> tuple[str, float]:
    if not isinstance(name, str) or name.lower() not in CONTROLS:
        raise ConfigError(
            f"unknown camera setting {name!r}: use one of {', '.join(CONTROLS)}"
        )
    key = name.lower()
    number: float | None = None
    if isinstance(value, bool):
        number = float(value)
    elif isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        word = value.strip().lower()
        if word in _WORDS:
            number = _WORDS[word]
        else:
            try:
                number = float(word)
            except ValueError:
                number = None
    if number is None or not math.isfinite(number) or abs(number) > _LIMIT:
        raise ConfigError(
            f"camera setting {key} needs a number (or on/off), not {value!r}"
        )
    return key, number


def apply_controls(capture: object, settings: Mapping[str, float]) -> list[ControlResult]:
    """Set each control on an open capture, read it back, and log the outcome.

    A control counts as granted when the backend accepted the set and, where the device
    reports the value, reads back within 1% of it (drivers round to their own steps).
    """
    results = []
    for name, value in settings.items():
        prop = CONTROLS[name]
        try:
            accepted = bool(capture.set(prop, value))  # type: ignore[attr-defined]
            actual: float | None = float(capture.get(prop))  # type: ignore[attr-defined]
        except cv2.error as exc:
            logger.debug("camera setting %s failed: %s", name, exc)
            accepted, actual = False, None
        if actual is not None and (not math.isfinite(actual) or actual == -1):
            actual = None  # V4L2 reports -1 for a control the device does not have
        close = actual is None or abs(actual - value) <= max(abs(value) * 0.01, 1e-6)
        result = ControlResult(name, value, actual, accepted and close)
        results.append(result)
        shown = "unknown" if actual is None else f"{actual:g}"
        if result.granted:
            logger.info("camera setting %s=%g granted (reads %s)", name, value, shown)
        else:
            logger.warning("camera setting %s=%g refused (reads %s)", name, value, shown)
    return results
