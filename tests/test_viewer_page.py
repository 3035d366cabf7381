"""The viewer page's controls and live numbers (issue 22 item 8, issue 18 item 4) in real
headless Chromium.

Each control is checked where it matters: on the wire (the WebSocket messages Chromium sent and
received, as its DevTools protocol reports them, decoded here), in the server's
``Streamer.stats()``, and in the tab. The page is served with its real headers (its
Content-Security-Policy included): a violation is a console error, which fails the test.

The adaptive state (``rung``, ``link_kbps``, ... in metadata) is shown by a scripted WebSocket
server that replays the real page and sends metadata with those fields, so the display is tested
whether or not the Streamer adapts yet.
"""

from __future__ import annotations

import contextlib
import json
import queue
import threading
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import cv2
import numpy as np
import pytest
from conftest import SLACK, TIMEOUT, wait_until, write_video
from test_browser import WAIT_MS, browser, page, stats, wait_for  # noqa: F401 - fixtures

# Installed before the page's own script (DevTools evaluates it, so the page's CSP does not
# apply to it): before every paint, note what the canvas and the numbers show.
PAINT_WATCH = """(() => {
    window.paints = [];
    const look = () => {
        const s = window.camstreamStats;
        if (s && s.frames > 0) {
            window.paints.push({
                frames: s.frames, framesText: document.getElementById("frames").textContent,
                sizeText: document.getElementById("size").textContent,
                width: s.width, height: s.height,
                latencyText: document.getElementById("latency").textContent,
                clockKnown: s.clockRttMs !== null,
            });
        }
        if (window.paints.length < 400) requestAnimationFrame(look);
    };
    requestAnimationFrame(look);
})();"""


# Every violation of the page's Content-Security-Policy (Chromium also logs them as errors).
CSP_WATCH = """window.cspViolations = [];
document.addEventListener("securitypolicyviolation",
    (e) => window.cspViolations.push(`${e.violatedDirective} ${e.blockedURI}`));"""


@pytest.fixture(name="tab")
def _tab(page: Any) -> Iterator[Any]:  # noqa: F811 - test_browser's fixture
    """A fresh tab in the shared headless Chromium; JavaScript errors and violations of the
    page's Content-Security-Policy on it fail the test."""
    page.add_init_script(CSP_WATCH)
    yield page
    if page.url.startswith("http"):
        assert page.evaluate("() => window.cspViolations") == []


class Wire:
    """The WebSocket traffic of one tab, as Chromium reports it (text parsed, binary kept)."""

    def __init__(self, tab: Any) -> None:
        self.urls: list[str] = []
        self.sent: list[dict[str, Any]] = []
        self.received: list[dict[str, Any] | bytes] = []
        tab.on("websocket", self._opened)

    def _opened(self, socket: Any) -> None:
        self.urls.append(socket.url)
        socket.on("framesent", lambda payload: self.sent.append(json.loads(payload)))
        socket.on("framereceived", self._received)

    def _received(self, payload: str | bytes) -> None:
        self.received.append(payload if isinstance(payload, bytes) else json.loads(payload))

    def controls(self) -> list[dict[str, Any]]:
        """The messages the page sent, its pings left out."""
        return [m for m in self.sent if m.get("type") != "ping"]

    def messages(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.received if isinstance(m, dict) and m.get("type") == kind]

    def after(self, predicate: Any) -> list[dict[str, Any] | bytes]:
        """What was received after the last text message for which ``predicate`` holds."""
        for index in range(len(self.received) - 1, -1, -1):
            message = self.received[index]
            if isinstance(message, dict) and predicate(message):
                return self.received[index + 1:]
        raise AssertionError("no such message was received")


def jpeg_size(data: bytes) -> tuple[int, int]:
    assert data[:2] == b"\xff\xd8" and data[-2:] == b"\xff\xd9", "not a whole JPEG"
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None
    return image.shape[1], image.shape[0]


def frame_rate(infos: list[dict[str, Any]]) -> tuple[float, int]:
    """Frames per second the server sent, from the ``frame`` messages' ``sent_at``."""
    sent = [m["sent_at"] for m in infos]
    assert len(sent) >= 2, infos
    return (len(sent) - 1) / (sent[-1] - sent[0]), len(sent)


