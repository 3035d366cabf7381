"""One viewer's frame loop, shared by WebSocket viewers and MJPEG streams.

A :class:`ViewerLoop` decides when its viewer gets a frame and which: always the newest one,
never one it already sent, never a backlog, at the viewer's own rate (:class:`~.pacing.Pacer`).
It sleeps until the camera's frame listener wakes it (:meth:`ViewerLoop.wake`, only once the
viewer is due), its own timer runs out or its output asks (:meth:`ViewerLoop.nudge`). While the
viewer has not taken what it was sent, frames are skipped rather than queued; a viewer behind
for longer than the stall timeout is dropped. Frames come from the shared
:class:`~.encoder.EncodeCache` (viewers of one variant share one encode, whatever the protocol;
the cache's variant cap may give a viewer the nearest live variant).

What differs between protocols is the :class:`ViewerOutput`: ``session.ClientSession`` (the
WebSocket sender: metadata, ``frame`` info, control replies) and ``mjpeg.MjpegOutput`` (one
multipart part a frame).
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from .. import logs
from ..capture.camera import CameraThread
from ..capture.frame import Frame
from .encoder import EncodeBudgetExceeded, EncodeCache, EncodedFrame, Variant
from .pacing import BEHIND_POLL_S, Pacer

if TYPE_CHECKING:
    from .fanout import FanOutRound

__all__ = ["FastOutput", "ViewerLoop", "ViewerOutput", "ViewerStats"]

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
    fast_partial: int = 0  # of those, the ones whose rest the sender thread wrote
    connected_at: float = dataclasses.field(default_factory=time.time)


class ViewerOutput(Protocol):
    """Where one viewer's frames go. Called from the loop's thread only."""

    @property
    def is_open(self) -> bool:
        """False once the viewer is gone (the loop ends)."""

    @property
    def paused(self) -> bool:
        """True while the viewer wants no frames."""

    def unsent_bytes(self) -> int | None:
        """Bytes written but not yet taken by the viewer (None: cannot tell)."""

    def before_frame(self) -> None:
        """Called on every wake before a frame is looked at (send queued messages)."""

    def wanted(self) -> tuple[Variant, float]:
        """The variant and rate (frames a second) the viewer asks for now."""

    def send(self, encoded: EncodedFrame, variant: Variant, skipped: int) -> None:
        """Send one frame (``variant`` is the one given; ``skipped`` frames went unsent).

        Raises:
            ConnectionClosedError: the viewer went away.
        """

    def stalled(self) -> None:
        """The viewer stopped reading: drop it (the loop ends after this)."""


class FastOutput(ViewerOutput, Protocol):
    """An output the fan-out may serve without waking the loop (see :meth:`ViewerLoop.offer`)."""

    def fast_wanted(self) -> tuple[Variant, float] | None:
        """The variant and rate, or None unless the viewer is idle (nothing queued or owed)."""

    def fast_send(self, encoded: EncodedFrame, variant: Variant, round_: FanOutRound) -> bool:
        """Write ``encoded`` without blocking, with the bytes ``round_`` shares; False if it
        could not (nothing written). A partial write is finished by the loop's thread.

        Raises:
            ConnectionClosedError: the viewer went away.
        """


class ViewerLoop:
    """The frame clock and loop of one viewer (see the module docstring).

    :meth:`run` runs in the viewer's own thread (a WebSocket sender, an HTTP handler) until
    :meth:`stop`, the output closing or a stall; :meth:`wake`, :meth:`nudge` and :meth:`stop`
    are safe from any thread.
    """

    def __init__(self, camera: CameraThread, cache: EncodeCache, stall_timeout: float) -> None:
        self.stats = ViewerStats()
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

    def variant(self, wanted: Variant) -> Variant:
        """The variant this viewer gets: what it asked for, unless the cache's variant cap gives
        it the nearest live one (loop thread only; released when :meth:`run` ends)."""
        if wanted != self._wanted:
            if self._given is not None:
                self._cache.release(self._given)
            self._given, self._wanted = self._cache.assign(wanted), wanted
        assert self._given is not None
        return self._given

    @property
    def given(self) -> Variant | None:
        """The variant given now, or None before the first."""
        return self._given

    def offer(self, frame: Frame, output: FastOutput, round_: FanOutRound) -> bool:
        """The fan-out's fast path: send ``frame`` now, from the calling thread, if this viewer
        is due, idle and not behind. The JPEG comes from ``round_.encoded`` (None: not made, for
        the loop to encode), and :meth:`FastOutput.fast_send` writes it without blocking (False:
        it could not). Records it exactly as the loop would.

        Returns:
            True if the frame went (nothing to wake); False if the loop should look at it.

        Raises:
            ConnectionClosedError: the viewer went away during ``send``.
        """
        if time.monotonic() < self._wake_after:
            return False
        if not self._busy.acquire(blocking=False):
            return False  # the loop's thread is at work: it looks at the frame itself
        try:
            if self._stopping.is_set():
                return False  # (checked under the lock: once run() ended, nothing is sent)
            pacer, camera_fps = self._pacer, self._camera.fps
            if not pacer.wants(frame.seq, frame.captured_monotonic, camera_fps):
                return False
            wanted = output.fast_wanted()
            if wanted is None or self._given is None or (
                wanted[0] is not self._wanted and wanted[0] != self._wanted
            ):
                return False
            variant, fps = self._given, wanted[1]
            now = time.monotonic()
            if pacer.behind(output.unsent_bytes(), now):
                return False
            try:
                encoded = round_.encoded(self._cache, frame, variant)
            except (EncodeBudgetExceeded, ValueError):
                return False  # the loop skips the frame (or says why)
            if encoded is None or not output.fast_send(encoded, variant, round_):
                return False
            skipped = pacer.sent(frame.seq, len(encoded.data), now, fps, camera_fps)
            self._wake_after = pacer.wake_after(camera_fps)
            stats = self.stats
            stats.fast_frames += 1
            stats.frames_sent += 1
            stats.frames_skipped += skipped
            stats.bytes_sent += len(encoded.data)
            return True
        finally:
            self._busy.release()

    def run(self, output: ViewerOutput) -> None:
        """Send frames to ``output`` until stopped, closed or stalled.

        Raises:
            ConnectionClosedError: the viewer went away during a send.
        """
        try:
            self._loop(output)
        finally:
            with self._busy:  # the fan-out sends nothing from now on (see offer())
                self._stopping.set()
            self.release()

    def release(self) -> None:
        """Give the variant back to the cache (the loop's thread, once it no longer runs)."""
        if self._given is not None:
            self._cache.release(self._given)
            self._given = self._wanted = None

    def _loop(self, output: ViewerOutput) -> None:
        pacer, camera, busy = self._pacer, self._camera, self._busy
        behind: bool | None = False  # the viewer has not taken the previous frames yet
        while True:
            with busy:
                if self._stopping.is_set() or not output.is_open:
                    return
                # Frames wake this thread only once it is due (see wake()); its own timer and
                # the behind-poll cover the rest.
                paused = output.paused
                self._wake_after = (
                    math.inf if behind or paused else pacer.wake_after(camera.fps)
                )
                wait = BEHIND_POLL_S if behind else pacer.wait_s(time.monotonic(), camera.fps)
            self._wake.wait(min(wait, IDLE_WAKE_S) if wait > 0 else IDLE_WAKE_S)
            self._wake.clear()
            with busy:
                if self._stopping.is_set():
                    return
                behind = self._tick(output)
                if behind is None:
                    return

    def _tick(self, output: ViewerOutput) -> bool | None:
        """One look at the newest frame (``_busy`` held); returns whether the viewer is behind,
        or None if it stalled and was dropped."""
        pacer, camera, stats = self._pacer, self._camera, self.stats
        output.before_frame()
        if output.paused:
            return False
        frame = camera.latest()
        if frame is None or not pacer.wants(frame.seq, frame.captured_monotonic, camera.fps):
            return False  # nothing to send: look again when a frame is wanted
        now = time.monotonic()
        if pacer.behind(output.unsent_bytes(), now):
            if pacer.stalled(now):
                output.stalled()
                return None
            return True
        wanted, fps = output.wanted()
        variant = self.variant(wanted)
        try:
            encoded = self._cache.get(frame, variant)
        except EncodeBudgetExceeded:
            return False  # the server's encode budget is spent: skip to a later frame
        except ValueError as exc:  # a source JPEG that cannot be decoded: skip it
            logger.debug("skipping frame %d: %s", frame.seq, exc)
            return False
        skipped = pacer.sent(frame.seq, len(encoded.data), now, fps, camera.fps)
        output.send(encoded, variant, skipped)
        stats.frames_sent += 1
        stats.frames_skipped += skipped
        stats.bytes_sent += len(encoded.data)
        return False
