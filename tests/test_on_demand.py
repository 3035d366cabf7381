"""On-demand capture in CameraThread (issue 21): the source is opened, in the camera thread, when
the first viewer takes a lease, and released a grace period after the last one lets go.

Against the V4L2-like fake camera (tests/fake_capture.py) behind the capture seam: the opens and
closes the viewers' comings and goings imply, the grace period, first-frame time, a camera that
cannot open (reported, retried with backoff, given up when nobody waits), stop() in every phase,
an idle thread that sleeps, push sources that ignore it. Rates and CPU figures are in
benchmarks/on_demand.py.
"""

from __future__ import annotations

import logging
import platform
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import TIMEOUT, wait_until
from fake_capture import FakeWebcam
from helpers import frames_from

from camstream import CameraState, CameraThread, ConfigError, SourceError
from camstream.capture.report import camera_report, camera_state_fields


class Events:
    """A camera listener that keeps the events in order and lets a test wait for one."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict]] = []
        self._cond = threading.Condition()

    def __call__(self, event: str, details: dict) -> None:
        with self._cond:
            self.seen.append((event, details))
            self._cond.notify_all()

    def names(self) -> list[str]:
        with self._cond:
            return [event for event, _ in self.seen]

    def wait_for(self, event: str, count: int = 1) -> dict:
        """The ``count``-th ``event`` (its details), waiting for it."""
        def found() -> list[dict]:
            return [d for e, d in self.seen if e == event]

        with self._cond:
            assert self._cond.wait_for(lambda: len(found()) >= count, TIMEOUT), (
                f"no {event} #{count}; seen {self.names()}")
            return found()[count - 1]


def on_demand_camera(webcam: FakeWebcam, grace: float, **kwargs: object) -> CameraThread:
    return CameraThread(0, on_demand=grace, capture_factory=webcam.factory, **kwargs)


def camera_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("camstream-camera")]


def test_start_opens_nothing_and_the_first_lease_opens_in_the_camera_thread(caplog) -> None:
    caplog.set_level(logging.INFO, "camstream")
    gate = threading.Event()
    webcam = FakeWebcam(open_gate=gate)
    events = Events()
    camera = on_demand_camera(webcam, 5.0)
    camera.add_listener(events)
    with camera:
        assert camera.state is CameraState.IDLE and camera.on_demand == 5.0
        assert webcam.opens == [] and camera.opens == 0 and camera.latest() is None
        assert camera_state_fields(camera)["camera"] == "idle"
        lease = camera.acquire()  # returns although the open is held at the gate
        assert webcam.opening.wait(TIMEOUT), "the lease did not start an open"
        assert camera.state is CameraState.STARTING and camera.demand == 1
        assert camera_state_fields(camera)["camera"] == "starting"  # what a new viewer is told
        assert events.wait_for("camera_starting")["reason"] == "first viewer"
        assert camera.latest() is None
        gate.set()
        frame = camera.wait_for_frame(0, TIMEOUT)
        assert frame is not None and frame.jpeg is not None
        assert camera.state is CameraState.STREAMING
        events.wait_for("camera_started")
        assert webcam.open_threads == [f"camstream-camera({'camera 0'})"]
        assert camera.opens == 1 and camera.closes == 0 and camera.open_failures == 0
        lease.release()
    assert events.names() == ["camera_starting", "camera_started"]
    assert webcam.open_handles == 0 and camera.closes == 1
    opened = [r.getMessage() for r in caplog.records if "(first viewer) in" in r.getMessage()]
    assert len(opened) == 1 and opened[0].startswith("opened camera 0 (first viewer) in "), opened
    assert "MJPG 640x480" in opened[0]


def test_opens_and_closes_are_what_the_viewers_comings_and_goings_imply(caplog) -> None:
    caplog.set_level(logging.INFO, "camstream")
    webcam = FakeWebcam()
    events = Events()
    grace = max(1.0, TIMEOUT / 10)  # twenty reconnects take far less, even on a busy machine
    camera = on_demand_camera(webcam, grace)
    camera.add_listener(events)
    with camera:
        first = camera.acquire()
        second = camera.acquire()
        frames_from(camera, 2)
        first.release()
        first.release()  # idempotent: counts once
        assert camera.demand == 1
        seq = camera.latest().seq
        # The last viewer leaves and another comes at once, twenty times over (a client that
        # reconnects): inside the grace period, so no close and no open.
        second.release()
        for _ in range(20):
            lease = camera.acquire()
            lease.release()
        third = camera.acquire()
        assert camera.wait_for_frame(seq, TIMEOUT) is not None
        assert (camera.opens, camera.closes, len(webcam.opens)) == (1, 0, 1)
        assert camera.state is CameraState.STREAMING and camera.demand == 1
        # The last viewer leaves for good: released once the grace period is over.
        third.release()
        left_at = time.monotonic()
        assert events.wait_for("camera_idle")["reason"] == f"no viewer for {grace:g} s"
        assert time.monotonic() - left_at >= grace
        assert camera.state is CameraState.IDLE and camera.closes == 1
        assert webcam.open_handles == 0 and webcam.releases == 1
        assert camera.latest() is None, "an idle camera keeps no stale picture"
        # A viewer comes back: a second open; it leaves: a second close.
        with camera.acquire():
            frames_from(camera, 1)
            assert camera.opens == 2 and camera.state is CameraState.STREAMING
        events.wait_for("camera_idle", 2)
        assert (camera.opens, camera.closes, len(webcam.opens), webcam.releases) == (2, 2, 2, 2)
        report = camera_report(camera)
        assert report["state"] == "idle" and report["on_demand"] == grace
        assert (report["opens"], report["closes"], report["open_failures"]) == (2, 2, 0)
        assert report["demand"] == 0 and report["last_open_duration_s"] >= 0
    assert camera.closes == 2, "stop() while idle closes nothing"
    assert events.names() == ["camera_starting", "camera_started", "camera_idle"] * 2
    released = [r.getMessage() for r in caplog.records if r.getMessage().startswith("released")]
    assert released == [f"released camera 0: no viewer for {grace:g} s"] * 2


def test_first_frame_arrives_within_the_open_time_and_a_frame_interval() -> None:
    open_delay = 0.3
    webcam = FakeWebcam(open_delay=open_delay)
    with on_demand_camera(webcam, 5.0) as camera:
        asked_at = time.monotonic()
        with camera.acquire():
            frame = camera.wait_for_frame(0, TIMEOUT)
        assert frame is not None
        waited = frame.captured_monotonic - asked_at
        assert camera.last_open_duration is not None and camera.last_open_duration >= open_delay
        assert camera.last_open_at is not None and asked_at < camera.last_open_at
        assert open_delay <= waited <= open_delay + 1 / 30 + TIMEOUT / 5, waited


def test_a_camera_that_cannot_open_is_reported_retried_with_backoff_and_given_up(
    caplog,
) -> None:
    caplog.set_level(logging.INFO, "camstream")
    webcam = FakeWebcam()
    webcam.vanish()
    events = Events()
    camera = on_demand_camera(webcam, 5.0, reconnect_delay_max=0.5)
    camera.add_listener(events)
    with camera:
        lease = camera.acquire()
        lost = events.wait_for("camera_lost")
        assert lost["reason"].startswith("cannot open camera 0: no camera there"), lost
        assert camera.state is CameraState.LOST
        assert wait_until(lambda: camera.open_failures >= 4)
        gaps = np.diff(webcam.open_times[:4])
        assert gaps[0] >= 0.2 and gaps[1] >= 0.45 and gaps[2] >= 0.45, gaps  # 0.25, 0.5, 0.5
        # The last waiter leaves: idle at once, and no more attempts.
        lease.release()
        assert events.wait_for("camera_idle")["reason"].startswith("no viewer waits any more")
        assert camera.state is CameraState.IDLE
        attempts = len(webcam.opens)
        webcam.opening.clear()
        assert not webcam.opening.wait(3 * 0.5), "an idle camera went on trying to open"
        assert len(webcam.opens) == attempts
        # A viewer again: told again; the camera comes back: frames, camera_restored.
        with camera.acquire():
            events.wait_for("camera_lost", 2)
            webcam.come_back()
            assert camera.wait_for_frame(0, TIMEOUT) is not None
            events.wait_for("camera_restored")
            assert camera.state is CameraState.STREAMING
        assert camera.opens == 1 and camera.open_failures == len(webcam.opens) - 1
    assert events.names() == [
        "camera_starting", "camera_lost", "camera_idle",
        "camera_starting", "camera_lost", "camera_restored",
    ]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and all("retrying while viewers wait" in w for w in warnings)
    assert webcam.open_handles == 0


@pytest.mark.parametrize("phase", ["idle", "opening", "streaming", "grace", "retrying"])
def test_stop_in_any_phase_joins_the_thread_and_frees_the_device(phase: str) -> None:
    webcam = FakeWebcam(open_delay=0.3 if phase == "opening" else 0.0)
    if phase == "retrying":
        webcam.vanish()
    events = Events()
    camera = on_demand_camera(webcam, 30.0, reconnect_delay_max=0.5)
    camera.add_listener(events)
    camera.start()
    lease = None
    if phase != "idle":
        lease = camera.acquire()
    if phase == "opening":
        assert webcam.opening.wait(TIMEOUT)
    if phase in ("streaming", "grace"):
        frames_from(camera, 1)
    if phase == "grace":
        lease.release()  # type: ignore[union-attr]
    if phase == "retrying":
        events.wait_for("camera_lost")
    camera.stop()
    assert camera.state is CameraState.STOPPED and not camera_threads()
    assert webcam.open_handles == 0 and camera.opens == camera.closes
    if lease is not None:
        lease.release()  # after stop(): harmless
    assert camera.wait_for_frame(0, 0.01) is None


def thread_status(native_id: int) -> dict[str, str]:
    with open(f"/proc/self/task/{native_id}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


# The futex system call's number, by machine (what /proc/.../syscall shows a blocked thread in).
FUTEX = {"x86_64": 202, "aarch64": 98}


def waits_without_timeout(native_id: int) -> bool:
    """Whether the thread is blocked in a futex wait with no timeout: it wakes only when another
    thread wakes it (a lock or Condition waited on with no timeout). A polling loop never is:
    its waits all have a timeout (the futex's 4th argument, a pointer, is then not null)."""
    with open(f"/proc/self/task/{native_id}/syscall") as f:
        fields = f.read().split()
    return fields[0] == str(FUTEX[platform.machine()]) and int(fields[4], 16) == 0


def test_an_idle_camera_thread_sleeps_on_an_event_not_a_polling_loop() -> None:
    """Its thread wakes for nothing: it is blocked on a wait with no timeout (seen in the
    kernel's record of its system call, not by watching it for a while). The CPU figure is in
    benchmarks/on_demand.py."""
    if platform.machine() not in FUTEX:
        pytest.skip(f"the futex call's number on {platform.machine()} is not known here")
    with on_demand_camera(FakeWebcam(), 1.0) as camera:
        (thread,) = camera_threads()
        native_id = thread.native_id
        assert native_id is not None
        assert wait_until(lambda: waits_without_timeout(native_id)), (
            open(f"/proc/self/task/{native_id}/syscall").read())
        assert thread_status(native_id)["State"].startswith("S")
        assert camera.state is CameraState.IDLE
        with camera.acquire():  # ... and a lease wakes it (the wait is the camera's own)
            frames_from(camera, 1)


def test_push_sources_ignore_on_demand() -> None:
    with CameraThread("push", on_demand=0) as camera:
        assert camera.on_demand is None and camera.state is CameraState.STREAMING
        lease = camera.acquire()
        assert camera.demand == 1
        frame = camera.publish(np.zeros((48, 64, 3), np.uint8))
        lease.release()
        assert camera.demand == 0 and camera.state is CameraState.STREAMING
        assert camera.latest() is frame and camera.opens == 0 and camera.closes == 0


def test_the_test_pattern_is_on_demand_too() -> None:
    events = Events()
    camera = CameraThread("test", on_demand=0, fps=30)
    camera.add_listener(events)
    with camera:
        assert camera.state is CameraState.IDLE
        with camera.acquire():
            frames_from(camera, 3)
            assert camera.state is CameraState.STREAMING
        assert events.wait_for("camera_idle")["reason"] == "no viewer for 0 s"
        assert (camera.opens, camera.closes) == (1, 1)


def test_an_always_open_camera_only_counts_leases() -> None:
    webcam = FakeWebcam()
    with CameraThread(0, capture_factory=webcam.factory) as camera:
        assert camera.opens == 1 and webcam.open_threads == [threading.current_thread().name]
        assert camera.on_demand is None and camera.state is CameraState.STREAMING
        with camera.acquire(), camera.acquire():
            assert camera.demand == 2
            frames_from(camera, 1)
        assert camera.demand == 0 and camera.state is CameraState.STREAMING
        seq = camera.latest().seq
        assert camera.wait_for_frame(seq, TIMEOUT) is not None, "frames go on without viewers"
        assert camera.closes == 0
    assert camera.closes == 1 and webcam.open_handles == 0


def test_auto_decides_at_start_and_a_missing_file_fails_there(tmp_path: Path) -> None:
    webcam = FakeWebcam()
    with CameraThread("auto", on_demand=1, capture_factory=webcam.factory) as camera:
        assert camera.source == 0 and camera.state is CameraState.IDLE
        assert (camera.opens, camera.closes, webcam.open_handles) == (1, 1, 0)
        with camera.acquire():
            frames_from(camera, 1)
            assert camera.opens == 2
    webcam.vanish()
    with CameraThread("auto", on_demand=1, capture_factory=webcam.factory) as camera:
        assert camera.source == "test" and camera.state is CameraState.IDLE
    with pytest.raises(SourceError, match="no such file"):
        CameraThread(str(tmp_path / "missing.avi"), on_demand=1).start()


@pytest.mark.parametrize("value", [-1, 86401, float("nan"), float("inf"), "10", [1]])
def test_on_demand_must_be_a_grace_period(value: object) -> None:
    with pytest.raises(ConfigError, match="on_demand must be True, False or a grace period"):
        CameraThread("test", on_demand=value)  # type: ignore[arg-type]


def test_on_demand_true_is_ten_seconds_and_false_is_off() -> None:
    assert CameraThread("test", on_demand=True).on_demand == 10.0
    assert CameraThread("test", on_demand=False).on_demand is None
    assert CameraThread("test", on_demand=0).on_demand == 0.0