def open_viewer(tab: Any, port: int, query: str = "") -> Wire:
    wire = Wire(tab)
    tab.goto(f"http://127.0.0.1:{port}/{query}", timeout=WAIT_MS)
    return wire


def choose(tab: Any, control: str, value: str, answered: str) -> None:
    """Pick ``value`` in the ``control`` select and wait until ``answered`` (JS) holds."""
    tab.select_option(control, value)
    wait_for(tab, f"() => {answered}")


def more_frames(tab: Any, count: int) -> None:
    """Wait until the page has drawn ``count`` more frames."""
    wait_for(tab, "([n, more]) => camstreamStats.frames >= n + more", [stats(tab)["frames"], count])


def infos_after(wire: Wire, predicate: Any) -> list[dict[str, Any]]:
    """The ``frame`` messages received after the last metadata for which ``predicate`` holds."""
    after = wire.after(lambda m: m["type"] == "metadata" and predicate(m))
    return [m for m in after if isinstance(m, dict) and m["type"] == "frame"]


def the_client(streamer: Any) -> dict[str, Any]:
    (client,) = streamer.stats()["clients"]
    return client


def test_the_first_painted_frame_comes_with_its_numbers(streamer_factory, tab: Any) -> None:
    """A screenshot at first paint shows the frame's count, size and (once the clock is known)
    latency: they are drawn with the frame, not by a later timer. Nothing is loaded from
    elsewhere."""
    streamer = streamer_factory("test", width=640, height=480, fps=30)
    requests: list[str] = []
    tab.on("request", lambda r: requests.append(r.url))
    tab.add_init_script(PAINT_WATCH)
    open_viewer(tab, streamer.port)
    wait_for(tab, "() => window.paints.length >= 30 && camstreamStats.latencyMs !== null")
    paints = tab.evaluate("() => window.paints")
    assert paints[0]["frames"] <= 5, paints[0]  # the watch saw the first painted frames
    for paint in paints:
        assert paint["framesText"] == str(paint["frames"]), paint
        assert paint["sizeText"] == f"{paint['width']}×{paint['height']}", paint
        if paint["clockKnown"]:  # a pong has come: the latency is on screen from then on
            assert paint["latencyText"].endswith(" ms"), paint
    assert any(p["clockKnown"] for p in paints)
    origin = f"http://127.0.0.1:{streamer.port}/"
    assert requests and all(url.startswith(origin) for url in requests), requests


def test_the_size_control_changes_the_jpegs_the_server_sends(streamer_factory, tab: Any) -> None:
    streamer = streamer_factory("test", width=640, height=480, fps=30)
    wire = open_viewer(tab, streamer.port)
    wait_for(tab, "() => camstreamStats.frames >= 3")
    assert (stats(tab)["width"], stats(tab)["height"]) == (640, 480)

    choose(tab, "#size-choice", "320", "camstreamStats.metadata.width === 320")
    assert {"type": "config", "width": 320, "height": None} in wire.sent
    assert (the_client(streamer)["width"], the_client(streamer)["height"]) == (320, None)
    more_frames(tab, 3)
    after = wire.after(lambda m: m["type"] == "metadata" and m["width"] == 320)
    jpegs = [m for m in after if isinstance(m, bytes)]
    assert stats(tab)["width"] == 320  # decoded and drawn
    assert jpegs and {jpeg_size(j) for j in jpegs} == {(320, 240)}
    assert tab.text_content("#size") == "320×240"
    assert tab.text_content("#size-now") == "→ 320×240"
    canvas = tab.evaluate("() => [document.getElementById('view').width, "
                           "document.getElementById('view').height]")
    assert canvas == [320, 240]

    # frames are never enlarged: the server says so
    choose(tab, "#size-choice", "1280", "camstreamStats.metadata.width === 640")
    assert the_client(streamer)["width"] == 1280
    assert tab.text_content("#size-now") == "→ 640×480"

    choose(tab, "#size-choice", "320", "camstreamStats.metadata.width === 320")
    # the source's size: no width, no height
    choose(tab, "#size-choice", "", "camstreamStats.metadata.width === 640")
    assert wire.controls()[-1] == {"type": "config", "width": None, "height": None}
    assert (the_client(streamer)["width"], the_client(streamer)["height"]) == (None, None)
    assert not wire.messages("error")


