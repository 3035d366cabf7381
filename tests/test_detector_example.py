"""``examples/detector.py`` (issue 20's example): its boxes come with the frame they were found
in (the ball is inside each box of that very frame), and a viewer's command switches it."""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

from conftest import TIMEOUT, stop_process
from helpers import read_line

from camstream.client import Client

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def ball_in(image: Any, box: dict[str, int]) -> bool:
    """Whether the white ball of the test pattern (it rolls on the colour bars) is inside
    ``box`` (nearly all its pixels)."""
    white = (image[..., 0] > 235) & (image[..., 1] > 235) & (image[..., 2] > 235)
    white[: image.shape[0] // 8] = False  # the counter's white text
    white[image.shape[0] * 2 // 3:] = False  # the grey ramp and the clock, below the bars
    ys, xs = white.nonzero()
    if len(xs) < 50:
        return False
    inside = ((xs >= box["x"] - 4) & (xs <= box["x"] + box["w"] + 4)
              & (ys >= box["y"] - 4) & (ys <= box["y"] + box["h"] + 4))
    return bool(inside.mean() > 0.9)


@contextlib.contextmanager
def detector(seconds: float = 120) -> Iterator[str]:
    """``examples/detector.py`` running on a free port; yields its WebSocket URL."""
    process = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "detector.py"), "--port", "0", "--seconds", str(seconds)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        url = re.search(r"ws://\S+", read_line(process.stdout))
        assert url, "no URL"
        yield url.group(0)
    finally:
        stop_process(process)


def test_the_detector_sends_boxes_with_their_frame_and_obeys_a_toggle() -> None:
    with detector() as url:
        answers: list[Any] = []
        with Client(url, data=True, on_app=answers.append, timeout=TIMEOUT) as client:
            boxed = 0
            deadline = time.monotonic() + 3 * TIMEOUT
            for frame in client.frames():
                assert time.monotonic() < deadline, f"only {boxed} frames with a box"
                data = frame.data
                assert data["detecting"] is True and (data["width"], data["height"]) == (640, 480)
                if data["boxes"] and frame.seq > 45:  # the model's first second: learning
                    (box,) = data["boxes"]  # one ball
                    assert ball_in(frame.image, box), (frame.seq, box)
                    boxed += 1
                if boxed >= 20:
                    break
            client.send_app({"nonsense": 1})
            client.send_app({"toggle": "detect"})
            off = 0
            for frame in client.frames():
                if answers and not frame.data["detecting"]:
                    assert frame.data["boxes"] == []
                    off += 1
                if off >= 5:
                    break
        assert answers[0] == {"error": "unknown command", "got": {"nonsense": 1}}
        assert {"detecting": False, "by": answers[1]["by"]} == answers[1]
        assert answers[2] == {"ok": True, "detecting": False}
