"""One viewer's frame loop and its one delivery routine, shared by WebSocket viewers and MJPEG.

A :class:`ViewerLoop` decides when its viewer gets a frame and which: always the newest one,
never one it already sent, never a backlog, at the viewer's own rate (:class:`~.pacing.Pacer`).
It sleeps until the camera's frame listener wakes it (:meth:`ViewerLoop.wake`, only once the
viewer is due), its own timer runs out or its output asks (:meth:`ViewerLoop.nudge`). While the
viewer has not taken what it was sent, frames are skipped rather than queued; a viewer behind
for longer than the stall timeout is dropped. Frames come from the shared
:class:`~.encoder.EncodeCache` (viewers of one variant share one encode, whatever the protocol;
the cache's variant cap may give a viewer the nearest live variant).

Every frame reaches a viewer through one routine, ``ViewerLoop._deliver``: called by the
viewer's own thread (which may block and may encode any variant) or, through
:meth:`ViewerLoop.offer`, by the fan-out's thread (which never blocks, encodes only what its
:class:`~.fanout.FanOutRound` allows, and leaves to the viewer's thread anything else). Its
steps, in order: the output says what it wants (:meth:`ViewerOutput.ready`; the viewer's thread
first writes what is owed), the Pacer says whether this frame is due, the viewer must not be
behind, the viewer's :class:`Controller` (if it has one: adaptive delivery,
:mod:`~.linkcontrol`) picks the variant for this frame (the top rung, the variant the viewer
was given, or a rung of its quality ladder below it) or holds it back, the cache gives the
JPEG, the output writes it (:meth:`ViewerOutput.send`, with any text message that goes with
the frame), and the Pacer, the controller and :class:`ViewerStats` record it.

What differs between protocols is the :class:`ViewerOutput`: ``session.ClientSession`` (the
WebSocket sender: metadata, ``frame`` info, control replies) and ``mjpeg.MjpegStream`` (one
multipart part a frame).
"""

from __future__ import annotations

import dataclasses
import enum
import math
import threading
import time
from dataclasses import dataclass
from typing import Protocol

from .. import logs
from ..capture.camera import CameraThread
from ..capture.frame import Frame
from .encoder import EncodeBudgetExceeded, EncodeCache, EncodedFrame, Variant
from .fanout import FanOutRound
from .pacing import BEHIND_POLL_S, Pacer

__all__ = [
    "Controller",
    "Delivery",
    "ViewerLoop",
    "ViewerOutput",
    "ViewerStats",
]

logger = logs.get_logger(__name__)

IDLE_WAKE_S = 1.0
"""A viewer with nothing to do still looks at its state this often, in seconds."""


@dataclass
class ViewerStats:
    """Counters of one viewer, as ``Streamer.stats()`` reports them."""

    frames_sent: int = 0
    frames_skipped: int = 0
    bytes_sent: int = 0
    errors: int = 0  # error messages sent in answer to bad input (WebSocket viewers)
    fast_frames: int = 0  # of frames_sent, those the fan-out sent (camstream.delivery.fanout)
    fast_partial: int = 0  # of those, the ones the kernel took only in part (rest: the link)
    connected_at: float = dataclasses.field(default_factory=time.time)


class Delivery(enum.Enum):
    """What one call of the delivery routine did."""

    SENT = "sent"  # the frame went out (or, from the fan-out, was begun: its rest is owed)
    IDLE = "idle"  # nothing to send now: paused, not due, no frame, held back, or skipped
    BEHIND = "behind"  # the viewer has not taken what it was sent: this frame is skipped
    STALLED = "stalled"  # behind for longer than the stall timeout: the viewer was dropped
    LEFT = "left"  # the fan-out could not (busy, owed, not encoded here): the thread will look
    HELD = "held"  # the controller holds the frame back: look again at its retry_at