def test_the_rate_control_changes_the_rate_the_server_sends(streamer_factory, tab: Any) -> None:
    streamer = streamer_factory("test", width=320, height=240, fps=30)
    wire = open_viewer(tab, streamer.port)
    wait_for(tab, "() => camstreamStats.frames >= 3")

    choose(tab, "#fps-choice", "5", "camstreamStats.metadata.fps === 5")
    assert {"type": "config", "fps": 5} in wire.sent
    assert the_client(streamer)["fps"] == 5
    assert tab.text_content("#fps-now") == "→ 5 fps"
    more_frames(tab, 8)
    rate, count = frame_rate(infos_after(wire, lambda m: m["fps"] == 5))
    print(f"at 5 fps: {rate:.1f} fps over {count} frames")
    assert count >= 6 and 2.5 / SLACK < rate <= 7.5, rate  # 5 asked, measured generously
    wait_for(tab, "() => camstreamStats.fps > 0 && camstreamStats.fps <= 7.5")

    choose(tab, "#fps-choice", "240", "camstreamStats.metadata.fps === 30")  # camera rate
    more_frames(tab, 20)
    rate, count = frame_rate(infos_after(wire, lambda m: m["fps"] == 30))
    print(f"at the camera's rate (30 fps): {rate:.1f} fps over {count} frames")
    assert rate > max(15 / SLACK, 7.5), rate  # above what 5 fps could give, however busy


def test_the_quality_control_and_the_source_s_own_jpegs(
    streamer_factory, tab: Any, tmp_path: Path
) -> None:
    """With a JPEG source, "as the source" gets its JPEGs untouched (quality null); a quality
    of its own gets frames encoded at it."""
    clip = write_video(tmp_path / "clip.avi", frames=30, size=(640, 480), fps=30)
    streamer = streamer_factory(str(clip), fps=30)
    wire = open_viewer(tab, streamer.port)
    wait_for(tab, "() => camstreamStats.frames >= 3 && camstreamStats.metadata !== null")
    assert stats(tab)["metadata"]["quality"] is None  # the default: as the source
    assert tab.text_content("#quality-now") == "→ source JPEG"

    choose(tab, "#quality-choice", "30", "camstreamStats.metadata.quality === 30")
    assert {"type": "config", "quality": 30} in wire.sent
    assert the_client(streamer)["quality"] == 30
    assert tab.text_content("#quality-now") == "→ 30"
    more_frames(tab, 3)
    infos = infos_after(wire, lambda m: m["quality"] == 30)
    assert infos and {i["quality"] for i in infos} == {30}

    choose(tab, "#quality-choice", "", "camstreamStats.metadata.quality === null")
    assert wire.controls()[-1] == {"type": "config", "quality": None}
    assert the_client(streamer)["quality"] is None
    more_frames(tab, 3)
    infos = infos_after(wire, lambda m: m["quality"] is None)
    assert infos and {i["quality"] for i in infos} == {None}  # the file's JPEGs, untouched
    assert tab.text_content("#quality-now") == "→ source JPEG"


def test_the_adapt_switch_is_sent_and_tolerated(streamer_factory, tab: Any) -> None:
    """``adapt`` goes out as a config field (contracts.md); a server without adaptation
    ignores it (unknown fields are ignored) and answers with metadata as always."""
    streamer = streamer_factory("test", width=320, height=240, fps=30)
    wire = open_viewer(tab, streamer.port, "?adapt=off")
    wait_for(tab, "() => camstreamStats.frames >= 3")
    assert "adapt=off" in wire.urls[0]
    assert not tab.is_checked("#adapt-choice")
    answers = stats(tab)["metadataReceived"]

    tab.check("#adapt-choice")
    wait_for(tab, "(n) => camstreamStats.metadataReceived > n", answers)  # the answer
    assert {"type": "config", "adapt": True} in wire.sent
    more_frames(tab, 3)  # still streaming
    assert not wire.messages("error")
    metadata = stats(tab)["metadata"]
    if "adapt" in metadata:  # a server with adaptation (issue 18)
        assert metadata["adapt"] is True and the_client(streamer)["adapt"] is True
        assert tab.text_content("#adapt").startswith("on")
    else:
        assert stats(tab)["adapt"] is None
        assert tab.text_content("#adapt") == "not reported"
    assert stats(tab)["state"] == "live"


