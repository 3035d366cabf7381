"""A detector in push mode: moving objects boxed as data with each frame, toggled by viewers.

Your OpenCV loop keeps its pixels clean and sends what it found *with* each frame: every viewer
that asks for data (``?data=1``) gets ``{"boxes": [...], ...}`` right before that frame's JPEG,
and draws the boxes itself (crisp at any size). Viewers answer with ``app`` messages: here
``{"detect": true|false}`` (or ``{"toggle": "detect"}``) switches the detector, and every viewer
in the conversation hears the new state.

The scene is camstream's test pattern (a ball crossing colour bars); moving objects come from
OpenCV's background subtraction (MOG2). ``--camera 0`` runs the same detector on a webcam.

    python examples/detector.py                      # serves ws://127.0.0.1:8765/
    # a browser:  http://127.0.0.1:8765/?data=1      (the page draws the boxes)
    # Godot:      godot --path examples/godot -- --data   (boxes over the video; D toggles)
    # Python:     Client(url, data=True): frame.data["boxes"]; client.send_app({"detect": False})

Data of a frame (coordinates in the frame's own pixels, ``width`` x ``height``):
``{"boxes": [{"x", "y", "w", "h", "label"}], "detecting": bool, "width": W, "height": H}``.
"""

from __future__ import annotations

import argparse
import logging
import threading
import time
from typing import Any, Iterator

import cv2
import numpy as np

from camstream import AppClient, Streamer
from camstream.capture.testpattern import TestPattern

logger = logging.getLogger("detector")

MIN_AREA = 150  # pixels (at the detector's scale): smaller changes are noise
DETECT_SCALE = 0.5  # the detector works on a half-size picture: 4 times less work
WARM_UP = 30  # frames the background model learns from before it reports anything


class MotionDetector:
    """Moving-object boxes from background subtraction (cv2.createBackgroundSubtractorMOG2)."""

    def __init__(self, ignore: list[tuple[int, int, int, int]] | None = None) -> None:
        self._subtractor = cv2.createBackgroundSubtractorMOG2(
            history=120, varThreshold=32, detectShadows=False
        )
        self._kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
        self._ignore = ignore or []  # (x, y, w, h) regions that change without moving
        self._seen = 0

    def boxes(self, image: np.ndarray) -> list[dict[str, Any]]:
        """The moving objects in ``image``, as boxes in its own pixels."""
        small = cv2.resize(image, None, fx=DETECT_SCALE, fy=DETECT_SCALE,
                           interpolation=cv2.INTER_AREA)
        mask = self._subtractor.apply(small)
        self._seen += 1
        if self._seen <= WARM_UP:  # everything looks new to a model that has seen nothing
            return []
        for x, y, w, h in self._ignore:
            s = DETECT_SCALE
            mask[int(y * s):int((y + h) * s), int(x * s):int((x + w) * s)] = 0
        mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, self._kernel)
        mask = cv2.dilate(mask, self._kernel, iterations=2)
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        found = []
        for contour in contours:
            if cv2.contourArea(contour) < MIN_AREA:
                continue
            x, y, w, h = cv2.boundingRect(contour)
            # Plain ints (JSON has no numpy numbers), back in the frame's pixels.
            found.append({
                "x": int(x / DETECT_SCALE), "y": int(y / DETECT_SCALE),
                "w": int(w / DETECT_SCALE), "h": int(h / DETECT_SCALE), "label": "moving",
            })
        return found


class Commands:
    """What viewers may ask (``on_message``, in each viewer's reader thread): detection on/off.

    The detection loop reads :attr:`detecting` once a frame; a change is told to every viewer
    in the conversation (``broadcast``) and confirmed to the one who asked.
    """

    def __init__(self) -> None:
        self._on = threading.Event()
        self._on.set()
        self.streamer: Streamer | None = None

    @property
    def detecting(self) -> bool:
        return self._on.is_set()

    def __call__(self, client: AppClient, value: Any) -> None:
        if not isinstance(value, dict):
            client.send({"error": "send {\"detect\": true|false} or {\"toggle\": \"detect\"}"})
            return
        if value.get("toggle") == "detect":
            wanted = not self.detecting
        elif isinstance(value.get("detect"), bool):
            wanted = value["detect"]
        else:
            client.send({"error": "unknown command", "got": value})
            return
        if wanted:
            self._on.set()
        else:
            self._on.clear()
        logger.info("client %s (%s) turned detection %s", client.id, client.address,
                    "on" if wanted else "off")
        if self.streamer is not None:
            self.streamer.broadcast({"detecting": wanted, "by": client.id})
        client.send({"ok": True, "detecting": wanted})


def frames(camera: int | None, width: int, height: int, fps: float) -> Iterator[np.ndarray]:
    """The pictures to publish: the test pattern at ``fps``, or a webcam's frames."""
    if camera is None:
        pattern = TestPattern(width, height)
        index = 0
        while True:
            yield pattern.render(index, fps)
            index += 1
    capture = cv2.VideoCapture(camera)
    if not capture.isOpened():
        raise SystemExit(f"detector: cannot open camera {camera}")
    try:
        while True:
            ok, image = capture.read()
            if not ok:
                raise SystemExit(f"detector: camera {camera} stopped delivering frames")
            yield image
    finally:
        capture.release()


def text_bands(width: int, height: int) -> list[tuple[int, int, int, int]]:
    """The test pattern's counter and clock: they change every frame without moving."""
    scale = max(height / 480.0, 0.35)
    return [(0, 0, width, int(60 * scale)), (0, height - int(40 * scale), width, int(40 * scale))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--camera", type=int, default=None, help="a webcam instead of the pattern")
    parser.add_argument("--seconds", type=float, default=None, help="stop after this long")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")

    commands = Commands()
    detector = MotionDetector(text_bands(args.width, args.height) if args.camera is None else [])
    with Streamer("push", port=args.port, fps=args.fps, on_message=commands) as streamer:
        commands.streamer = streamer
        print(f"detector: publishing to {streamer.url} "
              f"(browser: http://127.0.0.1:{streamer.port}/?data=1; Ctrl+C to stop)", flush=True)
        start = next_frame = time.monotonic()
        count = 0
        try:
            for image in frames(args.camera, args.width, args.height, args.fps):
                if args.seconds is not None and time.monotonic() - start >= args.seconds:
                    break
                detecting = commands.detecting
                boxes = detector.boxes(image) if detecting else []
                height, width = image.shape[:2]
                streamer.publish(image, copy=False, data={
                    "boxes": boxes, "detecting": detecting, "width": width, "height": height,
                })
                count += 1
                if args.camera is None:  # the pattern is paced here; a camera paces itself
                    next_frame += 1.0 / args.fps
                    time.sleep(max(next_frame - time.monotonic(), 0))
        except KeyboardInterrupt:
            pass
    print(f"detector: published {count} frames", flush=True)


if __name__ == "__main__":
    main()
