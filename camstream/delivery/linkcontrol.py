"""Adaptive delivery for one viewer: the :class:`~.viewer.Controller` that picks each frame's rung.

A :class:`LinkController` sits in a viewer's :class:`~.viewer.ViewerLoop` (WebSocket, ``wss://``
and MJPEG alike) and joins the three parts of issue 18 for that viewer: the link estimate read
from its socket (:class:`~.linkestimate.SocketMeter`), its quality ladder
(:func:`~.ladder.build_ladder`: the top rung is the variant it was given, each rung below about
half the bytes) and the rung rules (:class:`~.adapt.AdaptController`). For every frame the
viewer is due it samples the socket, lets the rules decide, and answers the rung's variant, or
None to hold the frame back while the link drains what was sent (then :attr:`retry_at` says
when to ask again).

**Fast links cost nothing.** A viewer on the top rung whose socket held next to nothing at the
previous frame (its unsent bytes, which the loop reads anyway, at most an eighth of the last
frame) is plainly keeping up: the frame goes on the top rung without a look at ``TCP_INFO``
(which, decoded and estimated, costs about 20 us), except once every :data:`LOOK_EVERY_S` so
``stats()`` and metadata show a fresh rate and RTT. So a viewer on loopback or a LAN never
leaves the top rung (the camera's own JPEG stays untouched, 0 encodes, 0 decodes) and the
fan-out's cost per viewer-frame does not grow. The same holds on a rung below the top, with a
look every :data:`LOOK_BELOW_EVERY_S` (a probe up waits for a look, and the rules probe at most
every half second): a viewer its link carries on that rung costs a look every few frames, not
every frame. Unsent bytes above the mark (a backlog, a slower link) bring a look at once.

Not thread-safe: called by the delivery routine with the viewer's loop lock held (its own thread
or the fan-out's). :attr:`rung`, :attr:`rungs`, :attr:`reason` and :attr:`link` are read by
other threads for ``stats()`` (single references, replaced whole).
"""

from __future__ import annotations

import ipaddress
import socket
import time

from .. import logs
from ..capture.frame import Frame
from ..ws.link import Link
from ..ws.tcpinfo import TCP_INFO_SUPPORTED
from .adapt import AdaptController
from .ladder import Ladder, build_ladder
from .linkestimate import LinkState, SocketMeter
from .variant import Variant

__all__ = [
    "LOOK_BELOW_EVERY_S", "LOOK_EVERY_S", "LinkController", "adapt_fields", "on_this_machine",
]

LOOK_EVERY_S = 0.5
"""A viewer on the top rung whose link keeps up has its socket looked at this often, s."""

LOOK_BELOW_EVERY_S = 0.1
"""... and one on a rung below the top this often (its probes up wait for a look)."""

_QUICK_MIN_BYTES = 4096  # unsent bytes at a frame that always count as "keeping up" (top)
_QUICK_BELOW_MIN_BYTES = 1500  # ... on a rung below (a segment: its frames are small)
_QUICK_SHARE = 8  # ... or up to this fraction (1/n) of the previous frame
logger = logs.get_logger(__name__)

_MIN_RETRY_S = 0.002  # a held frame is looked at again no sooner than this
_MAX_RETRY_S = 0.1  # ... and no later (a frame period at most)
_REUSE_S = 0.02  # a decision for a frame holds this long for it (the fan-out's first pass left
# it to its second or to the viewer's thread)


# Behind a reverse proxy a probe shows whether the viewer's link carries it only once the
# proxy's buffers (nginx: several hundred KB) are full: seconds on a slow link. So probes come
# less often, count as failed for longer, and back off from a longer wait.
_BEHIND_A_PROXY: dict[str, float] = {
    "up_dwell_s": 2.0, "probe_window_s": 8.0, "probe_backoff_s": 4.0,
}

