"""The browser viewer (``/``) in a real headless Chromium, driven by Playwright.

Needs Debian's ``chromium`` (or ``CAMSTREAM_BROWSER`` pointing at a Chromium) and the
``playwright`` Python package; Playwright's own browser downloads are not used. Without them,
these tests skip and say why.

``CAMSTREAM_SCREENSHOTS=1`` also writes ``docs/images/browser-viewer.png``.
"""

from __future__ import annotations

import contextlib
import http.server
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest
from conftest import SLACK, TIMEOUT, write_video

BROWSER = os.environ.get("CAMSTREAM_BROWSER", "/usr/bin/chromium")
BROWSER_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "images" / "browser-viewer.png"
WAIT_MS = TIMEOUT * 3 * 1000  # browser waits: page load, decode, reconnect backoff

# Page-side checks. Each is an arrow function: Playwright evaluates bare expressions with
# eval(), which the viewer's Content-Security-Policy forbids.
CANVAS_PIXELS = """() => {
    const canvas = document.getElementById("view");
    const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
    const colours = new Set();
    let lit = 0;
    for (let i = 0; i < data.length; i += 4 * 97) {  // a sample of pixels
        if (data[i] + data[i + 1] + data[i + 2] > 60) lit += 1;
        colours.add((data[i] >> 4) << 8 | (data[i + 1] >> 4) << 4 | data[i + 2] >> 4);
    }
    return {width: canvas.width, height: canvas.height, lit, colours: colours.size,
            sampled: Math.floor(data.length / (4 * 97))};
}"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium for the module (starting one takes seconds)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("Playwright for Python is not installed (pip install playwright)")
    if not (os.path.isfile(BROWSER) or shutil.which(BROWSER)):
        pytest.skip(
            f"no Chromium at {BROWSER} (apt-get install chromium, or set CAMSTREAM_BROWSER)"
        )
    with (
        tempfile.TemporaryDirectory(prefix="camstream-chromium-") as profile,
        sync_playwright() as playwright,
    ):
        context = playwright.chromium.launch_persistent_context(
            profile,
            executable_path=BROWSER,
            args=BROWSER_ARGS,
            headless=True,
            viewport={"width": 900, "height": 700},
            timeout=WAIT_MS,
        )
        try:
            yield context
        finally:
            context.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh tab; JavaScript errors on it fail the test."""
    tab = browser.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda error: errors.append(str(error)))
    tab.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    try:
        yield tab
    finally:
        tab.close()
    assert not errors, errors


def stats(page: Any) -> dict[str, Any]:
    return page.evaluate("() => window.camstreamStats")


def wait_for(page: Any, condition: str, arg: Any = None) -> None:
    """Wait (up to WAIT_MS) until ``condition``, a JS arrow function, returns true."""
    page.wait_for_function(condition, arg=arg, timeout=WAIT_MS)


