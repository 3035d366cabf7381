"""When one viewer gets its next frame: its own rate, the newest frame, never a backlog.

Shared by WebSocket senders (``session``) and MJPEG streams (``mjpeg``).
"""

from __future__ import annotations

from .ratewindow import CounterRates

# CounterRates lives in ratewindow (one rate-window implementation); named here for callers
# of the time before (server.py).
__all__ = ["Pacer", "CounterRates", "MAX_IN_FLIGHT_BYTES", "BEHIND_POLL_S"]

MAX_IN_FLIGHT_BYTES = 256 * 1024
"""Unacknowledged bytes a viewer may have in flight (or two frames, if larger) before frames
are skipped rather than queued behind them in the kernel's buffers."""

BEHIND_POLL_S = 0.005
"""How often a viewer that is behind is looked at again, in seconds."""


class Pacer:
    """The frame clock of one viewer. Not thread-safe: owned by that viewer's sender thread.

    A viewer asking for the camera's rate or more gets every frame. A slower one is paced by its
    own clock, which advances from the previous due time (not from the send time), so its
    average rate is what it asked for although frames arrive on the camera's grid. A frame may
    go a quarter of a camera frame early, absorbing timer jitter.
    """

    def __init__(self, stall_timeout: float) -> None:
        self.last_seq = 0
        self.last_size = 0
        self.due = 0.0  # time.monotonic() when the next frame may go; 0.0: at once
        self._stall_timeout = stall_timeout
        self._behind_since: float | None = None
        self._held_since: float | None = None  # frames held back by the viewer's controller

    def wait_s(self, now: float, camera_fps: float) -> float:
        """Seconds until the next frame may go (zero or less: now)."""
        return self.due - 0.25 / camera_fps - now

    def wake_after(self, camera_fps: float) -> float:
        """The ``time.monotonic()`` before which new camera frames are of no interest."""
        return self.due - 0.25 / camera_fps if self.due else 0.0

    def wants(self, seq: int, captured_monotonic: float, camera_fps: float) -> bool:
        """Whether this frame should go: newer than the last one, and captured once due.

        A viewer slower than the camera waits for the first frame captured after its due time
        rather than taking the one captured just before it, which would be up to a camera
        period old by the time it goes.
        """
        return seq > self.last_seq and captured_monotonic >= self.wake_after(camera_fps)

    def behind(self, unsent_bytes: int | None, now: float) -> bool:
        """Whether the viewer has not yet taken what it was sent, so this frame should be skipped.

        ``unsent_bytes`` comes from the transport (None where the platform cannot tell).
        """
        behind = unsent_bytes is not None and unsent_bytes > max(
            2 * self.last_size, MAX_IN_FLIGHT_BYTES
        )
        if not behind:
            self._behind_since = None
        elif self._behind_since is None:
            self._behind_since = now
        return behind

    def stalled(self, now: float) -> bool:
        """Whether the viewer has been behind for longer than the stall timeout: it stopped
        reading, and should be dropped just as a send that blocks that long would be."""
        since = self._behind_since
        return since is not None and now - since > self._stall_timeout

    def held(self, now: float) -> bool:
        """A frame due now was held back (the viewer's controller waits for its link to drain);
        returns whether frames have been held since longer than the stall timeout with none
        sent: the viewer stopped reading, and should be dropped as a stalled one is."""
        since = self._held_since
        if since is None:
            self._held_since = now
            return False
        return now - since > self._stall_timeout

    def release_hold(self) -> None:
        """Forget frames held so far (a new rate or controller starts now)."""
        self._held_since = None

    def sent(self, seq: int, size: int, now: float, fps: float, camera_fps: float) -> int:
        """Record that frame ``seq`` went out at ``now``; returns how many frames were skipped."""
        skipped = seq - self.last_seq - 1 if self.last_seq else 0
        self.last_seq, self.last_size = seq, size
        self._held_since = None
        if fps >= camera_fps * 0.999:
            self.due = 0.0
        else:
            period = 1.0 / fps
            self.due += period
            if self.due < now - period:  # far behind (just started, paused, stalled): restart
                self.due = now + period
        return skipped