def test_pause_stops_the_frames_and_resume_brings_them_back(streamer_factory, tab: Any) -> None:
    streamer = streamer_factory("test", width=320, height=240, fps=30)
    wire = open_viewer(tab, streamer.port)
    wait_for(tab, "() => camstreamStats.frames >= 3")

    tab.click("#pause")
    wait_for(tab, "() => camstreamStats.paused === true")
    assert {"type": "pause"} in wire.sent
    assert tab.text_content("#pause") == "Resume"
    assert "paused" in tab.text_content("#state")
    assert the_client(streamer)["paused"] is True
    sent = the_client(streamer)["frames_sent"]
    captured = streamer.stats()["frames_captured"]
    # the camera makes 15 more frames (half a second): none of them reaches the viewer
    assert wait_until(lambda: streamer.stats()["frames_captured"] >= captured + 15, TIMEOUT)
    assert the_client(streamer)["frames_sent"] == sent
    tab.evaluate("() => 0")  # let the page's events through
    assert [m for m in wire.after(lambda m: m.get("paused") is True) if isinstance(m, bytes)] == []
    wait_for(tab, "() => document.getElementById('fps').textContent === '–'")

    frames = stats(tab)["frames"]
    tab.click("#pause")
    wait_for(tab, "(n) => camstreamStats.paused === false && camstreamStats.frames >= n + 5",
             frames)
    assert {"type": "resume"} in wire.sent
    assert tab.text_content("#pause") == "Pause"
    assert the_client(streamer)["frames_sent"] > sent


def test_the_snapshot_button_downloads_the_full_size_jpeg(streamer_factory, tab: Any) -> None:
    streamer = streamer_factory("test", width=640, height=480, fps=30)
    wire = open_viewer(tab, streamer.port, "?width=320")
    wait_for(tab, "() => camstreamStats.frames >= 3 && camstreamStats.width === 320")
    with tab.expect_download(timeout=WAIT_MS) as download:
        tab.click("#snapshot")
    path = download.value.path()
    data = Path(path).read_bytes()
    assert jpeg_size(data) == (640, 480)  # the camera's size, while the stream is 320 wide
    assert download.value.suggested_filename.startswith("camstream-")
    assert download.value.suggested_filename.endswith(".jpg")
    assert {"type": "snapshot", "quality": 95} in wire.sent
    (answer,) = wire.messages("snapshot")
    assert answer["bytes"] == len(data) and answer["quality"] == 95
    seen = stats(tab)
    assert seen["snapshots"] == 1 and seen["lastSnapshot"]["bytes"] == len(data)
    assert seen["width"] == 320  # the snapshot was not drawn as a frame
    assert any(e["text"].startswith("snapshot 640×480") for e in seen["events"])


def test_fullscreen_shows_the_picture_alone(streamer_factory, tab: Any) -> None:
    streamer = streamer_factory("test", width=320, height=240, fps=30)
    open_viewer(tab, streamer.port)
    wait_for(tab, "() => camstreamStats.frames >= 1")
    tab.click("#fullscreen")
    wait_for(tab, "() => document.fullscreenElement?.id === 'stage'")
    # The button follows the fullscreenchange event, which comes after the element is set.
    wait_for(tab, "() => document.querySelector('#fullscreen').textContent === 'Exit fullscreen'")
    tab.evaluate("() => document.exitFullscreen()")
    wait_for(tab, "() => document.fullscreenElement === null")
    wait_for(tab, "() => document.querySelector('#fullscreen').textContent === 'Fullscreen'")


def test_a_token_refusal_asks_for_the_token_and_never_retries_alone(
    streamer_factory, tab: Any
) -> None:
    streamer = streamer_factory("test", width=320, height=240, fps=30, token="s3cret")
    wire = open_viewer(tab, streamer.port)
    wait_for(tab, "() => camstreamStats.tokenPrompt")
    seen = stats(tab)
    assert seen["lastClose"]["code"] == 1008 and seen["lastClose"]["reason"] == "token required"
    assert seen["connects"] == 1 and not seen["retryPending"]  # nothing scheduled: no loop
    assert tab.is_visible("#token-form")
    assert "needs an access token" in tab.text_content("#token-why")

    tab.fill("#token-input", "wrong")
    tab.press("#token-input", "Enter")
    wait_for(tab, "() => camstreamStats.connects === 2 && camstreamStats.tokenPrompt "
                   "&& camstreamStats.lastClose.reason === 'invalid token'")
    assert not stats(tab)["retryPending"]
    assert "refused" in tab.text_content("#token-why")
    assert streamer.stats()["client_count"] == 0

    tab.fill("#token-input", "s3cret")
    tab.press("#token-input", "Enter")
    wait_for(tab, "() => camstreamStats.frames >= 5")
    assert not tab.is_visible("#token-form")
    assert stats(tab)["connects"] == 3 and stats(tab)["state"] == "live"
    assert [u.count("token=") for u in wire.urls] == [0, 1, 1]
    assert "token=s3cret" in wire.urls[-1]
    assert streamer.stats()["client_count"] == 1
    assert "s3cret" not in tab.url  # the token is not put into the page's address


