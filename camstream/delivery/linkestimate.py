"""How fast one viewer's link drains its bytes, and its round-trip time, read from its socket.

A :class:`LinkEstimate` is fed :class:`LinkSample`\\ s (one look at the socket each; time is
passed in, so it is tested without sockets) and says, as a :class:`LinkState`, the rate at
which the kernel drains this viewer's bytes (bytes/s), the round-trip time and the bytes queued
beyond what the path holds in flight. :class:`SocketMeter` is the adapter that takes the
samples from a real socket (Linux ``TCP_INFO`` and ``SIOCOUTQ``; elsewhere the timing of
blocking writes).

Camera frames are bursty: one frame, then idle until the next. The rate must say what the link
*can* carry, not what was offered, so it comes from two kinds of evidence:

* **Measured** (the link was the limit): intervals during which bytes waited in the socket that
  the kernel had not even sent yet (``tcpi_notsent_bytes`` > 0 at the end, and at the start or
  since a write right after it: held back by the congestion window, pacing or the reader's
  window), over which the bytes acknowledged per second are the drain rate (16 KB or 100 ms
  at least: acknowledgements come a few packets at a time, and in jumps after a loss). The
  median figure of the last ``window_s`` counts while the backlog lasts and for a quarter
  window after; when those of the last quarter window fall far below it (the link got
  slower), the older ones are dropped at once.
* **Bursts** (the link was not the limit): the bytes acknowledged per second of *busy* time
  (``tcpi_busy_time``: time with data outstanding), i.e. how fast each frame drained while it
  was draining. On short paths this is the link's rate for frames (a shaper's bucket that lets
  the first packets of a burst through at once makes it higher than the long-run rate, and so
  it is: a frame drains that fast); on paths whose round trip is a good part of a frame period
  it is low, near what was offered (:attr:`LinkState.offered`; the controller then probes).
  It counts once no backlog was seen for a quarter window, if it is the higher figure (the
  link got faster).

The kernel's own delivery-rate samples (``tcpi_delivery_rate``) are not used: app-limited ones
are worthless between bursts (the first packets after an idle gap pass a shaper's bucket at line
rate and give figures hundreds of times the link's rate), and even those marked not
app-limited came out at half the link's rate between bursts, or at five times it right after a
backlog cleared, on a tbf-shaped link.

Contract for callers: take a sample right before every write to the socket (the decision to
send takes one anyway) and report the write with :meth:`LinkEstimate.wrote`; then an interval
between two samples holds at most one write, at its start, which is what the measured figure
relies on (more writes between two samples only make it skip that interval). Not thread-safe:
one viewer's thread at a time (the one holding the viewer's loop).
"""

from __future__ import annotations

import collections
import collections.abc
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from ..ws.tcpinfo import read_tcp_info

__all__ = ["LinkEstimate", "LinkSample", "LinkState", "SocketMeter", "sample_socket"]

_MIN_RUN_BYTES = 16 * 1024  # a measured interval spans this many bytes (acks come in steps)
_MIN_RUN_S = 0.1  # ... or this long, whichever comes first
_MIN_RUN_FLOOR_S = 0.02  # ... but never shorter than this (acknowledgements jump after a loss)
_DROP_FIGURES = 3  # recent measured figures needed to say the link got slower
_MIN_DRAINING_S = 0.01  # LinkState.draining needs a backlog this old
_RUN_SPAN_S = 0.25  # ... and at most this (the newest part of a long backlog)
_TICK_S = 0.004  # the kernel counts busy time in clock ticks (4 ms at HZ=250)
_MIN_BURST_BYTES = 3000  # acknowledged bytes below this say nothing about the rate
_SLOW_WRITE_S = 0.01  # a blocking write this long drained at the link's rate (fallback)


_Figure = tuple[float, float]  # a measured figure: (when, bytes/s)


