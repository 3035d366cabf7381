"""Which camera is which: index, name, device paths and (where the platform tells) modes.

Names and indices come from ``cv2-enumerate-cameras`` when it is installed (Windows, macOS and
Linux); on Linux the pixel formats, sizes and frame rates come from ``linuxpy`` (V4L2
``ENUM_FMT`` / ``ENUM_FRAMESIZES`` / ``ENUM_FRAMEINTERVALS``). Both are in the optional extra
``pip install '.[cameras]'``. Without them, Linux still lists cameras from
``/sys/class/video4linux`` (names, no modes); other platforms need the extra.

Each camera's listing ends with a ``--source NAME=...`` to paste into the ``camstream`` command
(a name made from the camera's, its stable path where it has one), and a last line serves them
all on one port (:func:`source_names`).
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field
from typing import Iterable

from .. import logs

__all__ = [
    "CameraDescription", "CameraMode", "format_cameras", "list_cameras", "source_names",
]

logger = logs.get_logger(__name__)


@dataclass(frozen=True)
class CameraMode:
    """One format and size a camera offers, at its highest frame rate."""

    pixel_format: str
    width: int
    height: int
    fps: float


@dataclass(frozen=True)
class CameraDescription:
    """A camera as the platform describes it."""

    index: int  # what ``--source`` takes
    name: str
    path: str | None = None  # e.g. /dev/video0
    stable_paths: tuple[str, ...] = ()  # /dev/v4l/by-id/... : survive replugging
    modes: tuple[CameraMode, ...] = field(default=())


def list_cameras(
    *,
    use_libraries: bool = True,
    sysfs: str = "/sys/class/video4linux",
    dev: str = "/dev",
) -> list[CameraDescription]:
    """The cameras this machine has, by index; an empty list if there are none.

    Args:
        use_libraries: use ``cv2-enumerate-cameras`` / ``linuxpy`` when installed.
        sysfs, dev: where Linux keeps its video devices (for tests).
    """
    found = _from_library() if use_libraries else None
    if found is None and sys.platform.startswith("linux"):
        found = list(_from_sysfs(sysfs))
    found = found or []
    with_links = [_add_stable_paths(camera, dev) for camera in found]
    if use_libraries and sys.platform.startswith("linux"):
        with_links = [_add_modes(camera) for camera in with_links]
    return sorted(with_links, key=lambda c: c.index)


def format_cameras(cameras: Iterable[CameraDescription]) -> str:
    """Human-readable lines for ``camstream --list-cameras``."""
    cameras = list(cameras)
    names = source_names(cameras)
    lines = []
    for camera, name in zip(cameras, names):
        where = f"  {camera.path}" if camera.path else ""
        lines.append(f"{camera.index}: {camera.name}{where}")
        lines.extend(f"     also {link}" for link in camera.stable_paths)
        by_format: dict[str, list[CameraMode]] = {}
        for mode in camera.modes:
            by_format.setdefault(mode.pixel_format, []).append(mode)
        for pixel_format, modes in by_format.items():
            sizes = ", ".join(f"{m.width}x{m.height} {m.fps:g} fps" for m in modes)
            lines.append(f"     {pixel_format:<5} {sizes}")
        lines.append(f"     --source {name}={_pasted_source(camera)}")
    if not lines:
        return "no cameras found"
    every = " ".join(f"--source {n}={_pasted_source(c)}" for c, n in zip(cameras, names))
    lines.append(f"all on one port: camstream {every}")
    return "\n".join(lines)


_RESERVED = ("ws", "healthz")  # the server's own path words a made name could be


def source_names(cameras: Iterable[CameraDescription]) -> list[str]:
    """A camera name for each camera (what ``--source NAME=...`` takes): its name in lower
    case, runs of other characters as one ``-``, at most 24 characters, made unique with
    ``-2``, ``-3``; ``cameraN`` (its index) when nothing is left."""
    names: list[str] = []
    for camera in cameras:
        base = re.sub(r"[^a-z0-9]+", "-", camera.name.lower()).strip("-")[:24].strip("-")
        if not base or base in _RESERVED:
            base = f"camera{camera.index}"
        name, n = base, 1
        while name in names:
            n += 1
            name = f"{base}-{n}"
        names.append(name)
    return names


def _pasted_source(camera: CameraDescription) -> str:
    """What ``--source`` takes for ``camera``: a stable path (survives replugging), else its
    device path, else its index."""
    if camera.stable_paths:
        return camera.stable_paths[0]
    return camera.path or str(camera.index)


def _from_library() -> list[CameraDescription] | None:
    try:
        from cv2_enumerate_cameras import enumerate_cameras
    except ImportError:
        return None
    from .devices import backend_for_device

    try:
        found = enumerate_cameras(backend_for_device("auto"))
    except Exception as exc:  # a third-party probe: never let it take the CLI down
        logger.debug("cv2-enumerate-cameras failed: %s", exc)
        return None
    return [CameraDescription(int(c.index), str(c.name), c.path or None) for c in found]


def _from_sysfs(sysfs: str) -> Iterable[CameraDescription]:
    """Linux without extras: /sys/class/video4linux/videoN/name.

    A UVC camera makes two nodes, the picture (index 0) and metadata (index 1): only nodes
    whose ``index`` is 0 are cameras.
    """
    try:
        entries = sorted(os.listdir(sysfs))
    except OSError:
        return
    for entry in entries:
        if not entry.startswith("video") or not entry[5:].isdigit():
            continue
        if _read(os.path.join(sysfs, entry, "index")) not in (None, "0"):
            continue
        name = _read(os.path.join(sysfs, entry, "name")) or entry
        yield CameraDescription(int(entry[5:]), name, f"/dev/{entry}")


def _add_stable_paths(camera: CameraDescription, dev: str) -> CameraDescription:
    if camera.path is None:
        return camera
    target = os.path.basename(camera.path)
    links = []
    for folder in ("v4l/by-id", "v4l/by-path"):
        directory = os.path.join(dev, folder)
        try:
            names = sorted(os.listdir(directory))
        except OSError:
            continue
        for name in names:
            link = os.path.join(directory, name)
            if os.path.basename(os.path.realpath(link)) == target:
                links.append(link)
    return CameraDescription(camera.index, camera.name, camera.path, tuple(links), camera.modes)


def _add_modes(camera: CameraDescription) -> CameraDescription:
    if camera.path is None:
        return camera
    try:
        from linuxpy.video.device import Device
    except ImportError:
        return camera
    modes: dict[tuple[str, int, int], float] = {}
    try:
        with Device(camera.path) as device:
            for frame_type in device.info.frame_types:
                name = getattr(frame_type.pixel_format, "name", str(frame_type.pixel_format))
                key = (str(name), int(frame_type.width), int(frame_type.height))
                modes[key] = max(modes.get(key, 0.0), float(frame_type.max_fps))
    except Exception as exc:  # busy, not permitted, not a capture device
        logger.debug("cannot read the modes of %s: %s", camera.path, exc)
        return camera
    listed = tuple(CameraMode(f, w, h, fps) for (f, w, h), fps in modes.items())
    return CameraDescription(camera.index, camera.name, camera.path, camera.stable_paths, listed)


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.readline().strip()
    except OSError:
        return None