def test_viewer_draws_frames_and_shows_size_fps_and_latency(streamer_factory, page: Any) -> None:
    streamer = streamer_factory("test", width=640, height=480, fps=30)
    page.goto(f"http://127.0.0.1:{streamer.port}/", timeout=WAIT_MS)
    wait_for(page, "() => camstreamStats.frames >= 10")
    first = stats(page)
    assert (first["width"], first["height"]) == (640, 480)
    wait_for(
        page,
        "([n, fps]) => camstreamStats.frames >= n + 45 && camstreamStats.fps > fps "
        "&& camstreamStats.latencyMs !== null",
        [first["frames"], 15 / SLACK],
    )
    later = stats(page)
    print(
        f"browser viewer: {later['fps']} fps, latency {later['latencyMs']:.1f} ms "
        f"(ping round trip {later['clockRttMs']:.1f} ms), {later['dropped']} frames dropped"
    )
    assert later["state"] == "live" and later["lastClose"] is None
    assert 15 / SLACK < later["fps"] <= 36, later  # the camera's 30, measured over 2 s
    # Capture to display on one machine. The clock offset from ping/pong is off by at most
    # half the round trip (plus Date.now()'s millisecond), so that is the lower bound.
    assert -later["clockRttMs"] / 2 - 1 <= later["latencyMs"] < 1000 * SLACK, later
    pixels = page.evaluate(CANVAS_PIXELS)
    assert (pixels["width"], pixels["height"]) == (640, 480)
    assert pixels["lit"] > pixels["sampled"] // 3 and pixels["colours"] >= 8, pixels  # not blank
    wait_for(  # on screen, too (the numbers are refreshed four times a second)
        page,
        "() => document.getElementById('fps').textContent !== '–' "
        "&& document.getElementById('latency').textContent.endsWith(' ms')",
    )
    assert page.text_content("#size") == "640×480"
    assert page.text_content("#latency").endswith(" ms")
    assert int(page.text_content("#frames")) > 0
    # the WebSocket viewer is counted by the server like any other, with frame_info on
    (client,) = streamer.stats()["clients"]
    assert client["frames_sent"] >= later["frames"]
    if os.environ.get("CAMSTREAM_SCREENSHOTS") == "1":
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOT))


def test_viewer_passes_its_token_and_settings_to_the_websocket(streamer_factory, page: Any) -> None:
    streamer = streamer_factory("test", width=640, height=480, fps=30, token="s3cret")
    page.goto(f"http://127.0.0.1:{streamer.port}/?token=s3cret&width=320&fps=10", timeout=WAIT_MS)
    wait_for(page, "() => camstreamStats.frames >= 15")
    seen = stats(page)
    assert (seen["width"], seen["height"]) == (320, 240), seen
    assert seen["fps"] <= 13, seen  # it asked for 10
    (client,) = streamer.stats()["clients"]
    assert (client["width"], client["fps"]) == (320, 10)


@pytest.mark.parametrize(
    "query, reason", [("?token=wrong", "invalid token"), ("", "token required")]
)
def test_viewer_shows_a_refusal_and_does_not_retry(
    streamer_factory, page: Any, query: str, reason: str
) -> None:
    streamer = streamer_factory("test", width=160, height=120, token="s3cret")
    page.goto(f"http://127.0.0.1:{streamer.port}/{query}", timeout=WAIT_MS)
    wait_for(page, "() => camstreamStats.lastClose !== null")
    seen = stats(page)
    assert seen["lastClose"]["code"] == 1008 and seen["lastClose"]["reason"] == reason
    assert seen["state"] == "refused" and seen["frames"] == 0
    assert page.get_attribute("body", "data-state") == "refused"
    assert f"1008: {reason}" in page.text_content("#state")
    assert reason in page.text_content("#events")
    assert page.is_visible("#reconnect")


def test_viewer_reconnects_after_the_server_comes_back(streamer_factory, page: Any) -> None:
    first = streamer_factory("test", width=160, height=120, fps=30)
    port = first.port
    page.goto(f"http://127.0.0.1:{port}/", timeout=WAIT_MS)
    wait_for(page, "() => camstreamStats.frames >= 5")
    first.stop()
    wait_for(page, "() => camstreamStats.lastClose !== null")
    seen = stats(page)
    assert seen["lastClose"]["code"] == 1001 and seen["state"] in ("closed", "connecting")
    assert "1001" in page.text_content("#events")
    frames = seen["frames"]
    streamer_factory("test", port=port, width=320, height=240, fps=30)
    wait_for(
        page, "(n) => camstreamStats.frames >= n + 5 && camstreamStats.state === 'live'", frames
    )
    assert stats(page)["width"] == 320  # frames from the new server