@pytest.mark.parametrize("source", ["test", "file"])
def test_the_status_says_what_the_source_is(
    streamer_factory, tab: Any, tmp_path: Path, source: str
) -> None:
    if source == "file":
        streamer = streamer_factory(str(write_video(tmp_path / "clip.avi")), fps=10)
    else:
        streamer = streamer_factory("test", width=320, height=240, fps=10)
    open_viewer(tab, streamer.port)
    wait_for(tab, "() => camstreamStats.frames >= 1")
    state = tab.text_content("#state")
    if source == "test":
        assert state == "live · test pattern (no camera)"
        assert stats(tab)["source"] == "test pattern"
        assert tab.text_content("#source") == "320×240 BGR 10 fps"
    else:
        assert "test pattern" not in state and state.startswith("live")
        assert tab.text_content("#source").startswith("160×120 MJPG")


def test_settings_chosen_on_the_page_survive_a_reconnect(streamer_factory, tab: Any) -> None:
    first = streamer_factory("test", width=640, height=480, fps=30)
    port = first.port
    wire = open_viewer(tab, port)
    wait_for(tab, "() => camstreamStats.frames >= 1")
    choose(tab, "#size-choice", "320", "camstreamStats.metadata.width === 320")
    choose(tab, "#fps-choice", "10", "camstreamStats.metadata.fps === 10")
    first.stop()
    wait_for(tab, "() => camstreamStats.lastClose !== null")
    second = streamer_factory("test", port=port, width=640, height=480, fps=30)
    wait_for(tab, "() => camstreamStats.state === 'live' && camstreamStats.connects >= 2 "
                   "&& camstreamStats.metadata !== null")
    assert "width=320" in wire.urls[-1] and "fps=10" in wire.urls[-1]
    client = the_client(second)
    assert (client["width"], client["fps"]) == (320, 10)


# The adaptive state, from a scripted server


class ScriptedServer:
    """Serves the real viewer page (body and headers as a Streamer sends them) and plays a
    script of WebSocket messages to the tab."""

    def __init__(self, page_body: bytes, page_headers: list[tuple[str, str]]) -> None:
        from websockets.datastructures import Headers
        from websockets.http11 import Response
        from websockets.sync.server import serve

        self.script: queue.Queue[str | bytes | None] = queue.Queue()

        def process_request(connection: Any, request: Any) -> Any:
            if request.headers.get("Upgrade", "").lower() == "websocket":
                return None
            headers = Headers(page_headers)
            headers["Content-Length"] = str(len(page_body))
            return Response(200, "OK", headers, page_body)

        # open_timeout: Chromium keeps a spare connection open without a request, and the
        # shutdown waits for its handshake to time out.
        self.server = serve(self._play, "127.0.0.1", 0, process_request=process_request,
                            compression=None, open_timeout=TIMEOUT / 5)
        self.port = self.server.socket.getsockname()[1]
        self.thread = threading.Thread(target=self.server.serve_forever, name="scripted-ws")

    def _play(self, connection: Any) -> None:
        while (item := self.script.get(timeout=TIMEOUT * 3)) is not None:
            connection.send(item)

    def send(self, *items: dict[str, Any] | bytes) -> None:
        for item in items:
            self.script.put(item if isinstance(item, bytes) else json.dumps(item))


