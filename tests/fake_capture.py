"""A V4L2-like test double of ``cv2.VideoCapture``: a typical USB 2 (UVC) webcam.

It models what matters to camstream, as OpenCV's V4L2 backend (cap_v4l.cpp) presents such a
camera:

============  =========  ==========  ===========
format        640x480    1280x720    1920x1080
============  =========  ==========  ===========
YUYV          30 fps     10 fps      5 fps
MJPG          30 fps     30 fps      30 fps
============  =========  ==========  ===========

* it opens in YUYV 640x480 (OpenCV's V4L2 ``try_order`` puts YUYV before MJPEG);
* ``CAP_PROP_FOURCC`` switches format (unknown ones are refused and the old one kept); width and
  height snap to the nearest size it has; fps is capped at what the format does at that size;
* ``read()`` really paces itself at the granted rate;
* in MJPG with ``CAP_PROP_CONVERT_RGB`` off it returns the camera's JPEG as a 1xN uint8 array
  (cap_v4l.cpp ``v4l2_create_frame``); otherwise BGR pixels. Every ``dht_less_every``-th JPEG
  has no Huffman tables (as many UVC cameras send them) and every ``truncated_every``-th is cut
  short (a USB transfer that lost its end);
* :meth:`FakeWebcam.vanish` unplugs it (reads and opens fail), :meth:`FakeWebcam.come_back`
  plugs it in again;
* opening it can take time (``open_delay``, as a UVC camera takes 0.1 to 1 s) or wait for a
  test's go-ahead (``open_gate``); :attr:`FakeWebcam.open_handles` and
  :attr:`FakeWebcam.releases` say whether camstream let go of it;
* a few controls (brightness, exposure, auto_exposure, gain) with ranges; others are refused;
* ``mark`` (0-7) paints a corner of every picture in a colour of its own (:data:`MARKS`), so
  tests with several cameras can tell by content whose frame a viewer got (:func:`mark_of`).

Use: ``cam = FakeWebcam(); CameraThread(0, capture_factory=cam.factory)``.
"""

from __future__ import annotations

import functools
import struct
import threading
import time

import cv2
import numpy as np

SIZES = ((640, 480), (1280, 720), (1920, 1080))
YUYV_FPS = {(640, 480): 30.0, (1280, 720): 10.0, (1920, 1080): 5.0}
MJPG_FPS = {size: 30.0 for size in SIZES}
_RATES = {"YUYV": YUYV_FPS, "MJPG": MJPG_FPS}
_CONTROL_RANGES = {
    cv2.CAP_PROP_BRIGHTNESS: (0.0, 255.0, 128.0),
    cv2.CAP_PROP_EXPOSURE: (3.0, 2047.0, 250.0),
    cv2.CAP_PROP_AUTO_EXPOSURE: (1.0, 3.0, 3.0),
    cv2.CAP_PROP_GAIN: (0.0, 255.0, 0.0),
}
_PROP_NAMES = {
    cv2.CAP_PROP_FOURCC: "fourcc",
    cv2.CAP_PROP_FRAME_WIDTH: "width",
    cv2.CAP_PROP_FRAME_HEIGHT: "height",
    cv2.CAP_PROP_FPS: "fps",
    cv2.CAP_PROP_CONVERT_RGB: "convert_rgb",
}
POOL = 4  # distinct pictures per size
MARKS = ((0, 0, 255), (0, 255, 0), (255, 0, 0), (0, 255, 255), (255, 0, 255), (255, 255, 0),
         (255, 255, 255), (0, 0, 0))
"""The corner colours (BGR) of marked cameras, by mark."""
_MARK_SIDE = 48  # pixels of the marked corner (JPEG blocks keep its middle exact enough)


def fourcc(name: str) -> float:
    return float(cv2.VideoWriter_fourcc(*name))


def fourcc_text(value: float) -> str:
    return int(value).to_bytes(4, "little").decode("ascii", "replace")


def strip_dht(jpeg: bytes) -> bytes:
    """The same JPEG without its DHT (Huffman table) segments, as many UVC cameras send it."""
    out, pos = bytearray(jpeg[:2]), 2
    while pos + 4 <= len(jpeg):
        marker = jpeg[pos + 1]
        (length,) = struct.unpack_from("!H", jpeg, pos + 2)
        if marker == 0xDA:  # start of scan: the rest is entropy-coded data
            out += jpeg[pos:]
            return bytes(out)
        if marker != 0xC4:
            out += jpeg[pos:pos + 2 + length]
        pos += 2 + length
    raise ValueError("no scan in JPEG")


