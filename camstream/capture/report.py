"""The camera as ``Streamer.stats()`` and the viewers' metadata describe it."""

from __future__ import annotations

from typing import Any

from .camera import CameraThread
from .sources import describe_source

__all__ = ["camera_report", "camera_state_fields"]


def camera_state_fields(camera: CameraThread) -> dict[str, Any]:
    """The camera fields of every ``metadata`` message (see PROTOCOL.md)."""
    return {
        "source_width": camera.width,
        "source_height": camera.height,
        "source_format": camera.pixel_format,
        "source_fps": camera.fps,
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
    }
