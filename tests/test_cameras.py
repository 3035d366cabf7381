"""Several cameras on one port (issue 21): named cameras, their paths, their isolation.

Fake webcams behind the capture seam (tests/fake_capture.py), each painting a corner of its
pictures in a colour of its own, so every check of "whose frame is this" is made on the decoded
picture. Real Streamers on port 0, real WebSocket, MJPEG and HTTP clients.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import SLACK, TIMEOUT, wait_until
from fake_capture import FakeWebcam, mark_of
from helpers import MjpegReader, decode_jpeg, get, next_binary, next_text, receive_for
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from camstream import CameraConfig, CameraState, ConfigError, SourceError, Streamer
from camstream.cameraset import split_path

# name -> (mark, width, height, fps)
TWO = {"front": (0, 640, 480, 30.0), "rear": (1, 1280, 720, 15.0)}
FOUR = {
    "front": (0, 640, 480, 30.0), "rear": (1, 1280, 720, 15.0),
    "left": (2, 640, 480, 10.0), "right": (3, 1920, 1080, 20.0),
}


def fake_cameras(spec: dict[str, tuple[int, int, int, float]], **webcam: Any
                 ) -> dict[str, FakeWebcam]:
    # Whole JPEGs only (no DHT-less or cut frames): the tests count frames, not damage.
    return {
        name: FakeWebcam(mark=mark, dht_less_every=0, truncated_every=0, **webcam)
        for name, (mark, *_) in spec.items()
    }


def sources_of(spec: dict[str, tuple[int, int, int, float]], webcams: dict[str, FakeWebcam],
               **settings: Any) -> dict[str, CameraConfig]:
    return {
        name: CameraConfig(0, width=w, height=h, fps=fps, capture_factory=webcams[name].factory,
                           **settings)
        for name, (_, w, h, fps) in spec.items()
    }


@pytest.fixture
def served() -> Iterator[Any]:
    """``served(spec, **streamer options)`` -> (started Streamer, its fake webcams)."""
    started: list[Streamer] = []

    def serve(spec: dict[str, tuple[int, int, int, float]], *, webcam: dict | None = None,
              **options: Any) -> tuple[Streamer, dict[str, FakeWebcam]]:
        webcams = fake_cameras(spec, **(webcam or {}))
        streamer = Streamer(sources=sources_of(spec, webcams), port=0, **options)
        started.append(streamer.start())
        return streamer, webcams

    yield serve
    for streamer in started:
        streamer.stop()


def ws_url(streamer: Streamer, path: str, query: str = "max_bytes=0") -> str:
    return f"ws://127.0.0.1:{streamer.port}{path}?{query}"


def viewer(url: str) -> Any:
    """A websockets client that queues whatever comes (so closing it never waits behind
    unread frames) and takes frames of any size."""
    return connect(url, open_timeout=TIMEOUT, max_size=2**24, max_queue=None)


def frames_of(ws: Any, count: int) -> list[bytes]:
    return [next_binary(ws) for _ in range(count)]


def test_paths_name_their_camera() -> None:
    assert split_path("/") == (None, "/")
    assert split_path("/ws") == (None, "/ws")
    assert split_path("/stream.mjpg") == (None, "/stream.mjpg")
    assert split_path("/healthz") == (None, "/healthz")
    assert split_path("/front") == ("front", "/")
    assert split_path("/front/") == ("front", "/")
    assert split_path("/front/ws") == ("front", "/ws")
    assert split_path("/front/stream.mjpg") == ("front", "/stream.mjpg")
    assert split_path("/front/a/b") == ("front", "/a/b")


def test_two_cameras_at_different_sizes_and_rates_each_reach_only_their_own_viewers(
    served,
) -> None:
    streamer, _ = served(TWO)
    assert list(streamer.cameras) == ["front", "rear"]
    with contextlib.ExitStack() as stack:
        viewers = {
            name: [stack.enter_context(viewer(ws_url(streamer, f"/{name}")))
                   for _ in range(2)]
            for name in TWO
        }
        for name, (mark, width, height, fps) in TWO.items():
            for ws in viewers[name]:
                metadata = next_text(ws, "metadata")
                assert (metadata["width"], metadata["height"]) == (width, height)
                assert metadata["source_fps"] == fps and metadata["camera_name"] == name
                for data in frames_of(ws, 5):
                    image = decode_jpeg(data)
                    assert image.shape[:2] == (height, width)
                    assert mark_of(image) == mark, f"{name}'s viewer got another camera's frame"


def test_four_cameras_by_websocket_mjpeg_and_snapshot_without_cross_talk(served) -> None:
    streamer, _ = served(FOUR)
    port = streamer.port
    for name, (mark, width, height, _) in FOUR.items():
        with viewer(ws_url(streamer, f"/{name}/ws")) as ws:
            assert {mark_of(decode_jpeg(d)) for d in frames_of(ws, 3)} == {mark}
        with MjpegReader(port, f"/{name}/stream.mjpg") as reader:
            assert reader.status == 200
            for _ in range(3):
                _, body = reader.next_part()
                image = decode_jpeg(body)
                assert mark_of(image) == mark and image.shape[:2] == (height, width)
        snapshot = get(port, f"/{name}/snapshot.jpg")
        assert snapshot.status == 200 and mark_of(decode_jpeg(snapshot.body)) == mark


def test_the_unnamed_paths_serve_the_first_camera(served) -> None:
    streamer, _ = served(TWO)
    port = streamer.port
    with viewer(streamer.url) as ws:
        assert next_text(ws, "metadata")["camera_name"] == "front"
        assert mark_of(decode_jpeg(next_binary(ws))) == TWO["front"][0]
    with MjpegReader(port) as reader:
        assert mark_of(decode_jpeg(reader.next_part()[1])) == TWO["front"][0]
    assert mark_of(decode_jpeg(get(port, "/snapshot.jpg").body)) == TWO["front"][0]
    for path in ("/", "/rear/", "/rear"):
        page = get(port, path)
        assert page.status == 200 and page.headers["content-type"].startswith("text/html")
    listed = json.loads(get(port, "/cameras.json").body)
    assert listed["default"] == "front"
    assert [(c["name"], c["default"], c["width"], c["height"], c["state"])
            for c in listed["cameras"]] == [
        ("front", True, 640, 480, "streaming"), ("rear", False, 1280, 720, "streaming")]
    assert listed["cameras"][1]["paths"] == {
        "ws": "/rear", "page": "/rear/", "mjpeg": "/rear/stream.mjpg",
        "snapshot": "/rear/snapshot.jpg", "healthz": "/rear/healthz"}


def test_unknown_cameras_and_paths_are_refused_clearly(served) -> None:
    streamer, _ = served(TWO)
    port = streamer.port
    with pytest.raises(InvalidStatus) as refused:
        viewer(ws_url(streamer, "/side"))
    assert refused.value.response.status_code == 404
    assert b"no such camera" in refused.value.response.body
    with pytest.raises(InvalidStatus) as refused:
        viewer(ws_url(streamer, "/front/stream.mjpg"))
    assert refused.value.response.status_code == 404
    for path in ("/side/stream.mjpg", "/side/", "/side/snapshot.jpg"):
        response = get(port, path)
        assert response.status == 404 and b"/cameras.json" in response.body, path
    assert get(port, "/front/nothing").status == 404
    upgrade = get(port, "/rear/ws")
    assert upgrade.status == 426 and upgrade.body.decode().strip().endswith(f":{port}/rear")


def test_one_camera_unplugged_tells_only_its_own_viewers(served) -> None:
    streamer, webcams = served(TWO)
    with viewer(ws_url(streamer, "/front")) as front, \
            viewer(ws_url(streamer, "/rear")) as rear:
        next_binary(front)
        next_binary(rear)
        webcams["rear"].vanish()
        lost = next_text(rear, "camera_lost")
        assert lost["camera_name"] == "rear"
        # Meanwhile the front camera goes on as if nothing happened, and hears nothing of it.
        texts, frames = receive_for(front, 1.0)
        assert len(frames) >= 10 / SLACK, f"front slowed down: {len(frames)} frames in 1 s"
        assert not [t for t in texts if t["type"].startswith("camera_")], texts
        assert {mark_of(decode_jpeg(d)) for d in frames} == {TWO["front"][0]}
        assert get(streamer.port, "/front/healthz").status == 200
        sick = get(streamer.port, "/healthz")
        assert sick.status == 503 and sick.body == b"no frames from rear\n"
        assert get(streamer.port, "/rear/healthz").status == 503
        webcams["rear"].come_back()
        assert next_text(rear, "camera_restored")["camera_name"] == "rear"
        assert mark_of(decode_jpeg(next_binary(rear))) == TWO["rear"][0]
        assert wait_until(lambda: get(streamer.port, "/healthz").status == 200)
    assert streamer.cameras["front"].state is CameraState.STREAMING


def test_cameras_are_added_and_removed_while_serving(served) -> None:
    streamer, _ = served(TWO)
    side_webcam = FakeWebcam(mark=2, dht_less_every=0, truncated_every=0)
    with viewer(ws_url(streamer, "/front")) as front, \
            viewer(ws_url(streamer, "/rear")) as rear:
        next_binary(front)
        next_binary(rear)
        added = streamer.add_camera("side", {"source": 0, "capture_factory": side_webcam.factory,
                                             "fps": 10})
        assert added.state is CameraState.STREAMING and list(streamer.cameras)[-1] == "side"
        with viewer(ws_url(streamer, "/side")) as side:
            assert mark_of(decode_jpeg(next_binary(side))) == 2
        with MjpegReader(streamer.port, "/rear/stream.mjpg") as mjpeg:
            mjpeg.next_part()
            streamer.remove_camera("rear")
            with pytest.raises(Exception) as closed:  # noqa: PT011 - ConnectionClosed
                while True:
                    rear.recv(timeout=TIMEOUT)
            assert closed.value.rcvd.code == 1001 and closed.value.rcvd.reason == "camera removed"
            with pytest.raises(EOFError):
                while True:
                    mjpeg.next_part()
        assert list(streamer.cameras) == ["front", "side"]
        assert get(streamer.port, "/rear/snapshot.jpg").status == 404
        assert [c["name"] for c in json.loads(get(streamer.port, "/cameras.json").body)[
            "cameras"]] == ["front", "side"]
        # The front camera never noticed.
        assert len(receive_for(front, 0.5)[1]) >= 5 / SLACK
        # Removing the first camera makes the next one the default.
        streamer.remove_camera("front")
        with viewer(streamer.url) as ws:
            assert next_text(ws, "metadata")["camera_name"] == "side"
    assert side_webcam.open_handles == 1
    with pytest.raises(ConfigError, match="no camera named 'rear'"):
        streamer.remove_camera("rear")
    with pytest.raises(ConfigError, match="already"):
        streamer.add_camera("side", "test")
    with pytest.raises(ConfigError, match="'side' already .*differ only in case"):
        streamer.add_camera("SIDE", "test")


def test_a_slow_open_in_add_camera_holds_up_no_stop_or_remove(served) -> None:
    """add_camera() opens the source outside the cameras' lock: remove_camera() and stop()
    go on while it opens; a Streamer stopped meanwhile gets no camera (a clear error, the
    camera released)."""
    streamer, _ = served(TWO)
    gate = threading.Event()
    slow = FakeWebcam(mark=2, open_gate=gate)
    outcome: list[BaseException | None] = []

    def add() -> None:
        try:
            streamer.add_camera("slow", {"source": 0, "capture_factory": slow.factory})
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the test's thread
            outcome.append(exc)

    adder = threading.Thread(target=add, name="test-add-camera")
    adder.start()
    try:
        assert wait_until(lambda: len(slow.opens) == 1)
        with pytest.raises(ConfigError, match="already"):  # its name is taken while it opens
            streamer.add_camera("slow", "test")
        streamer.remove_camera("rear")  # the open (waiting on the gate) holds neither up
        stopper = threading.Thread(target=streamer.stop, name="test-stop")
        stopper.start()
        stopper.join(TIMEOUT)
        assert not stopper.is_alive(), "stop() waited for add_camera()'s open"
    finally:
        gate.set()
        adder.join(TIMEOUT)
    assert not adder.is_alive() and len(outcome) == 1
    assert isinstance(outcome[0], ConfigError) and "stopped while" in str(outcome[0])
    assert "slow" not in streamer.cameras and slow.open_handles == 0


def test_a_camera_that_cannot_open_is_not_added(served) -> None:
    streamer, _ = served(TWO)
    gone = FakeWebcam()
    gone.vanish()
    with pytest.raises(SourceError, match="camera 'side'"):
        streamer.add_camera("side", CameraConfig(0, capture_factory=gone.factory))
    assert list(streamer.cameras) == ["front", "rear"] and gone.open_handles == 0


@pytest.mark.parametrize(
    ("sources", "message"),
    [
        ({"bad name": "test"}, "camera name 'bad name'"),
        ({"x" * 33: "test"}, "1 to 32 letters"),
        ({"healthz": "test"}, "server's own paths"),
        ({"WS": "test"}, "server's own paths"),
        ({}, "at least one camera"),
        ({"a": {"source": "test", "colour": 1}}, "camera 'a': unknown setting colour"),
        ({"a": {"width": 100}}, "camera 'a': no 'source'"),
        ({"a": CameraConfig("test", fps=0)}, "camera 'a': fps must be"),
        ({"a": CameraConfig("test", quality=101)}, "camera 'a': quality must be"),
        ({"a": 1.5}, "camera 'a': give a source"),
    ],
)
def test_bad_camera_names_and_settings_are_refused_in_the_constructor(sources, message) -> None:
    with pytest.raises(ConfigError, match=message):
        Streamer(sources=sources)


def test_source_and_sources_do_not_mix() -> None:
    with pytest.raises(ConfigError, match="source or sources"):
        Streamer("test", sources={"a": "test"})


def test_each_camera_has_its_own_settings_and_takes_the_rest_from_the_streamer(served) -> None:
    spec = {"small": (0, 640, 480, 30.0), "big": (1, 1280, 720, 30.0)}
    webcams = fake_cameras(spec)
    streamer = Streamer(
        sources={
            "small": CameraConfig(0, capture_factory=webcams["small"].factory, quality=50),
            "big": {"source": 0, "capture_factory": webcams["big"].factory, "width": 1280,
                    "height": 720},
        },
        port=0, width=640, height=480, fps=12, quality=70,
    )
    with streamer:
        small, big = streamer.cameras["small"], streamer.cameras["big"]
        assert (small.width, small.height, small.fps) == (640, 480, 12)
        assert (big.width, big.height, big.fps) == (1280, 720, 12)
        qualities = {}
        for name in spec:
            with viewer(ws_url(streamer, f"/{name}", "max_bytes=0&width=320")) as ws:
                qualities[name] = next_text(ws, "metadata")["quality"]
        assert qualities == {"small": 50, "big": 70}


def test_stats_and_health_per_camera(served) -> None:
    streamer, webcams = served(TWO)
    with viewer(ws_url(streamer, "/rear")) as ws, \
            MjpegReader(streamer.port, "/front/stream.mjpg") as mjpeg:
        frames_of(ws, 3)
        mjpeg.next_part()
        stats = streamer.stats()
        assert list(stats["cameras"]) == ["front", "rear"]
        front, rear = stats["cameras"]["front"], stats["cameras"]["rear"]
        assert (front["client_count"], front["mjpeg_active"]) == (0, 1)
        assert (rear["client_count"], rear["mjpeg_active"]) == (1, 0)
        assert rear["camera"]["width"] == 1280 and front["camera"]["width"] == 640
        assert front["healthy"] and rear["healthy"]
        assert stats["camera"] == front["camera"]  # the default camera's report on top
        assert stats["frames_captured"] == pytest.approx(
            front["frames_captured"] + rear["frames_captured"], abs=5)
        assert [c["camera"] for c in stats["clients"]] == ["rear"]
        assert [s["camera"] for s in stats["http"]["mjpeg_streams"]] == ["front"]
        served_json = json.loads(get(streamer.port, "/stats.json").body)
        assert set(served_json["cameras"]) == {"front", "rear"}
        listed = json.loads(get(streamer.port, "/cameras.json").body)["cameras"]
        assert [c["viewers"] for c in listed] == [1, 1]
    for path in ("/healthz", "/front/healthz", "/rear/healthz"):
        assert get(streamer.port, path).body == b"ok\n", path


def test_every_line_about_a_camera_names_it(served, caplog) -> None:
    caplog.set_level(logging.DEBUG, logger="camstream")
    streamer, _ = served(TWO)
    with viewer(ws_url(streamer, "/rear")) as ws:
        next_binary(ws)
        ws.send(json.dumps({"type": "config", "fps": 0}))  # refused: a DEBUG line, reader thread
        next_text(ws, "error")
    with MjpegReader(streamer.port, "/front/stream.mjpg") as reader:
        reader.next_part()
    assert wait_until(lambda: any("MJPEG stream" in r.getMessage() and "closed" in
                                  r.getMessage() for r in caplog.records))
    assert wait_until(lambda: any(" left (" in r.getMessage() for r in caplog.records))
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("camstream")]
    opened = [line for line in lines if "opened camera 0" in line]
    assert sorted(line.split("]")[0] for line in opened) == ["[front", "[rear"], opened
    connected = [line for line in lines if "connected from" in line or " left (" in line
                 or "fps: must be" in line]
    assert len(connected) == 3, connected
    assert all(line.startswith("[rear] ") for line in connected), connected
    mjpeg = [line for line in lines if "MJPEG stream" in line]
    assert mjpeg and all(line.startswith("[front] ") for line in mjpeg), mjpeg


def test_a_named_streamer_and_its_cameras_share_the_label(caplog) -> None:
    caplog.set_level(logging.INFO, logger="camstream")
    with Streamer(sources={"cam": "test"}, port=0, name="desk", width=64, height=48) as streamer:
        with viewer(streamer.url + "cam") as ws:
            next_binary(ws)
    lines = [r.getMessage() for r in caplog.records if "connected from" in r.getMessage()]
    assert lines and lines[0].startswith("[desk/cam] client "), lines


def test_one_unnamed_source_is_the_camera_named_default(streamer_factory) -> None:
    streamer = streamer_factory("test", width=64, height=48)
    assert list(streamer.cameras) == ["default"]
    with viewer(streamer.url + "default") as ws:
        metadata = next_text(ws, "metadata")
        assert "camera_name" not in metadata  # as before issue 21: nothing new for old clients
        next_binary(ws)
    assert streamer.stats()["cameras"]["default"]["frames_captured"] > 0


def test_max_clients_counts_the_viewers_of_every_camera_together(served) -> None:
    streamer, _ = served(TWO, max_clients=2)
    with viewer(ws_url(streamer, "/front")) as one, \
            MjpegReader(streamer.port, "/rear/stream.mjpg") as two:
        next_text(one, "metadata")
        two.next_part()
        with viewer(ws_url(streamer, "/rear")) as third:
            with pytest.raises(Exception) as closed:  # noqa: PT011 - ConnectionClosed
                while True:
                    third.recv(timeout=TIMEOUT)
            assert closed.value.rcvd.code == 1013


def test_push_cameras_are_published_to_by_name() -> None:
    import numpy as np

    with Streamer(sources={"a": "push", "b": "push"}, port=0) as streamer:
        with viewer(streamer.url + "b") as ws:
            next_text(ws, "metadata")
            stop = threading.Event()

            def publish() -> None:
                red = np.zeros((48, 64, 3), np.uint8)
                red[:] = (0, 0, 255)
                blue = np.zeros((48, 64, 3), np.uint8)
                blue[:] = (255, 0, 0)
                while not stop.is_set():
                    streamer.publish(red, camera="a")
                    streamer.publish(blue, camera="b")
                    stop.wait(0.02)

            publisher = threading.Thread(target=publish, daemon=True)
            publisher.start()
            try:
                for data in frames_of(ws, 3):
                    b, g, r = decode_jpeg(data).reshape(-1, 3).mean(axis=0)
                    assert b > 200 and r < 50, "camera b's viewer got camera a's frame"
            finally:
                stop.set()
                publisher.join(TIMEOUT)
        with pytest.raises(ConfigError, match="no camera named 'c'"):
            streamer.publish(np.zeros((8, 8, 3), np.uint8), camera="c")


def test_every_camera_starting_fails_the_start_and_leaves_nothing_running() -> None:
    good, gone = FakeWebcam(), FakeWebcam()
    gone.vanish()
    streamer = Streamer(sources={"good": CameraConfig(0, capture_factory=good.factory),
                                 "gone": CameraConfig(0, capture_factory=gone.factory)}, port=0)
    with pytest.raises(SourceError, match="camera 'gone'"):
        streamer.start()
    assert good.open_handles == 0
    streamer.stop()


def test_the_python_client_takes_a_camera_by_name_or_by_path(served) -> None:
    from camstream.client import Client

    streamer, _ = served(TWO)
    for client in (Client(streamer.url, camera="rear"),
                   Client(f"{streamer.url}front?fps=5", camera="rear"),
                   Client(f"{streamer.url}rear")):
        assert client.url.startswith(f"ws://127.0.0.1:{streamer.port}/rear?")
        with client:
            frame = next(iter(client))
            assert client.metadata["camera_name"] == "rear"
            assert (frame.width, frame.height) == (1280, 720)
            assert mark_of(frame.image) == TWO["rear"][0]
    with Client(streamer.url) as client:
        assert mark_of(next(iter(client)).image) == TWO["front"][0]
    for bad in ("", "a/b", "x" * 33):
        with pytest.raises(ConfigError, match="camera must be a camera name"):
            Client(streamer.url, camera=bad)


def test_a_camera_added_to_a_streamer_of_one_source_is_served_by_name(streamer_factory) -> None:
    streamer = streamer_factory("test", width=64, height=48)
    with pytest.raises(ConfigError, match="camera name 'no good'"):
        streamer.add_camera("no good", "test")
    gone = FakeWebcam()
    gone.vanish()
    with pytest.raises(SourceError, match="camera 'gone'"):
        streamer.add_camera("gone", CameraConfig(0, capture_factory=gone.factory))
    streamer.add_camera("side", CameraConfig("test", width=32, height=24))
    assert list(streamer.cameras) == ["default", "side"]
    with viewer(streamer.url + "side") as ws:
        metadata = next_text(ws, "metadata")
        assert (metadata["camera_name"], metadata["width"]) == ("side", 32)
    with viewer(streamer.url) as ws:
        metadata = next_text(ws, "metadata")
        assert (metadata["camera_name"], metadata["width"]) == ("default", 64)


def test_the_streamers_annotate_is_every_camera_s_but_a_push_one_s() -> None:
    def mark_it(frame: Any) -> dict:
        return {"w": frame.width}

    with Streamer(sources={"a": CameraConfig("test", width=64, height=48),
                           "b": CameraConfig("test", width=32, height=24,
                                             annotate=lambda frame: "own"),
                           "p": "push"},
                  port=0, annotate=mark_it) as streamer:
        for name, value in (("a", {"w": 64}), ("b", "own")):
            with viewer(f"{streamer.url}{name}?data=1") as ws:
                assert next_text(ws, "data")["value"] == value
        assert streamer.stats()["cameras"]["a"]["annotate"] is not None
        assert streamer.stats()["cameras"]["p"]["annotate"] is None
