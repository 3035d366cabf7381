"""The viewer loop's one delivery routine (camstream.delivery.viewer), without sockets.

A real ``ViewerLoop``, a real push ``CameraThread`` and a real ``EncodeCache``; the output is a
recorder that implements ``ViewerOutput`` (what a session or an MJPEG stream would write is
their own tests' business). The fan-out's call (``offer``) and the loop's own thread
(``run``) go through the same steps: these tests pin what each of them may do.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest
from conftest import TIMEOUT, wait_until

from camstream.capture.camera import CameraThread
from camstream.capture.frame import Frame
from camstream.delivery.encoder import EncodeCache, EncodedFrame, Variant
from camstream.delivery.fanout import FanOut, FanOutRound
from camstream.delivery.viewer import ViewerLoop

IMAGE = np.full((120, 160, 3), 90, np.uint8)
DEFAULT = Variant()


def wire(encoded: EncodedFrame) -> bytes:
    """A stand-in output kind's wire bytes (the round keys them by this function)."""
    return b"W" + encoded.data


class Recorder:
    """A ``ViewerOutput`` that records what the routine asks of it, in order."""

    def __init__(self, variant: Variant = DEFAULT, fps: float = 30.0) -> None:
        self.variant, self.fps = variant, fps
        self.is_open = True
        self.paused = False
        self.pending = 0  # bytes of a message the fan-out began
        self.unsent: int | None = 0
        self.owed = 0  # messages to write before the next frame (queued replies, metadata)
        self.accept_fast = True  # False: the fan-out's write finds the link busy
        self.leave_rest = 0  # bytes a fan-out write leaves unwritten
        self.log: list[tuple[str, object]] = []
        self.changed = threading.Condition()
        self.stalled_called = threading.Event()

    def _note(self, what: str, detail: object) -> None:
        with self.changed:
            self.log.append((what, detail))
            self.changed.notify_all()

    def wait_for(self, what: str, count: int = 1) -> list[object]:
        """Block (TIMEOUT-bounded) until ``count`` entries of kind ``what`` are logged."""
        with self.changed:
            assert self.changed.wait_for(
                lambda: len(self.of(what)) >= count, TIMEOUT
            ), (what, count, self.log)
            return self.of(what)

    def of(self, what: str) -> list[object]:
        return [detail for kind, detail in self.log if kind == what]

    # ViewerOutput

    def unsent_bytes(self) -> int | None:
        return self.unsent

    def ready(self, may_block: bool) -> tuple[Variant, float] | None:
        if may_block:
            if self.pending:
                self._note("rest", self.pending)
                self.pending = 0
            while self.owed:
                self.owed -= 1
                self._note("owed", None)
        elif self.owed:
            return None
        if self.paused:
            return None
        return self.variant, self.fps

    def send(
        self, encoded: EncodedFrame, variant: Variant, skipped: int, round_: FanOutRound | None
    ) -> int | None:
        if round_ is not None:
            if not self.accept_fast or self.pending:
                return None
            assert round_.wire(wire, encoded) == b"W" + encoded.data
            self.pending = self.leave_rest
        self._note("fast" if round_ is not None else "frame", (encoded.seq, skipped, variant))
        return self.pending

    def stalled(self) -> None:
        self._note("stalled", None)
        self.stalled_called.set()


class HoldOrSwitch:
    """A ``Controller`` that holds every frame back, or switches every frame to ``other``."""

    def __init__(self, other: Variant | None) -> None:
        self.other = other
        self.record: list[tuple[Variant, int]] = []
        self.retry_at = 0.0

    def choose(
        self, top: Variant, fps: float, frame: Frame, unsent_bytes: int | None, now: float
    ) -> Variant | None:
        self.retry_at = now + 0.005
        return self.other

    def sent(
        self, variant: Variant, size: int, now: float, write_s: float | None = None
    ) -> None:
        self.record.append((variant, size))


@pytest.fixture
def camera() -> Iterator[CameraThread]:
    camera = CameraThread("push", fps=30).start()
    yield camera
    camera.stop()


