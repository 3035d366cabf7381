"""The camera as ``Streamer.stats()`` and the viewers' metadata describe it."""

from __future__ import annotations

import time
from typing import Any

from .camera import CameraThread
from .sources import describe_source

__all__ = ["camera_report", "camera_state_fields", "open_report"]


def camera_state_fields(camera: CameraThread) -> dict[str, Any]:
    """The camera fields of every ``metadata`` message (see PROTOCOL.md)."""
    return {
        "source_width": camera.width,
        "source_height": camera.height,
        "source_format": camera.pixel_format,
        "source_fps": camera.fps,
        "source_kind": camera.source_kind,
        "camera": camera.state.value,
    }


def camera_report(camera: CameraThread) -> dict[str, Any]:
    """``stats()["camera"]``: the source, what it granted, its controls and its health."""
    return {
        "source": describe_source(camera.source),
        "state": camera.state.value,
        "width": camera.width,
        "height": camera.height,
        "fps": camera.fps,
        "format": camera.pixel_format,
        "backend": camera.backend,
        "jpeg_passthrough": camera.jpeg_passthrough,
        "frames_dropped_corrupt": camera.frames_dropped_corrupt,
        "controls": [
            {"name": c.name, "requested": c.requested, "actual": c.actual, "granted": c.granted}
            for c in camera.controls
        ],
        "failure_reason": camera.failure_reason,
        **open_report(camera),
    }


def open_report(camera: CameraThread) -> dict[str, Any]:
    """On demand and the open/close counters: part of ``stats()["camera"]``."""
    opened_at, took = camera.last_open_at, camera.last_open_duration
    return {
        "on_demand": camera.on_demand,  # the grace period in seconds, or None: always open
        "demand": camera.demand,  # viewers holding a lease (CameraThread.acquire) now
        "opens": camera.opens,
        "closes": camera.closes,
        "open_failures": camera.open_failures,
        "last_open_age_s": None if opened_at is None else round(time.monotonic() - opened_at, 3),
        "last_open_duration_s": None if took is None else round(took, 4),
    }