def mark_of(image: np.ndarray) -> int:
    """Which mark (an index into :data:`MARKS`) a decoded picture's corner has."""
    middle = image[_MARK_SIDE // 4:_MARK_SIDE * 3 // 4, _MARK_SIDE // 4:_MARK_SIDE * 3 // 4]
    colour = middle.reshape(-1, 3).mean(axis=0)
    distances = [float(np.abs(colour - np.array(m)).sum()) for m in MARKS]
    return int(np.argmin(distances))


@functools.cache
def pictures(
    size: tuple[int, int], mark: int | None = None
) -> tuple[tuple[np.ndarray, ...], tuple[bytes, ...]]:
    """``POOL`` webcam-like pictures at ``size`` (with a marked corner: ``mark``): (BGR
    arrays, their JPEG files)."""
    width, height = size
    rng = np.random.default_rng(width)
    images, files = [], []
    for i in range(POOL):
        ramp = np.linspace(0, 200, width, dtype=np.float32)[np.newaxis, :, np.newaxis]
        image = np.clip(ramp + rng.normal(0, 6, (height, width, 3)), 0, 255).astype(np.uint8)
        cv2.circle(image, (width * (i + 1) // (POOL + 1), height // 2), height // 6,
                   (40, 90 + 30 * i, 200), -1)
        cv2.putText(image, f"fake {i}", (20, height // 4), cv2.FONT_HERSHEY_SIMPLEX,
                    height / 300, (255, 255, 255), 2)
        if mark is not None:
            image[:_MARK_SIDE, :_MARK_SIDE] = MARKS[mark]
        ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 80])
        assert ok
        images.append(image)
        files.append(encoded.tobytes())
    return tuple(images), tuple(files)


class FakeWebcam:
    """The device behind every :class:`FakeCapture` opened from :meth:`factory`.

    Args:
        formats: the pixel formats it offers.
        dht_less_every, truncated_every: every n-th MJPEG frame lacks DHT / is cut short
            (0: never).
        wrong_size_every: every n-th MJPEG frame is a whole JPEG of another size than the
            stream's (a damaged buffer whose header lies; 0: never).
        honours_convert_rgb: False models a backend that accepts ``CONVERT_RGB = 0`` and goes on
            returning BGR anyway.
        open_delay: seconds every open takes (in the thread that opens it).
        open_gate: if given, every open waits (up to 60 s) for this event to be set.
        mark: paint every picture's corner in ``MARKS[mark]`` (None: no mark).
    """

    def __init__(
        self,
        *,
        formats: tuple[str, ...] = ("YUYV", "MJPG"),
        dht_less_every: int = 3,
        truncated_every: int = 10,
        wrong_size_every: int = 0,
        honours_convert_rgb: bool = True,
        open_delay: float = 0.0,
        open_gate: threading.Event | None = None,
        mark: int | None = None,
    ) -> None:
        self.mark = mark
        self.open_delay = open_delay
        self.open_gate = open_gate
        self.opening = threading.Event()  # set when an open begins (before delay and gate)
        self.open_threads: list[str] = []  # the name of the thread of every open
        self.open_times: list[float] = []  # time.monotonic() at which every open began
        self.releases = 0  # open handles released
        self._open_handles = 0
        self.wrong_size_every = wrong_size_every
        self.formats = formats
        self.dht_less_every = dht_less_every
        self.truncated_every = truncated_every
        self.honours_convert_rgb = honours_convert_rgb
        self.calls: list[tuple[str, float]] = []  # every set(), in order
        self.opens: list[tuple[object, int]] = []  # (target, api) of every open
        self.sent: list[bytes] = []  # every JPEG handed out, corrupt ones included
        self._present = threading.Event()
        self._present.set()
        self._lock = threading.Lock()

    @property
    def present(self) -> bool:
        return self._present.is_set()

    def vanish(self) -> None:
        """Unplug: reads fail, opens fail."""
        self._present.clear()

    def come_back(self) -> None:
        self._present.set()

    @property
    def open_handles(self) -> int:
        """Handles open now (0: the device is free for another program)."""
        with self._lock:
            return self._open_handles

    def factory(self, target: int | str, api_preference: int) -> FakeCapture:
        """The ``capture_factory`` to give :class:`camstream.CameraThread`."""
        with self._lock:
            self.opens.append((target, api_preference))
            self.open_threads.append(threading.current_thread().name)
            self.open_times.append(time.monotonic())
        self.opening.set()
        if self.open_gate is not None:
            self.open_gate.wait(60)
        if self.open_delay:
            time.sleep(self.open_delay)  # the device's own open time (a model, not a test wait)
        capture = FakeCapture(self)
        if capture.isOpened():
            with self._lock:
                self._open_handles += 1
        return capture

    def released(self) -> None:
        """A handle that was open let go (FakeCapture.release)."""
        with self._lock:
            self._open_handles -= 1
            self.releases += 1

    def record(self, name: str, value: float) -> None:
        with self._lock:
            self.calls.append((name, value))

    def jpeg_for(self, size: tuple[int, int], index: int) -> bytes:
        n = index + 1
        if self.wrong_size_every and n % self.wrong_size_every == 0:
            size = SIZES[(SIZES.index(size) + 1) % len(SIZES)]
        data = pictures(size, self.mark)[1][index % POOL]
        if self.dht_less_every and n % self.dht_less_every == 0:
            data = strip_dht(data)
        if self.truncated_every and n % self.truncated_every == 0:
            data = data[: len(data) // 2]
        with self._lock:
            self.sent.append(data)
        return data


class FakeCapture:
    """One open handle on a :class:`FakeWebcam` (what ``cv2.VideoCapture(0, CAP_V4L2)`` is)."""

    def __init__(self, device: FakeWebcam) -> None:
        self._device = device
        self._opened = device.present
        self._format = "YUYV"
        self._size = (640, 480)
        self._pending: list[int | None] = [None, None]  # V4L2 applies width and height together
        self._fps = 30.0
        self._convert_rgb = True
        self._controls = {prop: default for prop, (_, _, default) in _CONTROL_RANGES.items()}
        self._index = 0
        self._next_at: float | None = None

    def isOpened(self) -> bool:  # noqa: N802
        return self._opened

    def getBackendName(self) -> str:  # noqa: N802
        return "V4L2"

    def release(self) -> None:
        if self._opened:
            self._device.released()
        self._opened = False

    def set(self, prop: int, value: float) -> bool:
        if not self._opened:
            return False
        self._device.record(_PROP_NAMES.get(prop, str(prop)), value)
        if prop == cv2.CAP_PROP_FOURCC:
            name = fourcc_text(value)
            if name not in self._device.formats:
                return False
            self._format = name
            self._fps = min(self._fps, self._max_fps())
            return True
        if prop in (cv2.CAP_PROP_FRAME_WIDTH, cv2.CAP_PROP_FRAME_HEIGHT):
            self._pending[prop == cv2.CAP_PROP_FRAME_HEIGHT] = int(round(value))
            if None not in self._pending:
                wanted = tuple(self._pending)
                self._pending = [None, None]
                self._size = min(
                    SIZES, key=lambda s: abs(s[0] - wanted[0]) + abs(s[1] - wanted[1])
                )
                self._fps = min(self._fps, self._max_fps())
            return True
        if prop == cv2.CAP_PROP_FPS:
            self._fps = min(max(value, 1.0), self._max_fps())
            return True
        if prop == cv2.CAP_PROP_CONVERT_RGB:
            self._convert_rgb = bool(value) or not self._device.honours_convert_rgb
            return True
        if prop in _CONTROL_RANGES:
            low, high, _ = _CONTROL_RANGES[prop]
            self._controls[prop] = min(max(float(value), low), high)
            return True
        return False  # a control this camera does not have

    def get(self, prop: int) -> float:
        if prop == cv2.CAP_PROP_FOURCC:
            return fourcc(self._format)
        if prop == cv2.CAP_PROP_FRAME_WIDTH:
            return float(self._size[0])
        if prop == cv2.CAP_PROP_FRAME_HEIGHT:
            return float(self._size[1])
        if prop == cv2.CAP_PROP_FPS:
            return self._fps
        if prop == cv2.CAP_PROP_CONVERT_RGB:
            return float(self._convert_rgb)
        return self._controls.get(prop, -1.0)

    def read(self) -> tuple[bool, np.ndarray | None]:
        if not self._opened or not self._device.present:
            return False, None
        self._pace()
        index, self._index = self._index, self._index + 1
        if self._format == "MJPG" and not self._convert_rgb:
            data = self._device.jpeg_for(self._size, index)
            return True, np.frombuffer(data, np.uint8).reshape(1, -1)
        return True, pictures(self._size, self._device.mark)[0][index % POOL].copy()

    def _max_fps(self) -> float:
        return _RATES[self._format][self._size]

    def _pace(self) -> None:
        """Deliver at the granted rate, like a camera's sensor clock."""
        now = time.monotonic()
        period = 1.0 / self._fps
        if self._next_at is None or self._next_at < now - period:
            self._next_at = now
        time.sleep(max(self._next_at - now, 0.0))
        self._next_at += period
