"""The viewer page on a server of several cameras (issue 21), in a real headless Chromium.

The page lists the cameras (/cameras.json) and switches between them; /NAME/ is camera NAME's
page; an on-demand camera that is opening says so. Which camera is shown is checked on the
canvas: the fake webcams (tests/fake_capture.py) paint a corner in a colour of their own.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from fake_capture import MARKS, FakeWebcam
from test_browser import WAIT_MS, browser, page, stats, wait_for  # noqa: F401 - fixtures

from camstream import CameraConfig, Streamer

CORNER = """() => {
    const canvas = document.getElementById("view");
    const [r, g, b] = canvas.getContext("2d").getImageData(24, 24, 1, 1).data;
    return [b, g, r];
}"""


@pytest.fixture
def two_cameras() -> Iterator[Any]:
    """``two_cameras(**camera settings)`` -> a started Streamer of ``front`` (mark 0, 640x480)
    and ``rear`` (mark 1, 1280x720), and their webcams."""
    started: list[Streamer] = []

    def serve(gate: threading.Event | None = None, **settings: Any) -> tuple[Streamer, dict]:
        webcams = {name: FakeWebcam(mark=mark, dht_less_every=0, truncated_every=0,
                                    open_gate=gate)
                   for mark, name in enumerate(("front", "rear"))}
        streamer = Streamer(sources={
            "front": CameraConfig(0, capture_factory=webcams["front"].factory, **settings),
            "rear": CameraConfig(0, capture_factory=webcams["rear"].factory, width=1280,
                                 height=720, **settings),
        }, port=0)
        started.append(streamer.start())
        return streamer, webcams

    yield serve
    for streamer in started:
        streamer.stop()


def corner_is(page: Any, mark: int) -> bool:  # noqa: F811
    return all(abs(a - b) < 60 for a, b in zip(page.evaluate(CORNER), MARKS[mark]))


def test_the_page_lists_the_cameras_and_switches_between_them(
    two_cameras, page: Any  # noqa: F811 - fixture
) -> None:
    streamer, _ = two_cameras()
    page.goto(f"http://127.0.0.1:{streamer.port}/", timeout=WAIT_MS)
    wait_for(page, "() => camstreamStats.frames >= 3 && camstreamStats.cameras.length === 2")
    shown = stats(page)
    assert (shown["camera"], shown["cameras"]) == (None, ["front", "rear"])
    assert (shown["width"], shown["height"]) == (640, 480) and corner_is(page, 0)
    assert page.is_visible("#camera-choice")
    assert page.eval_on_selector("#camera-choice", "(s) => s.value") == "front"
    page.select_option("#camera-choice", "rear")
    wait_for(page, "() => camstreamStats.metadata && camstreamStats.metadata.camera_name "
                   "=== 'rear' && camstreamStats.width === 1280")
    wait_for(page, "() => camstreamStats.frames >= 3")
    assert corner_is(page, 1)
    assert page.evaluate("() => location.pathname") == "/rear/"
    assert page.title() == "camstream · rear"
    # The page at /rear/ (a reload, a bookmark) shows the rear camera from the start.
    page.reload(timeout=WAIT_MS)
    wait_for(page, "() => camstreamStats.frames >= 2 && camstreamStats.cameras.length === 2")
    assert stats(page)["camera"] == "rear" and corner_is(page, 1)
    assert page.eval_on_selector("#camera-choice", "(s) => s.value") == "rear"


def test_a_single_camera_server_shows_no_menu(streamer_factory, page: Any) -> None:  # noqa: F811
    streamer = streamer_factory("test", width=64, height=48)
    page.goto(f"http://127.0.0.1:{streamer.port}/", timeout=WAIT_MS)
    wait_for(page, "() => camstreamStats.frames >= 2 && camstreamStats.cameras.length === 1")
    assert not page.is_visible("#camera-choice")


def test_an_on_demand_camera_that_is_opening_says_so(two_cameras, page: Any) -> None:  # noqa: F811
    gate = threading.Event()
    streamer, webcams = two_cameras(gate=gate, on_demand=5.0)
    try:
        page.goto(f"http://127.0.0.1:{streamer.port}/rear/", timeout=WAIT_MS)
        wait_for(page, "() => camstreamStats.metadata !== null")
        assert stats(page)["metadata"]["camera"] == "starting"
        assert "starting" in page.inner_text("#state")
        assert webcams["front"].opens == []
    finally:
        gate.set()
    wait_for(page, "() => camstreamStats.frames >= 2")
    assert "streaming" in page.inner_text("#state")
    assert any("opened" in e["text"] for e in stats(page)["events"])