@pytest.fixture
def cache() -> EncodeCache:
    return EncodeCache()


def publish(camera: CameraThread) -> Frame:
    return camera.publish(IMAGE, copy=False)


class Running:
    """The loop's own thread, stopped and joined at the end."""

    def __init__(self, loop: ViewerLoop, output: Recorder) -> None:
        self.loop = loop
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, args=(output,), name="test-viewer")

    def _run(self, output: Recorder) -> None:
        try:
            self.loop.run(output)
        except BaseException as exc:  # reported by the test
            self.errors.append(exc)

    def __enter__(self) -> Running:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.loop.stop()
        self.thread.join(TIMEOUT)
        assert not self.thread.is_alive()
        assert not self.errors, self.errors


def test_the_fanout_sends_a_due_frame_once_and_records_it(camera, cache) -> None:
    output = Recorder()
    loop = ViewerLoop(camera, cache, stall_timeout=TIMEOUT)
    frame = publish(camera)
    assert not loop.offer(frame, output, FanOutRound())  # no variant given yet: the thread's
    assert loop.held_until() is None  # (not held back: the thread is woken for it)
    given = loop.variant(output.variant)
    assert loop.offer(frame, output, FanOutRound())
    assert not loop.offer(frame, output, FanOutRound())  # never the same frame twice
    publish(camera)
    publish(camera)
    fourth = publish(camera)
    assert loop.offer(fourth, output, FanOutRound())
    assert output.of("fast") == [(frame.seq, 0, given), (fourth.seq, 2, given)]
    stats = loop.stats
    assert (stats.frames_sent, stats.fast_frames, stats.frames_skipped) == (2, 2, 2)
    assert stats.bytes_sent > 0 and stats.fast_partial == 0
    loop.release()


def test_the_fanout_leaves_to_the_thread_what_it_may_not_do(camera, cache) -> None:
    output = Recorder()
    loop = ViewerLoop(camera, cache, stall_timeout=TIMEOUT)
    loop.variant(output.variant)
    frame = publish(camera)
    output.owed = 1  # a queued reply or metadata goes first: only the thread may write it
    assert not loop.offer(frame, output, FanOutRound())
    output.owed, output.pending = 0, 10  # an earlier message's rest
    assert not loop.offer(frame, output, FanOutRound())
    output.pending, output.accept_fast = 0, False  # the link is busy
    assert not loop.offer(frame, output, FanOutRound())
    output.accept_fast, output.unsent = True, 10**9  # behind: skipped, never dropped here
    assert not loop.offer(frame, output, FanOutRound())
    assert not output.stalled_called.is_set()
    output.unsent, output.paused = 0, True
    assert not loop.offer(frame, output, FanOutRound())
    assert output.log == [] and loop.stats.frames_sent == 0
    output.paused = False
    assert loop.offer(frame, output, FanOutRound())
    loop.release()


def test_a_variant_the_fanout_does_not_encode_is_left_to_the_thread(camera) -> None:
    cache = EncodeCache()
    popular, odd = Variant(width=80), Variant(width=40)
    cache.assign(popular)
    cache.assign(popular)  # the most used variant: the fan-out encodes it
    output = Recorder(odd)
    loop = ViewerLoop(camera, cache, stall_timeout=TIMEOUT)
    loop.variant(odd)
    frame = publish(camera)
    assert not loop.offer(frame, output, FanOutRound())  # not made: not encoded here
    assert cache.encodes == 0
    with Running(loop, output):
        loop.nudge()
        sent = output.wait_for("frame")
    assert sent[0] == (frame.seq, 0, odd) and cache.encodes == 1


def test_the_thread_writes_what_is_owed_then_the_frame(camera, cache) -> None:
    output = Recorder()
    output.owed = 2
    loop = ViewerLoop(camera, cache, stall_timeout=TIMEOUT)
    frame = publish(camera)
    with Running(loop, output):
        output.wait_for("frame")
    assert [kind for kind, _ in output.log] == ["owed", "owed", "frame"]
    assert output.of("frame") == [(frame.seq, 0, Variant())]
    assert loop.stats.frames_sent == 1 and loop.stats.fast_frames == 0