@contextlib.contextmanager
def scripted_server(streamer_factory: Any) -> Iterator[ScriptedServer]:
    real = streamer_factory("test", width=160, height=120, fps=5)
    with urllib.request.urlopen(f"http://127.0.0.1:{real.port}/", timeout=TIMEOUT) as answer:
        body = answer.read()
        headers = [(k, v) for k, v in answer.headers.items() if k.lower() != "content-length"]
    real.stop()
    assert any(k == "Content-Security-Policy" for k, _ in headers)
    server = ScriptedServer(body, headers)
    server.thread.start()
    try:
        yield server
    finally:
        server.script.put(None)
        server.server.shutdown()
        server.thread.join(TIMEOUT)
        assert not server.thread.is_alive()


def metadata(**fields: Any) -> dict[str, Any]:
    return {
        "type": "metadata", "protocol": 1, "width": 320, "height": 240, "fps": 30,
        "format": "MJPEG", "quality": 80, "max_bytes": None, "frame_info": True,
        "paused": False, "source_width": 640, "source_height": 480, "source_format": "MJPG",
        "source_fps": 30, "camera": "streaming", **fields,
    }


def jpeg(width: int, height: int) -> bytes:
    image = np.full((height, width, 3), (40, 160, 90), np.uint8)
    ok, data = cv2.imencode(".jpg", image)
    assert ok
    return data.tobytes()


def test_the_adaptive_state_is_shown_from_the_metadata(streamer_factory, tab: Any) -> None:
    with scripted_server(streamer_factory) as server:
        server.send(metadata(adapt=True, rung=0, rungs=4, link_kbps=8200.0, rtt_ms=3.4,
                             adapt_reason=None), jpeg(320, 240))
        open_viewer(tab, server.port)
        wait_for(tab, "() => camstreamStats.frames === 1")
        assert tab.text_content("#adapt") == "on · rung 0/4 · 8.2 Mbit/s · rtt 3 ms"
        assert stats(tab)["adapt"] == {"adapt": True, "rung": 0, "rungs": 4,
                                        "link_kbps": 8200.0, "rtt_ms": 3.4, "adapt_reason": None}
        assert tab.is_checked("#adapt-choice")
        assert tab.text_content("#state") == "live · camera streaming"  # not the test pattern

        # the link gets worse: a new metadata comes before the first frame of the lower rung
        server.send(metadata(adapt=True, rung=2, rungs=4, width=160, height=120, quality=60,
                             link_kbps=640, rtt_ms=48.6, adapt_reason="link"), jpeg(160, 120))
        wait_for(tab, "() => camstreamStats.frames === 2")
        assert tab.text_content("#adapt") == "on · rung 2/4 · 640 kbit/s · rtt 49 ms"
        assert tab.text_content("#size") == "160×120"
        assert any(e["text"].startswith("adaptation: rung 0 → 2 (link), now 160×120 quality 60")
                   for e in stats(tab)["events"])

        # adaptation off for this viewer (a config answer): the switch follows the server
        server.send(metadata(adapt=False, rung=0, rungs=1, link_kbps=None, rtt_ms=None,
                             adapt_reason="config"), jpeg(320, 240))
        wait_for(tab, "() => camstreamStats.frames === 3")
        assert tab.text_content("#adapt") == "off · rung 0/1"
        assert not tab.is_checked("#adapt-choice")
        tab.goto("about:blank")  # before the server goes: the page would try to reconnect



SOURCE_STATES = [
    ({"source_kind": "url"}, "live · relayed stream streaming"),
    ({"source_kind": "test"}, "live · test pattern (no camera)"),
    ({"source_kind": "device", "camera": "lost"}, "camera lost — waiting for it"),
    ({"source_kind": "__proto__"}, "live · camera streaming"),  # unknown: the format decides
    ({"source_format": "BGR"}, "live · test pattern (no camera)"),  # a server without the kind
    ({"paused": True}, "paused · camera"),
]


def test_the_status_follows_the_source_kind_in_metadata(streamer_factory, tab: Any) -> None:
    """A ``source_kind`` in metadata (camstream's source kinds), if the server sends one, names
    the source; without it the test pattern is known by its pixel format."""
    with scripted_server(streamer_factory) as server:
        open_viewer(tab, server.port)
        for count, (fields, state) in enumerate(SOURCE_STATES, 1):
            server.send(metadata(**fields), jpeg(320, 240))
            wait_for(tab, "(n) => camstreamStats.frames === n", count)
            assert tab.text_content("#state") == state, fields
        tab.goto("about:blank")