class LinkSample(NamedTuple):
    """One look at a viewer's socket at ``at`` (seconds, ``time.monotonic()``).

    Every other field may be None (not known on this platform). Counters are cumulative over
    the connection's life.
    """

    at: float
    acked: int | None = None
    """Bytes the peer has received so far: ``tcpi_bytes_acked``, plus the segments it
    acknowledged selectively beyond a hole (``tcpi_sacked`` x ``tcpi_snd_mss``), so a lost
    packet does not hold the count back until its retransmission arrives."""
    unsent: int | None = None
    """Bytes written and not yet acknowledged (``SIOCOUTQ``: in flight plus not yet sent)."""
    notsent: int | None = None
    """Of those, bytes the kernel has not sent even once (``tcpi_notsent_bytes``)."""
    busy: float | None = None
    """Seconds so far during which the socket had data outstanding (``tcpi_busy_time`` plus
    ``tcpi_rwnd_limited`` and ``tcpi_sndbuf_limited``: the kernel books the time held back
    by the reader's window or the send buffer there instead)."""
    rtt: float | None = None
    """Smoothed round-trip time, s."""
    min_rtt: float | None = None
    """Lowest round-trip time seen, s."""
    rwnd: float | None = None
    """Seconds so far during which the reader's receive window held the sending back
    (``tcpi_rwnd_limited``): the reader, not the path, was the limit."""
    window_full: bool | None = None
    """Whether bytes wait while what is in flight fills the reader's advertised window
    (``tcpi_snd_wnd``, less a segment): the reader is not taking them now."""


class LinkState(NamedTuple):
    """What a :class:`LinkEstimate` says now. Rates in bytes/s, times in s, sizes in bytes.

    (This and :class:`LinkSample` are named tuples, not frozen dataclasses: one of each is made
    for every frame a viewer is due, and a tuple is made in a fraction of the time.)"""

    rate: float | None = None
    """The rate at which the link drains this viewer's bytes; None until anything is known."""
    measured: bool = False
    """True if :attr:`rate` was measured while the link was the limit (a backlog): the link's
    capacity. False if it comes from how fast bursts drained (see the module docstring)."""
    rtt: float | None = None
    """Smoothed round-trip time."""
    min_rtt: float | None = None
    """Lowest round-trip time seen: the path without queues."""
    unsent: int | None = None
    """Bytes written and not yet acknowledged, at the newest sample."""
    backlog: int | None = None
    """Bytes queued beyond what the path holds in flight (rate x min_rtt) at the newest
    sample: what the next frame would wait behind. None where unsent bytes are unknown."""
    busy_fraction: float | None = None
    """Share of the window during which the socket had data outstanding."""
    draining: float | None = None
    """The rate of the backlog going on now (bytes acknowledged per second since it began, or
    over its last quarter second), however short it is yet; None when nothing waits. Rough
    (acknowledgements come a few packets at a time), but it shows a link that suddenly drains
    far slower than frames arrive one frame after the fact."""
    offered: float = 0.0
    """Bytes written per second over the window (reported with :meth:`LinkEstimate.wrote`):
    a :attr:`rate` from bursts not well above it says little about what the link could carry."""
    reader_limited: bool = False
    """True if for half the newest interval, or of the window, the reader's receive window
    held the sending back
    (``tcpi_rwnd_limited``): the viewer does not read as fast as its link could carry (a
    program busy with each frame, a reader that stopped), and smaller frames would not help."""

    @property
    def kbps(self) -> float | None:
        """:attr:`rate` in kbit/s, rounded (the ``link_kbps`` of metadata and stats)."""
        return None if self.rate is None else round(self.rate * 8 / 1000, 1)

    @property
    def rtt_ms(self) -> float | None:
        """:attr:`rtt` in ms, rounded (the ``rtt_ms`` of metadata and stats)."""
        return None if self.rtt is None else round(self.rtt * 1000, 1)


@dataclass
class _Interval:
    """Between two samples: when it ended, how long, bytes acknowledged, busy seconds, and
    whether it began with the socket idle (a new burst)."""

    end: float
    seconds: float
    acked: int
    busy: float
    new_burst: bool
    rwnd: float = 0.0


@dataclass
class _Totals:
    """Sums over the intervals in the window (kept up to date as they come and go)."""

    seconds: float = 0.0
    acked: int = 0
    busy: float = 0.0
    bursts: int = 0
    rwnd: float = 0.0


