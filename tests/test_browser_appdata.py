"""Issue 20 on the viewer page, in real headless Chromium under the page's own CSP: each frame's
data drawn over that frame (the default box overlay, or ``window.camstream.onData``), app
messages both ways (``window.camstream.sendApp`` / ``onApp``), and nothing new for a page that
did not ask."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
from helpers import running
from test_app_data import DataPublisher
from test_browser import WAIT_MS, browser, page, stats, wait_for  # noqa: F401 - fixtures
from test_viewer_page import _tab  # noqa: F401 - the tab fixture (CSP violations fail)

from camstream import AppClient, Streamer

# Installed as the page's hook (Playwright runs it through DevTools): for each frame with
# data, what the canvas shows at its centre right then, with the data and seq it came with.
RECORDING_HOOK = """() => {
    window.seen = [];
    window.camstream.onData = (value, seq, canvas, ctx) => {
        const px = ctx.getImageData(canvas.width >> 1, canvas.height >> 1, 1, 1).data;
        window.seen.push({seq, level: value.level, pixel: px[1], frames: camstreamStats.frames});
    };
}"""

BOX = {"x": 20, "y": 20, "w": 60, "h": 40, "label": "thing"}


class BoxPublisher(threading.Thread):
    """Grey 160x120 frames, each with ``{"boxes": [BOX]}`` as its data."""

    def __init__(self, streamer: Streamer) -> None:
        super().__init__(name="test-box-publisher", daemon=True)
        self.streamer = streamer
        self.stop = threading.Event()

    def run(self) -> None:
        image = np.full((120, 160, 3), 90, np.uint8)
        while not self.stop.wait(1 / 30):
            self.streamer.publish(image, data={"boxes": [BOX]})


def canvas_pixel(tab: Any, x: int, y: int) -> list[int]:
    return tab.evaluate(
        "([x, y]) => Array.from(document.getElementById('view').getContext('2d')"
        ".getImageData(x, y, 1, 1).data)", [x, y]
    )


def test_the_page_hook_sees_each_frame_with_its_own_data(streamer_factory, tab: Any) -> None:
    streamer = streamer_factory("push", fps=30)
    with running(DataPublisher(streamer, 30.0, pad=100)):
        tab.goto(f"http://127.0.0.1:{streamer.port}/", timeout=WAIT_MS)
        wait_for(tab, "() => camstreamStats.frames >= 3")
        assert stats(tab)["dataFrames"] == 0, "no data until asked"
        tab.evaluate(RECORDING_HOOK)  # setting the hook asks the server for data
        wait_for(tab, "() => window.seen.length >= 20")
        seen = tab.evaluate("() => window.seen")
    seqs = [s["seq"] for s in seen]
    assert seqs == sorted(set(seqs)), seqs
    for entry in seen:  # the canvas shows the frame whose data this is
        assert abs(entry["pixel"] - entry["level"]) <= 3, entry
    (client,) = streamer.stats()["clients"]
    assert client["data"] is True


def test_the_default_overlay_draws_the_boxes_over_their_frame(streamer_factory, tab: Any) -> None:
    streamer = streamer_factory("push", fps=30)
    with running(BoxPublisher(streamer)):
        tab.goto(f"http://127.0.0.1:{streamer.port}/?data=1", timeout=WAIT_MS)
        wait_for(tab, "() => camstreamStats.dataFrames >= 5")
        edge = canvas_pixel(tab, BOX["x"] + BOX["w"] // 2, BOX["y"])  # the box's top edge
        inside = canvas_pixel(tab, BOX["x"] + BOX["w"] // 2, BOX["y"] + BOX["h"] // 2)
        last = stats(tab)["lastData"]
    assert edge[1] > 150 and edge[0] < 120, edge  # the overlay's green
    assert all(abs(c - 90) <= 3 for c in inside[:3]), inside  # the frame itself
    assert last["value"] == {"boxes": [BOX]}


def test_app_messages_go_both_ways_from_the_page(streamer_factory, tab: Any) -> None:
    def on_message(client: AppClient, value: Any) -> None:
        client.send({"echo": value})

    streamer = streamer_factory("test", fps=10, width=64, height=48, on_message=on_message)
    tab.goto(f"http://127.0.0.1:{streamer.port}/", timeout=WAIT_MS)
    wait_for(tab, "() => camstreamStats.frames >= 1")
    assert tab.evaluate("() => window.camstream.sendApp({toggle: 'detector'})") is True
    wait_for(tab, "() => camstreamStats.appMessages.length >= 1")
    assert stats(tab)["appMessages"] == [{"echo": {"toggle": "detector"}}]
    assert "app: " in tab.text_content("#events")
    tab.evaluate("() => { window.got = []; window.camstream.onApp = (v) => window.got.push(v); }")
    assert streamer.broadcast("to the conversation") == 1  # this page has talked to the app
    wait_for(tab, "() => window.got.length >= 1")
    assert tab.evaluate("() => window.got") == ["to the conversation"]


def test_a_failing_hook_is_reported_once_and_the_stream_goes_on(
    streamer_factory, tab: Any
) -> None:
    streamer = streamer_factory("push", fps=30)
    with running(BoxPublisher(streamer)):
        tab.goto(f"http://127.0.0.1:{streamer.port}/?data=1", timeout=WAIT_MS)
        wait_for(tab, "() => camstreamStats.dataFrames >= 1")
        tab.evaluate("() => { window.camstream.onData = () => { throw new Error('oops'); }; }")
        wait_for(tab, "() => camstreamStats.hookErrors >= 5")
        frames = stats(tab)["frames"]
        wait_for(tab, "(n) => camstreamStats.frames >= n + 5", frames)
    assert tab.text_content("#events").count("the data overlay failed") == 1