def test_viewer_shows_camera_lost_and_restored(streamer_factory, page: Any, tmp_path: Path) -> None:
    clip = write_video(tmp_path / "clip.avi", frames=6, size=(160, 120), fps=30)
    streamer = streamer_factory(str(clip), fps=30)
    page.goto(f"http://127.0.0.1:{streamer.port}/", timeout=WAIT_MS)
    wait_for(page, "() => camstreamStats.frames >= 3")
    hidden = clip.with_suffix(".hidden")
    clip.rename(hidden)  # the looping file vanishes: the source is lost
    try:
        wait_for(page, "() => camstreamStats.events.some(e => e.text.startsWith('camera lost'))")
        assert "lost" in page.text_content("#state")
    finally:
        hidden.rename(clip)
    wait_for(page, "() => camstreamStats.events.some(e => e.text.startsWith('camera restored'))")
    frames = stats(page)["frames"]
    wait_for(page, "(n) => camstreamStats.frames > n", frames)
    assert "live" in page.text_content("#state")


@contextlib.contextmanager
def foreign_site(html: str, host: str = "127.0.0.2") -> Iterator[str]:
    """A second, unrelated web server (another address: another site) serving one page."""

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server name
            body = html.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer((host, 0), Page)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), name="foreign-site")
    thread.start()
    try:
        yield f"http://{host}:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(TIMEOUT)
        assert not thread.is_alive()


EMBEDDING_PAGE = """<!doctype html><title>another site</title>
<img id="snapshot" src="http://127.0.0.1:{port}/snapshot.jpg"
     onload="window.snapshotDone = true" onerror="window.snapshotDone = true">
<img id="stream" src="http://127.0.0.1:{port}/stream.mjpg"
     onload="window.streamDone = true" onerror="window.streamDone = true">"""
IMAGE_WIDTHS = """() => ({snapshot: document.getElementById("snapshot").naturalWidth,
                          stream: document.getElementById("stream").naturalWidth})"""


@pytest.mark.parametrize("allowed", [False, True], ids=["refused", "allowed-origin"])
def test_a_page_of_another_site_gets_no_frames(streamer_factory, browser: Any, allowed) -> None:
    """<img> tags on another site's page (issue #11 item 7); with ``allowed_origins`` they
    work, which shows that the page would otherwise get frames."""
    streamer = streamer_factory(
        "test", width=160, height=120, fps=10,
        allowed_origins=["http://127.0.0.2"] if allowed else None,
    )
    tab = browser.new_page()  # not the `page` fixture: refused images log console errors
    try:
        with foreign_site(EMBEDDING_PAGE.format(port=streamer.port)) as url:
            tab.goto(url, timeout=WAIT_MS)
            if allowed:
                wait_for(tab, "() => document.getElementById('stream').naturalWidth > 0 "
                              "&& window.snapshotDone")
                assert tab.evaluate(IMAGE_WIDTHS) == {"snapshot": 160, "stream": 160}
            else:
                wait_for(tab, "() => window.snapshotDone && window.streamDone")
                assert tab.evaluate(IMAGE_WIDTHS) == {"snapshot": 0, "stream": 0}
                assert streamer.stats()["http"]["refused"] >= 2  # refused by the server
                assert streamer.stats()["http"]["mjpeg_opened"] == 0
    finally:
        tab.close()


def test_the_same_origin_can_still_read_frames(streamer_factory, page: Any) -> None:
    """The viewer page's own origin fetches the snapshot and the stats (Sec-Fetch-Site:
    same-origin), so the cross-site rule does not touch it."""
    streamer = streamer_factory("test", width=160, height=120, fps=10)
    page.goto(f"http://127.0.0.1:{streamer.port}/", timeout=WAIT_MS)
    got = page.evaluate("""async () => {
        const snapshot = await fetch("/snapshot.jpg");
        const bytes = (await snapshot.arrayBuffer()).byteLength;
        const stats = await (await fetch("/stats.json")).json();
        return {status: snapshot.status, bytes, corp: snapshot.headers.get(
            "cross-origin-resource-policy"), uptime: stats.uptime_s};
    }""")
    assert got["status"] == 200 and got["bytes"] > 1000 and got["corp"] == "same-origin", got