class LinkController:
    """The adaptive :class:`~.viewer.Controller` of one viewer (see the module docstring).

    Args:
        link: the viewer's connection (``Connection.link``, ``HttpExchange.link``): its plain
            socket is metered, its ``pending`` bytes (a begun message's rest, TLS ciphertext)
            count as not sent.
        default_quality: the server's quality for variants without one (the ladder's).
        default_max_bytes: the server's default byte limit (kept as it is on lower rungs).
        proxied: the viewer came through a trusted reverse proxy (``ClientView.via_proxy``):
            its socket is the proxy's (see :mod:`.adapt`).
    """

    def __init__(
        self, link: Link, *, default_quality: int = 80, default_max_bytes: int | None = None,
        proxied: bool = False,
    ) -> None:
        self._link = link
        self.meter = SocketMeter(link.sock)
        self.proxied = proxied
        self.local = not proxied and on_this_machine(link.sock)
        """The viewer is on this machine (never stepped down: see ``adapt``)."""
        self._default_quality = default_quality
        self._default_max_bytes = default_max_bytes
        self._rules: AdaptController | None = None
        self._ladder: Ladder | None = None
        self._ladder_key: tuple[Variant, int, int, bool] | None = None
        self.rung = 0
        """The rung of the newest decision (0: the top)."""
        self.rungs = 1
        """How many rungs the viewer's ladder has (1 until the first look at the link)."""
        self.reason: str | None = None
        """Why the rung last changed (``adapt.REASONS``), or None if it never did."""
        self.link: LinkState | None = None
        """The newest link estimate (None: not looked at yet)."""
        self.retry_at = 0.0
        """After a hold: the ``time.monotonic()`` at which the held frame may go."""
        # The quick path (the link keeps up): (top, the variant sent) until _look_at, with no
        # look at the socket; None: look at every frame (the first one too).
        self._quick: tuple[Variant, Variant] | None = None
        self._quick_bytes = _QUICK_MIN_BYTES
        self._look_at = 0.0
        self._quick_sent: tuple[int, float] | None = None  # (bytes, when) of its last frame
        # The newest decision: (frame seq, when, top, the variant chosen); the fan-out's, when
        # it leaves the frame to the viewer's thread, is that thread's too.
        self._decided: tuple[int, float, Variant, Variant] | None = None

    # The Controller seat (the delivery routine, the loop's lock held)

    def choose(
        self, top: Variant, fps: float, frame: Frame, unsent: int | None, now: float
    ) -> Variant | None:
        """The variant for ``frame``: ``top`` itself (the variant the viewer was given) or a
        rung below it, or None to hold the frame back until :attr:`retry_at`.

        ``fps``: the viewer's rate (at most the camera's); ``unsent``: the bytes it has not
        taken (``Link.unsent_bytes()``, None if unknown); ``now``: ``time.monotonic()``.
        """
        quick = self._quick
        if quick is not None:
            if unsent is not None and unsent <= self._quick_bytes and now < self._look_at:
                if quick[1] is quick[0]:
                    return top  # the top rung (whatever the top is now)
                if top is quick[0]:
                    return quick[1]  # the same rung below the same top
        elif now < self.retry_at:
            return None  # held a moment ago: nothing drained enough yet
        decided = self._decided
        if (
            decided is not None and decided[0] == frame.seq and decided[2] is top
            and now - decided[1] < _REUSE_S
        ):
            return decided[3]
        return self._decide(top, fps, frame, unsent, now)

    def sent(
        self, variant: Variant, size: int, now: float, write_s: float | None = None
    ) -> None:
        """A frame of ``size`` bytes in the chosen variant was written (or begun) at ``now``;
        ``write_s``: how long its blocking write took (None: non-blocking). Where the socket
        tells nothing (no ``TCP_INFO``), a write that had to wait gives the link's rate
        (:meth:`~.linkestimate.LinkEstimate.timed_write`)."""
        estimate = self.meter.estimate
        estimate.wrote(now, size)
        if write_s is not None and not TCP_INFO_SUPPORTED:
            estimate.timed_write(now, now + write_s, size)
        self._decided = None
        written = time.monotonic()  # (after the encode and the write: when it began to drain)
        if self.rung == 0 and self._quick is not None:
            self._quick_bytes = max(size // _QUICK_SHARE, _QUICK_MIN_BYTES)
            self._quick_sent = (size, written)
            return
        self._quick_bytes = max(size // _QUICK_SHARE, _QUICK_BELOW_MIN_BYTES)
        if self._rules is not None:
            self._rules.sent(self.rung, size, written)

    def prepare(self, top: Variant, frame: Frame, fps: float, now: float) -> None:
        """Build the ladder of ``top`` for ``frame``'s size now (new settings), so the metadata
        sent before the next frame gives the right :attr:`rungs` (and rung, on a known link).
        The delivery routine's thread."""
        rules, _ = self._ladder_for(top, frame, fps, self.link or LinkState(), now)
        self.rung, self.reason = rules.rung, rules.reason

    # The decision

    def _decide(
        self, top: Variant, fps: float, frame: Frame, unsent: int | None, now: float
    ) -> Variant | None:
        state = self.meter.sample(now, unsent, self._link.pending)
        self.link = state
        rules, ladder = self._ladder_for(top, frame, fps, state, now)
        if self._quick_sent is not None:  # the top's frames sent on the quick path
            rules.sent(0, *self._quick_sent)
            self._quick_sent = None
        decision = rules.decide(now, state, fps, fps)
        if decision.reason is not None:
            logger.debug(
                "rung %d -> %d (%s): link %s kbit/s%s, rtt %s ms, unsent %s, backlog %s%s",
                self.rung, decision.rung, decision.reason, state.kbps,
                " measured" if state.measured else "", state.rtt_ms, unsent, state.backlog,
                ", reader-limited" if state.reader_limited else "",
            )
        self.rung, self.reason = decision.rung, rules.reason
        self._quick = None
        if not decision.send:
            self.retry_at = now + self._drain_s(state, fps)
            return None
        chosen = top if decision.rung == 0 else ladder.variant(decision.rung)
        if unsent is not None and unsent <= self._quick_bytes:  # keeping up: the quick path
            self._quick = (top, chosen)
            self._look_at = now + (LOOK_EVERY_S if decision.rung == 0 else LOOK_BELOW_EVERY_S)
        self._decided = (frame.seq, now, top, chosen)
        return chosen

    def _ladder_for(
        self, top: Variant, frame: Frame, fps: float, state: LinkState, now: float
    ) -> tuple[AdaptController, Ladder]:
        """The ladder of ``top`` for this frame's size, and the rules (reconfigured, reason
        ``"config"``, when the ladder changed: new settings, or the source's size)."""
        key = (top, frame.width, frame.height, frame.jpeg is not None)
        rules, ladder = self._rules, self._ladder
        if key != self._ladder_key or rules is None or ladder is None:
            ladder = build_ladder(
                top, frame.width, frame.height, source_is_jpeg=frame.jpeg is not None,
                default_quality=self._default_quality,
                default_max_bytes=self._default_max_bytes,
            )
            if rules is None:
                rules = AdaptController(
                    len(ladder), ladder.model_bytes, now=now, local=self.local,
                    proxied=self.proxied, **(_BEHIND_A_PROXY if self.proxied else {}),
                )
            else:
                rules.reconfigure(len(ladder), ladder.model_bytes, now, state, fps)
            self._rules, self._ladder, self._ladder_key = rules, ladder, key
            self.rungs = len(ladder)
        return rules, ladder

    @staticmethod
    def _drain_s(state: LinkState, fps: float) -> float:
        """How long until the bytes queued now drain to what lets a frame go (a quarter
        period's worth: the rule of ``AdaptController``)."""
        rate, backlog = state.rate, state.backlog
        if rate is None or rate <= 0 or backlog is None or fps <= 0:
            return _MIN_RETRY_S * 2
        wait = (backlog - rate * 0.25 / fps) / rate
        return min(max(wait, _MIN_RETRY_S), 1.0 / fps, _MAX_RETRY_S)


def on_this_machine(sock: socket.socket) -> bool:
    """Whether ``sock``'s peer is on this machine: a loopback address, or the address the
    connection reached it at (never raises; False if it cannot tell)."""
    try:
        peer = socket.socket.getpeername(sock)[0]
        here = socket.socket.getsockname(sock)[0]
        return peer == here or ipaddress.ip_address(peer.split("%")[0]).is_loopback
    except (OSError, ValueError, IndexError, TypeError):
        return False


def adapt_fields(controller: LinkController | None) -> dict[str, object]:
    """The adaptive fields of ``metadata`` and of a viewer in ``stats()``: ``adapt``, ``rung``,
    ``rungs``, ``link_kbps``, ``rtt_ms``, ``adapt_reason`` (``controller`` None: adaptation
    off for this viewer). Any thread."""
    if controller is None:
        return {
            "adapt": False, "rung": 0, "rungs": 1, "link_kbps": None, "rtt_ms": None,
            "adapt_reason": None,
        }
    link = controller.link
    return {
        "adapt": True,
        "rung": controller.rung,
        "rungs": controller.rungs,
        "link_kbps": None if link is None else link.kbps,
        "rtt_ms": None if link is None else link.rtt_ms,
        "adapt_reason": controller.reason,
    }