class LinkEstimate:
    """The link estimate of one viewer (see the module docstring).

    Args:
        window_s: how far back the evidence reaches, s; a drop shows within about a quarter
            of it (recent measured figures far below the older ones replace them).
    """

    def __init__(self, window_s: float = 1.0) -> None:
        self.window_s = window_s
        self._recent_s = window_s / 4
        self._prev: LinkSample | None = None
        self._prev_acked: int | None = None
        self._measured: collections.deque[_Figure] = collections.deque()
        # (first figure, last figure, count, median) of _measured when last worked out
        self._median_cache: tuple[_Figure, _Figure, int, float] | None = None
        self._intervals: collections.deque[_Interval] = collections.deque()
        self._totals = _Totals()  # sums over _intervals
        self._run: collections.deque[tuple[float, int]] = collections.deque()  # (at, acked)
        self._writes = 0  # writes since the newest sample
        self._written: collections.deque[tuple[float, int]] = collections.deque()  # (at, bytes)
        self._written_total = 0  # bytes in _written
        self._full_since: float | None = None  # the end of a write that waited (timed_write)
        self._rtt: float | None = None
        self._min_rtt: float | None = None
        self._last_rate: tuple[float, bool] | None = None  # kept while the window is empty
        self._reader_now = False  # the newest interval was held back by the reader's window

    # Input

    def wrote(self, at: float, nbytes: int) -> None:
        """``nbytes`` were written to the socket at ``at`` (take a sample just before)."""
        self._writes += 1
        self._written.append((at, nbytes))
        self._written_total += nbytes

    def timed_write(self, started: float, ended: float, nbytes: int) -> None:
        """A blocking write of ``nbytes`` took from ``started`` to ``ended``: the fallback
        where the socket tells nothing (no ``TCP_INFO``).

        A write that had to wait ends with the send buffer full. So when two writes in a row
        waited, the link drained the second one's bytes between the two ends: that is its rate
        (less, if the buffer ran empty in between). One write alone says nothing: it may have
        filled free room before it waited."""
        waited = ended - started >= _SLOW_WRITE_S
        full_since, self._full_since = self._full_since, ended if waited else None
        if self._prev is not None and self._prev.acked is not None:
            return  # the socket's own figures are better
        if waited and full_since is not None and ended > full_since and nbytes > 0:
            self._measured.append((ended, nbytes / (ended - full_since)))

    def add(self, sample: LinkSample) -> None:
        """Take one look at the socket (samples in time order)."""
        prev, self._prev = self._prev, sample
        prev_acked, acked = self._prev_acked, sample.acked
        self._prev_acked = acked
        writes, self._writes = self._writes, 0
        if sample.rtt is not None:
            self._rtt = sample.rtt
        if sample.min_rtt is not None:
            self._min_rtt = sample.min_rtt
        if prev is None or sample.at <= prev.at:
            return
        if acked is None or prev_acked is None or acked < prev_acked:
            self._run.clear()
            return
        rwnd = 0.0
        if sample.rwnd is not None and prev.rwnd is not None:
            rwnd = max(sample.rwnd - prev.rwnd, 0.0)
        # Held back by the reader's window for most of the interval: the reader's pace, not
        # the link's (no measured figure from it).
        self._reader_now = bool(sample.window_full) or rwnd >= 0.5 * (sample.at - prev.at)
        if self._reader_now:
            self._run.clear()
        else:
            self._take_backlogged(prev, sample, acked, prev_acked, writes)
        if sample.busy is not None and prev.busy is not None:
            self._keep(_Interval(
                sample.at, sample.at - prev.at, acked - prev_acked,
                max(sample.busy - prev.busy, 0.0), prev.unsent == 0, rwnd,
            ))

    def _keep(self, interval: _Interval, sign: int = 1) -> None:
        """Add ``interval`` to the window (``sign`` -1: take it out) and to the sums."""
        if sign > 0:
            self._intervals.append(interval)
        totals = self._totals
        totals.seconds += sign * interval.seconds
        totals.acked += sign * interval.acked
        totals.busy += sign * interval.busy
        totals.rwnd += sign * interval.rwnd
        totals.bursts += sign * (interval.new_burst and interval.acked > 0)

    def _take_backlogged(
        self, prev: LinkSample, sample: LinkSample, acked: int, prev_acked: int, writes: int
    ) -> None:
        """Extend the run of samples during which bytes waited unsent (from a write right
        after ``prev``, or since before it); its newest part gives a measured rate once it
        spans enough bytes or time (the newest stretch that does: a change shows at once)."""
        since_write = writes == 1 and not prev.notsent
        waiting = (
            sample.notsent is not None and sample.notsent > 0 and writes <= 1
            and (since_write or (prev.notsent is not None and prev.notsent > 0))
        )
        if not waiting:
            self._run.clear()
            return
        run = self._run
        if not run:  # the first acknowledgement of a new burst comes a round trip late
            run.append((prev.at + (self._min_rtt or 0.0) * since_write, prev_acked))
        run.append((sample.at, acked))
        while len(run) > 2 and sample.at - run[1][0] >= _RUN_SPAN_S:
            run.popleft()
        for start_at, start_acked in reversed(run):  # the newest stretch long enough
            seconds, nbytes = sample.at - start_at, acked - start_acked
            if seconds >= _MIN_RUN_FLOOR_S and (
                nbytes >= _MIN_RUN_BYTES or seconds >= _MIN_RUN_S
            ):
                if nbytes > 0:  # nothing acknowledged: a loss stall, not a rate (see draining)
                    self._measured.append((sample.at, nbytes / seconds))
                break

    # Output

    def state(self, now: float) -> LinkState:
        """The estimate at ``now`` (drops evidence older than the window)."""
        oldest = now - self.window_s
        if (self._measured and self._measured[-1][0] < oldest) or (
            self._intervals and self._intervals[-1].end < oldest
        ):
            self._rate(now)  # remembered: the window is about to empty
        self._expire(now)
        rate, measured = self._rate(now)
        prev = self._prev
        unsent = prev.unsent if prev is not None else None
        return LinkState(
            rate=rate,
            measured=measured,
            rtt=self._rtt,
            min_rtt=self._min_rtt,
            unsent=unsent,
            backlog=self._backlog(prev, rate),
            busy_fraction=self._busy_fraction(),
            draining=self._draining(),
            offered=self._written_total / self.window_s,
            reader_limited=self._reader_now or (
                self._totals.seconds > 0 and self._totals.rwnd >= 0.5 * self._totals.seconds
            ),
        )

    def _expire(self, now: float) -> None:
        oldest = now - self.window_s
        measured = self._measured
        while measured and measured[0][0] < oldest:
            measured.popleft()
        while self._intervals and self._intervals[0].end < oldest:
            self._keep(self._intervals.popleft(), -1)
        if not self._intervals:
            self._totals = _Totals()  # no rounding error left over
        while self._written and self._written[0][0] < oldest:
            self._written_total -= self._written.popleft()[1]
        # A drop: the figures of the last quarter window far below the window's; keep only
        # those. (Not for a stall with nothing acknowledged: a loss waiting for its
        # retransmission says nothing of the rate.) Figures are in time order: with the
        # oldest recent too, or too few, there is nothing to compare (the common case, cheap).
        since = now - self._recent_s
        if len(measured) <= _DROP_FIGURES or measured[0][0] >= since:
            return
        recent = [(at, rate) for at, rate in measured if at >= since]
        if _DROP_FIGURES <= len(recent) < len(measured):
            typical = _median(recent)
            if 0 < typical < 0.6 * self._median_measured():
                measured.clear()
                measured.extend(recent)

    def _rate(self, now: float) -> tuple[float | None, bool]:
        """The measured figure while a backlog is on or just ended (or while bursts drained no
        faster); else the bursts' figure. With neither in the window, the last one known."""
        measured = self._measured
        burst = self._burst_rate()
        if measured:
            typical = self._median_measured()
            if burst is None or typical >= burst or now - measured[-1][0] <= self._recent_s:
                self._last_rate = (typical, True)
                return typical, True
        if burst is not None:
            self._last_rate = (burst, False)
            return burst, False
        if self._last_rate is not None:
            return self._last_rate[0], False  # old news: not a measurement of now
        return None, False

    def _median_measured(self) -> float:
        """The median of the measured figures (there are some), worked out again only when
        they changed: figures are only added at the end, dropped at the start or replaced
        all at once, so the count and the first and last figures tell."""
        measured = self._measured
        first, last, count = measured[0], measured[-1], len(measured)
        cached = self._median_cache
        if cached is not None and cached[0] is first and cached[1] is last and (
            cached[2] == count
        ):
            return cached[3]
        typical = _median(measured)
        self._median_cache = (first, last, count, typical)
        return typical

    def _burst_rate(self) -> float | None:
        """Bytes acknowledged per second of busy time over the window (each new burst's first
        round trip, spent waiting for the first acknowledgement, taken off)."""
        totals = self._totals
        if totals.acked < _MIN_BURST_BYTES:
            return None
        waiting = totals.bursts * (self._min_rtt or 0.0)
        busy = max(totals.busy - waiting, totals.busy / 4, _TICK_S)
        return totals.acked / busy

    def _draining(self) -> float | None:
        run = self._run
        if len(run) < 2 or run[-1][0] - run[0][0] < _MIN_DRAINING_S:
            return None
        return (run[-1][1] - run[0][1]) / (run[-1][0] - run[0][0])

    def _busy_fraction(self) -> float | None:
        totals = self._totals
        if totals.seconds <= 0:
            return None
        return min(max(totals.busy / totals.seconds, 0.0), 1.0)

    def _backlog(self, prev: LinkSample | None, rate: float | None) -> int | None:
        if prev is None or prev.unsent is None:
            return None
        in_path = rate * self._min_rtt if rate is not None and self._min_rtt is not None else 0.0
        if prev.notsent is None:
            return max(int(prev.unsent - in_path), 0)
        in_flight = max(prev.unsent - prev.notsent, 0)
        return prev.notsent + max(int(in_flight - in_path), 0)