def test_a_rest_the_fanout_left_is_written_by_the_thread_first(camera, cache) -> None:
    output = Recorder()
    output.leave_rest = 5000
    loop = ViewerLoop(camera, cache, stall_timeout=TIMEOUT)
    loop.variant(output.variant)
    frame = publish(camera)
    assert loop.offer(frame, output, FanOutRound())
    assert output.pending == 5000 and loop.stats.fast_partial == 1
    assert not loop.offer(publish(camera), output, FanOutRound())  # nothing more meanwhile
    output.leave_rest = 0
    with Running(loop, output):  # it was woken: it writes the rest first thing
        assert output.wait_for("rest") == [5000]
        output.wait_for("frame")  # then the frame the fan-out could not send
    assert [kind for kind, _ in output.log][:3] == ["fast", "rest", "frame"]
    assert output.pending == 0


def test_a_viewer_behind_is_skipped_then_dropped_after_the_stall_timeout(camera, cache) -> None:
    output = Recorder()
    output.unsent = 10**9  # has not taken what it was sent
    loop = ViewerLoop(camera, cache, stall_timeout=0.2)
    publish(camera)
    started = time.monotonic()
    with Running(loop, output) as running:
        assert output.stalled_called.wait(TIMEOUT)
        assert time.monotonic() - started >= 0.2  # not before the stall timeout
        running.thread.join(TIMEOUT)
        assert not running.thread.is_alive()  # the loop ended by itself
    assert output.of("frame") == [] and loop.stats.frames_sent == 0


def test_the_controller_picks_each_frames_variant(camera, cache) -> None:
    other = Variant(width=80)
    controller = HoldOrSwitch(other)
    output = Recorder()
    loop = ViewerLoop(camera, cache, stall_timeout=TIMEOUT, controller=controller)
    loop.variant(output.variant)
    frame = publish(camera)
    # A change of variant is the thread's (the variant cap, the viewer's metadata).
    assert not loop.offer(frame, output, FanOutRound())
    with Running(loop, output):
        loop.nudge()
        sent = output.wait_for("frame")
    assert sent[0] == (frame.seq, 0, other) and cache.encodes == 1
    assert controller.record == [(other, loop.stats.bytes_sent)]


def test_the_controller_may_hold_frames_back(camera, cache) -> None:
    controller = HoldOrSwitch(None)
    output = Recorder()
    loop = ViewerLoop(camera, cache, stall_timeout=TIMEOUT, controller=controller)
    loop.variant(output.variant)
    frame = publish(camera)
    assert not loop.offer(frame, output, FanOutRound())
    assert loop.held_until() == controller.retry_at  # the fan-out offers it again then
    with Running(loop, output):
        output.owed = 1
        loop.nudge()
        output.wait_for("owed")  # the thread looked (and wrote what was owed)
        publish(camera)
        output.owed = 1
        loop.nudge()
        output.wait_for("owed", 2)
    assert output.of("frame") == [] and controller.record == [] and cache.encodes == 0


def test_nothing_is_sent_once_the_loop_ended(camera, cache) -> None:
    output = Recorder()
    loop = ViewerLoop(camera, cache, stall_timeout=TIMEOUT)
    with Running(loop, output):
        pass
    loop.variant(output.variant)
    assert not loop.offer(publish(camera), output, FanOutRound())
    assert output.log == []
    loop.release()


def test_a_rung_is_registered_with_the_cache_while_the_viewer_is_on_it(camera, cache) -> None:
    """A variant below the one given (adaptive delivery's rung) takes no place under the cap
    but is counted below its top while used, and given back when the loop ends."""
    rung = Variant(width=80, quality=60)
    controller = HoldOrSwitch(rung)
    output = Recorder()
    loop = ViewerLoop(camera, cache, stall_timeout=TIMEOUT, controller=controller)
    publish(camera)
    with Running(loop, output):
        loop.nudge()
        assert output.wait_for("frame")[0][2] == rung
        assert loop.sending == rung and loop.given == output.variant
        assert cache.admission._rungs == {output.variant: {rung: 1}}
    assert cache.admission._rungs == {} and cache.live_variants == 0