class ViewerOutput(Protocol):
    """Where one viewer's frames go: a WebSocket session or an MJPEG stream.

    Called by the delivery routine, with the loop's lock held: from the loop's own thread, or
    from the fan-out's thread (``round_`` given / ``may_block`` False).
    """

    @property
    def is_open(self) -> bool:
        """False once the viewer is gone (the loop ends)."""

    @property
    def paused(self) -> bool:
        """True while the viewer wants no frames (new frames do not wake the loop)."""

    def unsent_bytes(self) -> int | None:
        """Bytes written but not yet taken by the viewer (None: cannot tell)."""

    def ready(self, may_block: bool) -> tuple[Variant, float] | None:
        """The variant and rate (frames a second) the viewer asks for now, or None if it takes
        no frame now (paused).

        With ``may_block`` (the loop's thread), first write everything owed before a frame:
        the rest of an earlier message, queued text messages, fresh metadata. Without (the
        fan-out), write nothing and return None if messages or metadata are owed (an earlier
        message's rest makes the fan-out's write itself refuse).

        Raises:
            ConnectionClosedError: the viewer went away.
        """

    def send(
        self,
        encoded: EncodedFrame,
        variant: Variant,
        skipped: int,
        round_: FanOutRound | None,
    ) -> int | None:
        """Write one frame (``variant`` is the one given; ``skipped`` frames went unsent since
        the previous one), preceded by any text message that goes with it (the whole lot one
        write when ``round_`` is given).

        ``round_`` None: the loop's thread; blocks until written, returns 0. Else the fan-out's
        thread: never blocks, takes the shared wire bytes from ``round_.wire``, and returns how
        many bytes the connection's link still holds (0: all written; the loop's thread writes
        a rest first thing), or None if nothing was written (busy, a rest pending, or something
        must go first): the loop's thread takes the frame then.

        Raises:
            ConnectionClosedError: the viewer went away.
        """

    def stalled(self) -> None:
        """The viewer stopped reading: drop it (the loop ends after this)."""


class Controller(Protocol):
    """Picks the variant of each frame for one viewer, or holds a frame back.

    The seat of a per-viewer rate controller (issue 18, :class:`~.linkcontrol.LinkController`:
    a quality rung per frame, frames held back while too many bytes are in flight). Called by
    the delivery routine with the loop's lock held (the loop's thread or the fan-out's), so it
    has one user at a time; it must not block. A variant other than the one last used is taken
    by the loop's thread (the cache's rungs, and the viewer's metadata, are updated there).
    """

    retry_at: float
    """After :meth:`choose` held a frame back: the ``time.monotonic()`` at which to ask again
    (the loop's thread sleeps until then unless stopped or nudged)."""

    def choose(
        self, top: Variant, fps: float, frame: Frame, unsent_bytes: int | None, now: float
    ) -> Variant | None:
        """The variant to send ``frame`` in: ``top`` itself (the variant the viewer was given
        for what it asked), or a variant of ``top``'s quality ladder below it; or None to hold
        the frame back until :attr:`retry_at`. ``fps``: the viewer's rate (at most the
        camera's); ``unsent_bytes``: bytes the viewer has not taken yet (None if unknown);
        ``now``: ``time.monotonic()``."""

    def sent(
        self, variant: Variant, size: int, now: float, write_s: float | None = None
    ) -> None:
        """A frame of ``size`` bytes in the variant chosen was written (or begun) at ``now``;
        ``write_s``: how long its blocking write took (None: a non-blocking one)."""


# The routine's outcomes as plain names: an enum member read through its class costs a few
# hundred ns, and the routine runs once per viewer and frame.
_SENT, _IDLE, _BEHIND, _STALLED, _LEFT, _HELD = (
    Delivery.SENT, Delivery.IDLE, Delivery.BEHIND, Delivery.STALLED, Delivery.LEFT,
    Delivery.HELD,
)