def sample_socket(
    sock: socket.socket, at: float, unsent: int | None = None, held: int = 0
) -> LinkSample:
    """A :class:`LinkSample` of ``sock`` now (``at``: the caller's ``time.monotonic()``).

    ``unsent`` is the socket's ``SIOCOUTQ`` if the caller has it (``Link.unsent_bytes()``);
    else it is worked out from ``TCP_INFO`` (bytes sent, less retransmitted and acknowledged,
    plus not yet sent). ``held`` is bytes written that the kernel has not even been given yet
    (``Link.pending``: the rest of a message a non-blocking write began, TLS ciphertext
    included): they count as not sent (and in ``unsent``, which from ``Link.unsent_bytes()``
    already holds them). Without ``TCP_INFO`` only ``unsent`` is known. Any thread; never
    raises.
    """
    info = read_tcp_info(sock)
    if info is None:
        return LinkSample(at, unsent=unsent)
    if unsent is None and None not in (info.bytes_sent, info.bytes_acked, info.notsent_bytes):
        retrans = info.bytes_retrans or 0
        in_flight = info.bytes_sent - retrans - info.bytes_acked  # type: ignore[operator]
        unsent = max(in_flight, 0) + info.notsent_bytes + held  # type: ignore[operator]
    notsent = info.notsent_bytes
    if held and notsent is not None:
        notsent += held
    acked = info.bytes_acked
    if acked is not None and info.sacked and info.snd_mss:
        acked += info.sacked * info.snd_mss  # received beyond a hole: delivered already
    window_full = None
    if info.snd_wnd is not None and info.bytes_sent is not None and acked is not None:
        in_flight = info.bytes_sent - (info.bytes_retrans or 0) - (info.bytes_acked or 0)
        window_full = (
            (bool(notsent) or in_flight > 0) and in_flight + (info.snd_mss or 1) > info.snd_wnd
        )
    busy = info.busy_time
    if busy is not None:  # the kernel counts these apart from busy_time, not within it
        busy += (info.rwnd_limited or 0.0) + (info.sndbuf_limited or 0.0)
    return LinkSample(
        at,
        acked=acked,
        unsent=unsent,
        notsent=notsent,
        busy=busy,
        rtt=info.rtt,
        min_rtt=info.min_rtt,
        rwnd=info.rwnd_limited,
        window_full=window_full,
    )