def test_frames_held_for_longer_than_the_stall_timeout_drop_the_viewer(camera, cache) -> None:
    """A controller that holds every frame (its link never drains): after the stall timeout
    with nothing sent the viewer is dropped, as a viewer behind for that long is."""
    output = Recorder()
    loop = ViewerLoop(camera, cache, stall_timeout=0.2, controller=HoldOrSwitch(None))
    with Running(loop, output):
        for _ in range(3):
            publish(camera)
        assert output.stalled_called.wait(TIMEOUT)
    assert output.of("frame") == []


class HoldFor:
    """A ``Controller`` that holds each frame back for ``hold_s`` after it first saw it (a
    link draining what was sent), then sends it in the variant given."""

    def __init__(self, hold_s: float) -> None:
        self.hold_s = hold_s
        self.retry_at = 0.0
        self.held: dict[int, float] = {}  # frame seq -> when first held
        self.sent_at: list[float] = []

    def choose(
        self, top: Variant, fps: float, frame: Frame, unsent_bytes: int | None, now: float
    ) -> Variant | None:
        first = self.held.setdefault(frame.seq, now)
        if now < first + self.hold_s:
            self.retry_at = first + self.hold_s
            return None
        return top

    def sent(
        self, variant: Variant, size: int, now: float, write_s: float | None = None
    ) -> None:
        self.sent_at.append(now)


class Served:
    """The ``FastViewer`` of a loop and its recorder (what a session is to the fan-out),
    counting the fan-out's offers and the wakes of the loop's thread."""

    def __init__(self, loop: ViewerLoop, output: Recorder) -> None:
        self.loop, self.output = loop, output
        self.offers = self.wakes = 0

    def offer(self, frame: Frame, round_: FanOutRound) -> bool:
        self.offers += 1
        return self.loop.offer(frame, self.output, round_)

    def wake(self) -> None:
        self.wakes += 1
        self.loop.wake()

    def held_until(self) -> float | None:
        return self.loop.held_until()


def test_the_fanout_sends_a_held_frame_when_its_controller_lets_it_go(camera, cache) -> None:
    """A frame held back by the viewer's controller goes from the fan-out's thread at the time
    the controller named: the loop's thread is not woken for it."""
    controller = HoldFor(0.05)
    output = Recorder()
    loop = ViewerLoop(camera, cache, stall_timeout=TIMEOUT, controller=controller)
    served = Served(loop, output)
    fanout = FanOut(camera, lambda: [served]).start()
    try:
        with Running(loop, output):
            assert wait_until(lambda: loop.given is not None)  # the loop's first look
            frame = publish(camera)
            fanout.notify()
            (sent,) = output.wait_for("fast")
            assert sent == (frame.seq, 0, output.variant)
            assert controller.sent_at[0] >= controller.held[frame.seq] + 0.05
            assert served.offers >= 2 and served.wakes == 0
            assert output.of("frame") == [] and loop.stats.fast_frames == 1
    finally:
        fanout.stop()


def test_frames_the_fanout_holds_still_drop_a_viewer_after_the_stall_timeout(
    camera, cache
) -> None:
    """A controller that holds every frame, offered by the fan-out only (no wakes): the loop's
    thread still looks on its own timer and drops the viewer after the stall timeout."""
    output = Recorder()
    loop = ViewerLoop(camera, cache, stall_timeout=0.2, controller=HoldOrSwitch(None))
    served = Served(loop, output)
    fanout = FanOut(camera, lambda: [served]).start()
    try:
        with Running(loop, output):
            assert wait_until(lambda: loop.given is not None)
            publish(camera)
            fanout.notify()
            assert output.stalled_called.wait(TIMEOUT)
            # Retried by the fan-out, never woken (but once, after the drop: a loop that
            # ended is not held, so the fan-out wakes it and forgets it).
            assert served.offers >= 2 and served.wakes <= 1
    finally:
        fanout.stop()
    assert output.of("frame") == [] and output.of("fast") == []
