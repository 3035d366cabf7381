"""The adaptation controller of one viewer: which rung of its ladder next, and send now or not.

An :class:`AdaptController` is pure logic (time passed in, no sockets, no threads). For every
frame the viewer is due, :meth:`AdaptController.decide` takes the link estimate
(:class:`~camstream.delivery.linkestimate.LinkState`), the viewer's requested rate and the
camera's, and returns a :class:`Decision`: the rung to send, whether to send this frame now,
and why the rung changed if it did. :meth:`AdaptController.sent` tells it the bytes of each
frame sent, per rung; a rung never seen is guessed from the one seen (the ladder's model
ratios, or half the bytes per rung down).

The rules, with ``f`` the viewer's rate (its requested rate, at most the camera's) and
``bytes(k)`` a frame of rung ``k``:

* **Fit.** A rung fits when ``bytes(k) * f`` is at most ``headroom`` (0.8) of the link's rate.
  A viewer that asks for 5 fps keeps full quality if 5 full frames a second fit.
* **Send or wait.** A frame goes only while the bytes queued beyond what the path holds
  (``LinkState.backlog``) drain within a quarter of a frame period (or are under half a frame
  where the rate is unknown): at most about one frame in flight beyond what the link drains.
  Otherwise the caller waits a little and asks again (or skips to a newer frame).
* **Down at once.** When the queued bytes would hold the next frame for more than half a
  period (or a whole frame is queued where the rate is unknown), or over half a frame is
  queued and the backlog drains slower than this rung needs (``LinkState.draining``: a sudden
  drop shows at the next frame): down at once, one rung or to the highest that fits the
  draining rate (``"backlog"``); not again until those bytes had time to drain. Not when the
  bytes queued are only the last frame, draining at the rate (and no slower than the rung
  needs), written well within a period of now without having waited for its link: that frame
  went out late (the server was held up), the link is as fast as it was, and the frame due
  waits for it instead. When a rate
  measured during a backlog says the rung does not fit even without headroom: straight down to
  the highest rung that fits (``"link"``).
* **Up slowly.** One rung up when the rung above fits the rate with headroom (``"probe"``),
  at most every ``up_dwell_s`` and not within ``down_dwell_s`` of a step down. Where the
  estimate cannot say (no rate, or a long path where bursts never show the link's capacity),
  a blind probe now and then. A rung left by a step down within ``probe_window_s`` of the probe
  that reached it failed (``"probe_failed"``): the next probe into it waits twice as long
  (from ``probe_backoff_s`` to ``max_backoff_s``), until the link's rate doubles.
* A viewer on a fast link never leaves the top rung: nothing queues, so nothing steps down.
* **The reader, not the link.** While the viewer's own receive window holds the sending back
  (``LinkState.reader_limited``: a program busy with each frame, a reader that stopped), no
  step down: smaller frames would not make it read faster. Frames wait (are skipped) as
  without adaptation. Nor for a viewer on this machine (``local``: loopback, or the server's
  own address), whose path is never slower than a camera: bytes that queue there wait for a
  busy reader or a busy CPU, and encoding smaller rungs would only take more of it. (The
  round-trip time cannot tell: a shaper's bucket lets single packets through at once.)
* **Behind a reverse proxy** (``proxied``: the request came through a trusted proxy) the
  socket is the proxy's, on this machine or next to it: the viewer's link shows only as the
  proxy reading slowly once its own buffers are full. So neither exemption holds: a proxied
  viewer is not local, and the proxy holding the sending back counts as the link being behind
  (the proxy's buffers delay the step; see docs/scaling.md). Nor does the socket's rate say
  what the viewer's link carries (while the proxy's buffers have room it is the hop's own):
  a proxied viewer probes up blind, never by that rate, with the failed-probe backoff; and
  since a probe's failure shows only once the proxy's buffers (and the socket's to it) are
  full, the next probe waits until the last one held for ``probe_window_s``: one rung at a
  time, never a climb on buffers still filling.

Not thread-safe: one viewer's loop thread. Times in seconds (``time.monotonic()``), rates in
bytes/s, sizes in bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .linkestimate import LinkState

__all__ = ["AdaptController", "Decision", "REASONS"]

REASONS = ("link", "backlog", "probe", "probe_failed", "config")
"""Why a rung changed (the ``adapt_reason`` of metadata)."""

_STALE_S = 10.0  # a rung's observed bytes older than this give way to the current rung's
_EWMA = 0.3  # weight of the newest frame in a rung's observed bytes
_FALLBACK_BYTES = 64 * 1024  # a frame's bytes when nothing is known at all
_LATE_SLACK = 0.25  # a late frame's queue may exceed what the rate leaves of it by this share
_LATE_WITHIN = 0.75  # ... a frame written within this share of a period before the next one


@dataclass(frozen=True)
class Decision:
    """What to do with the frame due now."""

    rung: int
    """The rung to send (0: the top)."""
    send: bool
    """Whether to send it now (False: wait for the queued bytes to drain)."""
    reason: str | None
    """Why the rung changed at this decision (one of :data:`REASONS`), or None if it did not."""


class AdaptController:
    """Picks one viewer's rung (see the module docstring).

    Args:
        rungs: how many rungs the viewer's ladder has (at least 1).
        model_bytes: the ladder's guess of each rung's bytes, top first (its ratios give the
            priors of rungs never seen); None: each rung half the one above.
        now: when the viewer starts (its first rung is the top).
        local: the viewer is on this machine: never stepped down (see the module docstring).
        proxied: the viewer is behind a reverse proxy: its reader holding the sending back
            is the link (see the module docstring).
    """

    def __init__(
        self,
        rungs: int,
        model_bytes: Sequence[float] | None = None,
        *,
        now: float = 0.0,
        headroom: float = 0.8,
        down_at: float = 0.95,
        up_dwell_s: float = 0.5,
        down_dwell_s: float = 1.0,
        probe_window_s: float = 2.0,
        probe_backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
        local: bool = False,
        proxied: bool = False,
    ) -> None:
        self.local = local and not proxied
        self.proxied = proxied
        self.headroom = headroom
        self.down_at = down_at
        self.up_dwell_s = up_dwell_s
        self.down_dwell_s = down_dwell_s
        self.probe_window_s = probe_window_s
        self.probe_backoff_s = probe_backoff_s
        self.max_backoff_s = max_backoff_s
        self.rung = 0
        self.reason: str | None = None
        """Why the rung last changed (None: it never did)."""
        self._setup(rungs, model_bytes)
        self._up_ok_at = now  # no step up before this
        # (when, bytes, held back first) of the newest frame written
        self._last_write: tuple[float, int, bool] | None = None
        self._held = False  # a decision since the last write said wait
        self._down_ok_at = now  # no step down before this

    def _setup(self, rungs: int, model_bytes: Sequence[float] | None) -> None:
        if rungs < 1:
            raise ValueError(f"a ladder has at least one rung, not {rungs}")
        if model_bytes is not None and len(model_bytes) != rungs:
            raise ValueError(f"{len(model_bytes)} model sizes for {rungs} rungs")
        self.rungs = rungs
        self._model = list(model_bytes) if model_bytes is not None else None
        self._seen: list[tuple[float, float] | None] = [None] * rungs  # (bytes, when)
        self._fails = [0] * rungs  # failed probes into each rung
        self._fail_rate: list[float | None] = [None] * rungs  # the link's rate at the failure
        self._probe_ok_at = [0.0] * rungs  # no probe into a rung before this
        self._probed_at: float | None = None  # when the last step up reached the rung
        self._probe_rate: float | None = None  # the link's rate that step up went by

    # Input

    def sent(self, rung: int, nbytes: int, now: float) -> None:
        """A frame of ``rung`` went out with ``nbytes`` bytes."""
        if not 0 <= rung < self.rungs:
            return
        if self._last_write is None or now >= self._last_write[0]:
            self._last_write = (now, nbytes, self._held)
        self._held = False
        seen = self._seen[rung]
        if seen is None or now - seen[1] > _STALE_S:
            average = float(nbytes)
        else:
            average = (1 - _EWMA) * seen[0] + _EWMA * nbytes
        self._seen[rung] = (average, now)

    def reconfigure(
        self, rungs: int, model_bytes: Sequence[float] | None, now: float,
        link: LinkState | None = None, fps: float | None = None,
    ) -> None:
        """The viewer's ladder changed (new settings): start on the highest rung of the new
        one that a measured link rate fits at ``fps``, else the top (reason ``"config"``)."""
        scale = self._content_scale(now)
        self._setup(rungs, model_bytes)
        start = 0
        if link is not None and link.measured and link.rate is not None and fps:
            budget = self.headroom * link.rate
            start = next(
                (k for k in range(rungs) if self._prior(k, scale) * fps <= budget), rungs - 1
            )
        self._change(start, "config")
        self._down_ok_at = now

    # Output

    def expected_bytes(self, rung: int, now: float) -> float:
        """The bytes a frame of ``rung`` is expected to have: its recent frames, else a guess
        from the rung seen most recently (the model's ratio, or half per rung down)."""
        seen = self._seen[rung]
        if seen is not None and now - seen[1] <= _STALE_S:
            return seen[0]
        anchor = self._anchor(now)
        if anchor is None:
            return self._prior(rung, None)
        k, nbytes = anchor
        if self._model is not None:
            return nbytes * self._model[rung] / self._model[k]
        return nbytes * 2.0 ** (k - rung)

    def decide(self, now: float, link: LinkState, fps: float, camera_fps: float) -> Decision:
        """The rung for the frame due now and whether to send it now (see the module
        docstring). Call it for every due frame, and again while it says wait."""
        f = min(fps, camera_fps) if camera_fps > 0 else fps
        period = 1.0 / f if f > 0 else 1.0
        rate = link.rate
        before = self.rung
        queued = self._wait_s(link, now)
        reason = self._down(now, link, f, period, queued)
        if reason is None and self.rung > 0 and (queued is None or queued <= 0.25 * period):
            reason = self._up(now, link, f)
        if not self.proxied:  # (a proxy's rate is its own hop's: see _blind)
            self._note_rate(rate)
        send = self._may_send(link, now, period)
        if not send:
            self._held = True
        return Decision(self.rung, send, reason if self.rung != before else None)

    # Rules

    def _wait_s(self, link: LinkState, now: float) -> float | None:
        """How long the next frame would wait behind queued bytes; None where unknown (then
        ``inf`` stands for "a whole frame is queued")."""
        if link.backlog is None:
            return None
        if link.rate is None or link.rate <= 0:
            return float("inf") if link.backlog > self.expected_bytes(self.rung, now) else 0.0
        return link.backlog / link.rate

    def _may_send(self, link: LinkState, now: float, period: float) -> bool:
        if link.backlog is None:
            return True
        if link.rate is None or link.rate <= 0:
            return link.backlog <= 0.5 * self.expected_bytes(self.rung, now)
        return link.backlog <= link.rate * 0.25 * period

    def _down(
        self, now: float, link: LinkState, f: float, period: float, queued: float | None
    ) -> str | None:
        if self.rung == self.rungs - 1 or now < self._down_ok_at or (
            link.reader_limited and not self.proxied
        ):
            return None
        if self.local:
            return None
        if link.measured and link.rate is not None:
            if self.expected_bytes(self.rung, now) * f > self.down_at * link.rate:
                target = max(self._highest_fitting(now, link.rate, f), self.rung + 1)
                return self._step_down(target, "link", now, link, link.rate, period)
        if queued is None or link.backlog is None:
            return None
        frame = self.expected_bytes(self.rung, now)
        slow = (
            link.draining is not None and link.backlog > 0.5 * frame
            and link.draining * self.headroom < frame * f
        )
        if not (queued > 0.5 * period or slow) or (
            not slow and self._late_write(now, link, period)
        ):
            return None
        rate = link.rate if link.measured else link.draining if slow else None
        target = self.rung + 1
        if rate is not None:
            target = max(target, self._highest_fitting(now, rate, f))
        return self._step_down(target, "backlog", now, link, rate, period)

    def _late_write(self, now: float, link: LinkState, period: float) -> bool:
        """Whether the bytes queued are no more than the last frame still draining at the
        link's rate, that frame having gone out late (the server was held up: written well
        within a period of now, without having been held back for its link), and the link
        drains at the rate the rung needs (the caller's "slow" test): not a slower link. The
        frame due now waits for them (``_may_send``) instead of a step down. A frame held
        back until its link drained is no such thing: its link is behind."""
        last = self._last_write
        if last is None or link.rate is None or link.rate <= 0 or link.backlog is None:
            return False
        at, nbytes, held = last
        if held or now - at >= _LATE_WITHIN * period:
            return False
        owed = nbytes - link.rate * (now - at)  # what the link has still to drain of it
        return link.backlog <= owed + _LATE_SLACK * nbytes

    def _step_down(
        self, target: int, reason: str, now: float, link: LinkState, rate: float | None,
        period: float,
    ) -> str:
        """Go down to ``target``; no further step down until the bytes queued now had time
        to drain at ``rate`` (a frame period at least, a second at most)."""
        left = self.rung
        if self._probed_at is not None and now - self._probed_at <= self.probe_window_s:
            reason = "probe_failed"
            self._fails[left] += 1
            self._fail_rate[left] = self._probe_rate
            wait = min(self.probe_backoff_s * 2 ** self._fails[left], self.max_backoff_s)
            self._probe_ok_at[left] = now + wait
        self._probed_at = None
        self._change(min(target, self.rungs - 1), reason)
        self._up_ok_at = now + self.down_dwell_s
        drain = (link.backlog or 0) / rate if rate else period
        self._down_ok_at = now + max(period, min(drain, 1.0))
        return reason

    def _up(self, now: float, link: LinkState, f: float) -> str | None:
        above = self.rung - 1
        if now < self._up_ok_at or now < self._probe_ok_at[above]:
            return None
        if self.proxied and self._probed_at is not None and (
            now - self._probed_at <= self.probe_window_s
        ):
            return None  # the last blind probe has not shown that it held yet
        rate = link.rate
        fits = (
            not self.proxied and rate is not None
            and self.expected_bytes(above, now) * f <= self.headroom * rate
        )
        if not (fits or self._blind(link, f)):
            return None
        self._change(above, "probe")
        self._probed_at = now
        self._probe_rate = rate
        self._up_ok_at = now + self.up_dwell_s
        return "probe"

    def _blind(self, link: LinkState, f: float) -> bool:
        """Whether the estimate cannot tell what the link carries, so a probe must find out:
        no rate at all, or a rate from bursts near what was offered on a path whose round trip
        is a good part of a frame period (bursts there never show the capacity). Behind a
        proxy, always: the socket's rate is the hop to the proxy, whose buffers take bytes far
        faster than the viewer's link until they are full."""
        if link.rate is None or self.proxied:
            return True
        if link.measured or link.rate >= 1.5 * link.offered:
            return False
        return link.min_rtt is not None and link.min_rtt * f >= 0.25

    def _note_rate(self, rate: float | None) -> None:
        """Forget a failed probe once the link's rate is twice what it was when that probe
        was made (the link changed)."""
        if rate is None:
            return
        for k, at_fail in enumerate(self._fail_rate):
            if at_fail is not None and rate >= 2 * at_fail:
                self._fails[k] = 0
                self._fail_rate[k] = None
                self._probe_ok_at[k] = 0.0

    def _highest_fitting(self, now: float, rate: float, f: float) -> int:
        budget = self.headroom * rate
        return next(
            (k for k in range(self.rungs) if self.expected_bytes(k, now) * f <= budget),
            self.rungs - 1,
        )

    def _change(self, rung: int, reason: str) -> None:
        if rung != self.rung or reason == "config":
            self.rung = rung
            self.reason = reason

    # Priors

    def _anchor(self, now: float) -> tuple[int, float] | None:
        """The current rung's recent bytes if seen, else the most recently seen rung's."""
        seen = self._seen[self.rung]
        if seen is not None and now - seen[1] <= _STALE_S:
            return self.rung, seen[0]
        best: tuple[int, float, float] | None = None
        for k, entry in enumerate(self._seen):
            if entry is not None and (best is None or entry[1] > best[2]):
                best = (k, entry[0], entry[1])
        return None if best is None else (best[0], best[1])

    def _content_scale(self, now: float) -> float | None:
        """Observed bytes over model bytes at the anchor rung (how heavy this picture is)."""
        anchor = self._anchor(now)
        if anchor is None or self._model is None:
            return None
        return anchor[1] / self._model[anchor[0]]

    def _prior(self, rung: int, scale: float | None) -> float:
        """A rung's bytes with nothing seen: the model (scaled to the picture if known), else
        a fixed guess halving per rung."""
        if self._model is not None:
            return self._model[rung] * (scale if scale is not None else 1.0)
        return _FALLBACK_BYTES / 2.0 ** rung