class SocketMeter:
    """Samples one viewer's socket into a :class:`LinkEstimate`: the adapter between a real
    socket and the estimate. Not thread-safe (the viewer's loop thread).

    Args:
        sock: the plain TCP socket (under TLS too: ``Link.sock``).
        unsent: returns the socket's ``SIOCOUTQ`` (``Link.unsent_bytes``), if available.
        estimate: the estimate to feed (default: a new one).
    """

    def __init__(
        self,
        sock: socket.socket,
        unsent: Callable[[], int | None] | None = None,
        estimate: LinkEstimate | None = None,
    ) -> None:
        self.sock = sock
        self.estimate = estimate if estimate is not None else LinkEstimate()
        self._unsent = unsent

    def sample(
        self, now: float, unsent: int | None = None, held: int = 0
    ) -> LinkState:
        """Look at the socket now (right before a write) and return the estimate.

        ``unsent``: the caller's fresh ``Link.unsent_bytes()`` if it has one (else the
        ``unsent`` callable given, if any, is asked); ``held``: ``Link.pending``, bytes not yet
        handed to the kernel (see :func:`sample_socket`).
        """
        if unsent is None and self._unsent is not None:
            unsent = self._unsent()
        self.estimate.add(sample_socket(self.sock, now, unsent, held))
        return self.estimate.state(now)

    def wrote(self, now: float, nbytes: int) -> None:
        """Report a write of ``nbytes`` (see :meth:`LinkEstimate.wrote`)."""
        self.estimate.wrote(now, nbytes)


def _median(figures: collections.abc.Iterable[_Figure]) -> float:
    """The median rate of (at, rate) figures (the upper one of an even count)."""
    rates = sorted(rate for _, rate in figures)
    return rates[len(rates) // 2]