class ViewerLoop:
    """The frame clock and loop of one viewer (see the module docstring).

    :meth:`run` runs in the viewer's own thread (a WebSocket sender, an HTTP handler) until
    :meth:`stop`, the output closing or a stall; :meth:`offer` is the fan-out's way in;
    :meth:`wake`, :meth:`nudge` and :meth:`stop` are safe from any thread. ``controller``
    picks each frame's variant (None: every frame in the variant asked for, none held back;
    the Pacer already skips frames while the viewer is behind); a rung below the variant given
    is registered with the cache (:meth:`EncodeCache.assign_rung`) while the viewer is on it.
    """

    def __init__(
        self,
        camera: CameraThread,
        cache: EncodeCache,
        stall_timeout: float,
        controller: Controller | None = None,
    ) -> None:
        self.stats = ViewerStats()
        self._controller = controller
        self._camera = camera
        self._cache = cache
        self._pacer = Pacer(stall_timeout)  # used by the loop's thread only
        self._wake = threading.Event()
        # Held by the loop's thread while it works (not while it sleeps); the fan-out takes it
        # without blocking, so the Pacer and the output's state have one user at a time.
        self._busy = threading.Lock()
        self._stopping = threading.Event()
        self._wake_after = 0.0  # time.monotonic() from which new frames wake the loop
        self._wanted: Variant | None = None  # the variant asked for, and the one given (cache cap)
        self._given: Variant | None = None
        self._rung: Variant | None = None  # the rung below _given asked for, and the one given
        self._rung_given: Variant | None = None
        self._held_until: float | None = None  # see held_until() (the fan-out's thread)

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def wake(self) -> None:
        """A new frame is there (called by the camera for every frame, for every viewer).

        Wakes the loop only if it could use the frame: a viewer on a slower timer, paused or
        behind is left asleep, which saves most of the thread switches at high viewer counts.
        """
        if time.monotonic() >= self._wake_after:
            self._wake.set()

    def nudge(self) -> None:
        """Wake the loop now (a queued message, a settings change)."""
        self._wake.set()

    def stop(self) -> None:
        """Ask the loop to end (within one wake). Idempotent; any thread."""
        self._stopping.set()
        self._wake.set()

    def restart_clock(self) -> None:
        """A new rate starts now, not when the old timer runs out (loop thread only)."""
        self._pacer.due = 0.0
        self._pacer.release_hold()

    @property
    def controller(self) -> Controller | None:
        return self._controller

    def set_controller(self, controller: Controller | None) -> None:
        """Pick each frame's variant with ``controller`` from now on (None: the variant given,
        every frame). Loop thread only (or before :meth:`run`); leaves any rung it was on."""
        if controller is not self._controller:
            self._drop_rung()
            self._controller = controller
            self._pacer.release_hold()

    def variant(self, wanted: Variant) -> Variant:
        """The variant this viewer gets: what it asked for, unless the cache's variant cap gives
        it the nearest live one (loop thread only; released when :meth:`run` ends)."""
        if wanted != self._wanted:
            self._drop_rung()
            if self._given is not None:
                self._cache.release(self._given)
            self._given, self._wanted = self._cache.assign(wanted), wanted
        assert self._given is not None
        return self._given

    @property
    def given(self) -> Variant | None:
        """The variant given now, or None before the first (the top: see :attr:`sending`)."""
        return self._given

    @property
    def sending(self) -> Variant | None:
        """The variant frames go in now: the rung given below :attr:`given`, else that."""
        return self._rung_given if self._rung_given is not None else self._given

    def _on_rung(self, top: Variant, rung: Variant, may_block: bool) -> Variant | None:
        """The variant given for ``rung`` below ``top`` (registered with the cache when it
        changes: the loop's thread only, so None from the fan-out for a new rung)."""
        if self._rung is not None and (rung is self._rung or rung == self._rung):
            return self._rung_given
        if not may_block:
            return None
        self._drop_rung()
        self._rung_given = self._cache.assign_rung(top, rung)
        self._rung = rung
        return self._rung_given

    def _drop_rung(self) -> None:
        """Leave the rung the viewer is on, if any (back to the variant given)."""
        if self._rung_given is not None and self._given is not None:
            self._cache.release_rung(self._given, self._rung_given)
        self._rung = self._rung_given = None

    def offer(self, frame: Frame, output: ViewerOutput, round_: FanOutRound) -> bool:
        """The fan-out's call of the delivery routine: send ``frame`` now, from the calling
        thread, without blocking, if this viewer is due, idle and not behind (see the module
        docstring). The JPEG comes from ``round_.encoded`` (None: not made, for the loop to
        encode) and the output's wire bytes from ``round_.wire``.

        Returns:
            True if the frame went (nothing to wake); False if the loop should look at it.

        Raises:
            ConnectionClosedError: the viewer went away during ``send``.
        """
        self._held_until = None
        if time.monotonic() < self._wake_after:
            return False
        if not self._busy.acquire(blocking=False):
            return False  # the loop's thread is at work: it looks at the frame itself
        try:
            if self._stopping.is_set():
                return False  # (checked under the lock: once run() ended, nothing is sent)
            outcome = self._deliver(output, frame, round_)
            if outcome is _HELD and self._controller is not None:
                self._held_until = self._controller.retry_at
            return outcome is _SENT
        finally:
            self._busy.release()

    def held_until(self) -> float | None:
        """After :meth:`offer` returned False: the ``time.monotonic()`` at which the viewer's
        controller lets the frame go, if it held it back (the fan-out offers it again then,
        without waking this loop's thread); None: the loop's thread should look (the fan-out's
        thread only)."""
        return self._held_until

    def run(self, output: ViewerOutput) -> None:
        """Send frames to ``output`` until stopped, closed or stalled.

        Raises:
            ConnectionClosedError: the viewer went away during a send.
        """
        self._wake.set()  # the first look at once: metadata, a frame there already
        try:
            self._loop(output)
        finally:
            with self._busy:  # the fan-out sends nothing from now on (see offer())
                self._stopping.set()
            self.release()

    def release(self) -> None:
        """Give the variant back to the cache (the loop's thread, once it no longer runs)."""
        self._drop_rung()
        if self._given is not None:
            self._cache.release(self._given)
            self._given = self._wanted = None

    def _loop(self, output: ViewerOutput) -> None:
        pacer, camera, busy = self._pacer, self._camera, self._busy
        outcome = _IDLE
        while True:
            with busy:
                if self._stopping.is_set() or not output.is_open:
                    return
                # Frames wake this thread only once it is due (see wake()); its own timer, the
                # behind-poll and a held frame's retry time cover the rest.
                now = time.monotonic()
                if outcome is _BEHIND:
                    self._wake_after, wait = math.inf, BEHIND_POLL_S
                elif outcome is _HELD and self._controller is not None:
                    self._wake_after = math.inf
                    wait = max(self._controller.retry_at - now, BEHIND_POLL_S / 5)
                else:
                    self._wake_after = (
                        math.inf if output.paused else pacer.wake_after(camera.fps)
                    )
                    wait = pacer.wait_s(now, camera.fps)
            self._wake.wait(min(wait, IDLE_WAKE_S) if wait > 0 else IDLE_WAKE_S)
            self._wake.clear()
            with busy:
                if self._stopping.is_set():
                    return
                outcome = self._deliver(output, None, None)
                if outcome is _STALLED:
                    return

    def _deliver(
        self, output: ViewerOutput, frame: Frame | None, round_: FanOutRound | None
    ) -> Delivery:
        """The delivery routine: one look at a frame for this viewer (``_busy`` held).

        ``round_`` None: the loop's own thread, which looks at the camera's newest frame, may
        block (what is owed goes out first, then the frame), may encode any variant, and drops
        a stalled viewer. Else the fan-out's thread with its ``frame``: it never blocks,
        encodes only what ``round_`` allows, and returns :attr:`Delivery.LEFT` for anything
        the loop's thread must do (a change of variant, an encode, metadata, a busy link).
        """
        may_block = round_ is None
        wanted = output.ready(may_block)
        if wanted is None:
            return _IDLE if may_block else _LEFT
        if may_block:
            top = self.variant(wanted[0])
        elif self._given is not None and (wanted[0] is self._wanted or wanted[0] == self._wanted):
            top = self._given
        else:
            return _LEFT  # a new variant: assigned (and announced) by the loop's thread
        pacer, camera_fps = self._pacer, self._camera.fps
        if frame is None:
            frame = self._camera.latest()
            if frame is None:
                return _IDLE
        if not pacer.wants(frame.seq, frame.captured_monotonic, camera_fps):
            return _IDLE  # not due, or sent already: look again when one is wanted
        now = time.monotonic()
        unsent = output.unsent_bytes()
        if pacer.behind(unsent, now):
            if may_block and pacer.stalled(now):
                output.stalled()
                return _STALLED
            return _BEHIND
        # The viewer's controller: this frame's variant (the top, or a rung below it), or none
        # (held back while the link drains).
        controller = self._controller
        if controller is None:
            variant = top
        else:
            fps = wanted[1] if wanted[1] < camera_fps else camera_fps
            chosen = controller.choose(top, fps, frame, unsent, now)
            if chosen is None:
                if may_block and pacer.held(now):
                    output.stalled()
                    return _STALLED
                return _HELD
            if chosen is top:
                if self._rung is not None:
                    if not may_block:
                        return _LEFT  # back on the top: announced by the loop's thread
                    self._drop_rung()
                variant = top
            else:
                given = self._on_rung(top, chosen, may_block)
                if given is None:
                    return _LEFT  # a new rung: assigned (and announced) by the loop's thread
                variant = given
        try:
            if round_ is None:
                encoded = self._cache.get(frame, variant)
            else:
                made = round_.encoded(self._cache, frame, variant)
                if made is None:
                    return _LEFT  # not encoded by the fan-out: the loop's thread does
                encoded = made
        except EncodeBudgetExceeded:
            return _IDLE  # the server's encode budget is spent: skip to a later frame
        except ValueError as exc:  # a source JPEG that cannot be decoded: skip it
            if may_block:
                logger.debug("skipping frame %d: %s", frame.seq, exc)
            return _IDLE
        last = pacer.last_seq
        skipped = frame.seq - last - 1 if last else 0
        started = time.monotonic() if round_ is None else 0.0  # (timed: blocking writes)
        left = output.send(encoded, variant, skipped, round_)
        if left is None:
            return _LEFT
        size = len(encoded.data)
        pacer.sent(frame.seq, size, now, wanted[1], camera_fps)
        if controller is not None:
            write_s = None if round_ is not None else time.monotonic() - started
            controller.sent(variant, size, now, write_s)
        stats = self.stats
        stats.frames_sent += 1
        stats.frames_skipped += skipped
        stats.bytes_sent += size
        if round_ is not None:
            self._wake_after = pacer.wake_after(camera_fps)
            stats.fast_frames += 1
            if left:  # the rest is the loop's thread's to write, first thing
                stats.fast_partial += 1
                self._wake.set()
        return _SENT
