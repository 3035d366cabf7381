"""The per-viewer link estimate: TCP_INFO, the estimator's rules, and real shaped links.

The first part feeds :class:`LinkEstimate` made-up samples (pure logic). The second runs a real
``Streamer`` on the host side of a shaped link (a network namespace, a veth pair and ``tc tbf``:
``tests/netns.py``) streaming to a real viewer process inside the namespace, and reads the
server side of that viewer's socket, as the integration will.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import cv2
import numpy as np
import pytest
from conftest import SLACK, TIMEOUT, wait_until
from netns import Lane, NetnsError, SlowLinks, shaped_links, unavailable

from camstream import Streamer
from camstream.delivery.adapt import AdaptController
from camstream.delivery.linkcontrol import LinkController
from camstream.delivery.linkestimate import (
    LinkEstimate,
    LinkSample,
    LinkState,
    SocketMeter,
    sample_socket,
)
from camstream.delivery.viewer import ViewerLoop
from camstream.ws import tcpinfo
from camstream.ws.tcpinfo import TCP_INFO_SUPPORTED, read_tcp_info

MBIT = 1e6 / 8
linux_only = pytest.mark.skipif(not TCP_INFO_SUPPORTED, reason="TCP_INFO is Linux's")


# TCP_INFO


@linux_only
def test_tcp_info_of_a_real_socket() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        peer, _ = server.accept()
        with client, peer:
            peer.sendall(b"x" * 300_000)
            got = 0
            while got < 300_000:
                got += len(client.recv(1 << 20))
            assert wait_until(lambda: read_tcp_info(peer).bytes_acked == 300_000)  # type: ignore[union-attr]
            info = read_tcp_info(peer)
            assert info is not None
            assert info.bytes_sent is not None and info.bytes_sent >= 300_000
            assert info.notsent_bytes == 0 and info.unacked == 0
            assert info.rtt is not None and 0 < info.rtt < 1.0
            assert info.min_rtt is not None and 0 < info.min_rtt <= info.rtt + info.rttvar
            assert info.snd_mss and info.snd_cwnd
            assert info.busy_time is not None and info.busy_time >= 0
            sample = sample_socket(peer, 5.0)
            assert (sample.at, sample.acked, sample.unsent, sample.notsent) == (5.0, 300_000, 0, 0)


def test_tcp_info_of_what_has_none() -> None:
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with udp:
        assert read_tcp_info(udp) is None
        assert sample_socket(udp, 1.0, unsent=7) == LinkSample(1.0, unsent=7)
    closed = socket.socket()
    closed.close()
    assert read_tcp_info(closed) is None


def test_an_older_kernels_shorter_struct_leaves_the_newer_fields_none() -> None:
    raw = bytearray(120)  # Linux 3.x: up to tcpi_total_retrans and the pacing rates
    raw[68:72] = (25_000).to_bytes(4, sys.byteorder)  # tcpi_rtt, in microseconds
    info = tcpinfo._decode(bytes(raw))
    assert info.rtt == pytest.approx(0.025)
    assert info.bytes_acked is None and info.notsent_bytes is None and info.busy_time is None
    assert info.delivery_rate_app_limited is None
    longer = bytearray(168)
    longer[7] = 0x01 if sys.byteorder == "little" else 0x80
    assert tcpinfo._decode(bytes(longer)).delivery_rate_app_limited is True


# The estimator's rules (made-up samples)


def feed_backlogged(estimate: LinkEstimate, rate: float, start: float, seconds: float,
                    acked: float = 0.0, busy: float = 0.0, step: float = 0.01) -> float:
    """Samples of a socket that always has bytes waiting, draining at ``rate``."""
    t = start
    while t < start + seconds:
        estimate.add(LinkSample(t, acked=int(acked), unsent=300_000, notsent=200_000,
                                busy=busy, rtt=0.05, min_rtt=0.002))
        t += step
        acked += rate * step
        busy += step
    return acked


def test_a_backlog_measures_the_drain_rate() -> None:
    estimate = LinkEstimate()
    feed_backlogged(estimate, 4 * MBIT, 0.0, 1.0)
    state = estimate.state(1.0)
    assert state.measured
    assert state.rate == pytest.approx(4 * MBIT, rel=0.05)
    assert state.kbps == pytest.approx(4000, rel=0.05) and state.rtt_ms == 50.0
    assert state.backlog is not None and state.backlog >= 200_000
    assert state.draining == pytest.approx(4 * MBIT, rel=0.05)


def test_bursts_show_the_links_rate_not_the_offered_load() -> None:
    """One frame, then idle: each 20 KB frame drains in 20 ms at 1 MB/s, 30 times a second.
    The link is busy 60 % of the time; the estimate is the link's rate, not the 600 KB/s
    offered."""
    estimate = LinkEstimate()
    rate, frame, acked, busy = 1_000_000.0, 20_000, 0.0, 0.0
    for i in range(60):
        t = i / 30
        estimate.add(LinkSample(t, acked=int(acked), unsent=0, notsent=0, busy=busy,
                                rtt=0.01, min_rtt=0.0005))
        estimate.wrote(t, frame)
        acked += frame
        busy += frame / rate
    state = estimate.state(2.0)
    assert not state.measured
    assert state.rate == pytest.approx(rate, rel=0.1)
    assert state.offered == pytest.approx(600_000, rel=0.1)
    assert state.busy_fraction == pytest.approx(0.6, abs=0.05)
    assert state.backlog == 0 and state.draining is None


def test_a_drop_shows_within_a_fraction_of_the_window() -> None:
    estimate = LinkEstimate(window_s=1.0)
    acked = feed_backlogged(estimate, 20 * MBIT, 0.0, 2.0)
    assert estimate.state(2.0).rate == pytest.approx(20 * MBIT, rel=0.05)
    feed_backlogged(estimate, 2 * MBIT, 2.0, 0.3, acked=acked, busy=2.0)
    state = estimate.state(2.3)
    assert state.measured and state.rate == pytest.approx(2 * MBIT, rel=0.25)


def test_after_the_backlog_faster_bursts_take_over() -> None:
    estimate = LinkEstimate(window_s=1.0)
    acked = feed_backlogged(estimate, 2 * MBIT, 0.0, 1.0)
    busy = 1.0
    for i in range(60):  # then 20 KB frames that each drain in 2 ms (10 MB/s)
        t = 1.0 + i / 30
        estimate.add(LinkSample(t, acked=int(acked), unsent=0, notsent=0, busy=busy,
                                rtt=0.003, min_rtt=0.001))
        estimate.wrote(t, 20_000)
        acked += 20_000
        busy += 0.002
    state = estimate.state(3.0)
    assert not state.measured and state.rate > 5 * 2 * MBIT


def test_backlog_is_what_waits_beyond_what_the_path_holds() -> None:
    estimate = LinkEstimate()
    feed_backlogged(estimate, 1_000_000, 0.0, 0.5)
    # 1 MB/s over a 20 ms path holds 20 KB in flight; 30 KB in flight is 10 KB of queue
    estimate.add(LinkSample(0.5, acked=500_000, unsent=45_000, notsent=15_000, busy=0.5,
                            rtt=0.03, min_rtt=0.02))
    assert estimate.state(0.5).backlog == pytest.approx(15_000 + 10_000, rel=0.05)


def test_where_the_socket_tells_nothing_write_timing_gives_the_rate() -> None:
    estimate = LinkEstimate()
    estimate.add(LinkSample(0.0, unsent=None))
    assert estimate.state(0.0).rate is None and estimate.state(0.0).backlog is None
    estimate.timed_write(0.0, 0.002, 50_000)  # did not wait: says nothing
    assert estimate.state(0.01).rate is None
    estimate.timed_write(0.1, 0.3, 100_000)  # waited, but may have filled free room first
    assert estimate.state(0.3).rate is None
    estimate.timed_write(0.35, 0.5, 100_000)  # waited again: drained between the two ends
    state = estimate.state(0.5)
    assert state.rate == pytest.approx(500_000) and state.measured
    estimate.timed_write(0.6, 0.601, 10_000)  # fit at once: the buffer is no longer full
    estimate.timed_write(0.7, 0.75, 100_000)  # waited, after one that did not: nothing new
    assert estimate.state(0.75).rate == pytest.approx(500_000)


def test_the_estimate_outlives_a_quiet_window_as_old_news() -> None:
    estimate = LinkEstimate(window_s=1.0)
    feed_backlogged(estimate, 4 * MBIT, 0.0, 1.0)
    later = estimate.state(10.0)
    assert later.rate == pytest.approx(4 * MBIT, rel=0.05) and not later.measured


# Real shaped links


VIEWER = r"""
import socket, sys
host, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
sock = socket.create_connection((host, port), timeout=30)
sock.sendall(("GET " + path + " HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
              "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
              "Sec-WebSocket-Version: 13\r\n\r\n" % (host, port)).encode())
total = 0
buf = bytearray(1 << 20)
try:
    while True:
        n = sock.recv_into(buf)
        if not n:
            break
        total += n
except OSError:
    pass
print(total, flush=True)
"""


class JpegPublisher(threading.Thread):
    """Publishes pre-encoded JPEGs in turn at ``fps`` (``publish_jpeg``: passed through)."""

    def __init__(self, streamer: Streamer, jpegs: list[bytes], fps: float = 30.0) -> None:
        super().__init__(name="test-jpeg-publisher", daemon=True)
        self.streamer, self.jpegs, self.period = streamer, jpegs, 1.0 / fps
        self.stop = threading.Event()

    def run(self) -> None:
        deadline, i = time.monotonic(), 0
        while not self.stop.is_set():
            self.streamer.publish_jpeg(self.jpegs[i % len(self.jpegs)])
            i += 1
            deadline = max(deadline + self.period, time.monotonic() - self.period)
            self.stop.wait(max(deadline - time.monotonic(), 0.0))  # the camera's clock


def noisy_jpegs(
    width: int, height: int, quality: int, count: int = 8, noise: int = 60
) -> list[bytes]:
    rng = np.random.default_rng(5)
    base = rng.integers(0, noise + 1, (height, width, 3), dtype=np.uint8)
    out = []
    for i in range(count):
        image = cv2.putText(base.copy(), str(i), (20, height // 2), 0, height / 120,
                            (255, 255, 255), 3)
        out.append(cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes())
    return out


@pytest.fixture
def slow_links() -> Iterator[SlowLinks]:
    """A private shaped network for the test (skips where it cannot be made)."""
    with shaped_links() as links:
        yield links


@pytest.fixture
def streamer_on() -> Iterator[object]:
    """Start a ``Streamer("push")`` on a given address with a JPEG publisher; all stopped."""
    started: list[tuple[Streamer, JpegPublisher]] = []

    def start(host: str, jpegs: list[bytes]) -> Streamer:
        streamer = Streamer("push", host=host, port=0, fps=30, max_bytes=0)
        streamer.start()
        publisher = JpegPublisher(streamer, jpegs)
        started.append((streamer, publisher))
        publisher.start()
        return streamer

    yield start
    for streamer, publisher in started:
        publisher.stop.set()
        publisher.join(TIMEOUT)
        streamer.stop()


def start_viewer(lane: Lane | None, host: str, port: int) -> subprocess.Popen[str]:
    argv = [sys.executable, "-c", VIEWER, host, str(port), "/?max_bytes=0&adapt=off"]
    if lane is None:
        return subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    return lane.popen(argv, stdout=subprocess.PIPE, text=True)


def meter_of_the_viewer(streamer: Streamer) -> SocketMeter:
    """The server side of the one viewer's socket (a session's ``Link``), metered."""
    assert wait_until(lambda: streamer.client_count == 1, 3 * TIMEOUT)
    session = streamer._viewers.sessions()[0]
    link = session.connection.link
    return SocketMeter(link.sock, link.unsent_bytes)


def adaptive_viewer(lane: Lane, host: str, streamer: Streamer) -> subprocess.Popen[str]:
    """A viewer in ``lane`` with adaptation on (as it is by default), reading everything."""
    argv = [sys.executable, "-c", VIEWER, host, str(streamer.port), "/?max_bytes=0"]
    return lane.popen(argv, stdout=subprocess.PIPE, text=True)


def controller_of_the_viewer(streamer: Streamer) -> tuple[ViewerLoop, LinkController]:
    """The one viewer's loop and its adaptive controller (set by the viewer's thread)."""
    assert wait_until(lambda: streamer.client_count == 1, 3 * TIMEOUT)
    loop = streamer._viewers.sessions()[0]._loop
    assert wait_until(lambda: loop.controller is not None, TIMEOUT)
    controller = loop.controller
    assert isinstance(controller, LinkController)
    return loop, controller


def watch(meter: SocketMeter, seconds: float, every: float = 0.01) -> list:
    """Sample the socket for ``seconds``; returns the states (the test thread is the meter's
    only user; the socket's figures are the kernel's, whoever writes)."""
    states = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        states.append(meter.sample(time.monotonic()))
        time.sleep(every)  # the sampling clock, not a wait for some state
    return states


@linux_only
@pytest.mark.parametrize("mbit", [2, 8])
def test_a_viewer_behind_a_slow_link_is_measured_near_its_rate(
    slow_links: SlowLinks, streamer_on: object, mbit: float
) -> None:
    """180 KB frames at 30 fps are far more than the link carries: the socket stays
    backlogged, and the estimate is the shaper's rate (TCP payload: ~95 % of it)."""
    lane = slow_links.lane(mbit)
    streamer = streamer_on(slow_links.host_address, noisy_jpegs(1280, 720, 90, noise=16))  # type: ignore[operator]
    viewer = start_viewer(lane, slow_links.host_address, streamer.port)
    meter = meter_of_the_viewer(streamer)
    states = watch(meter, 3.0)
    last = states[-1]
    assert last.measured, last
    assert mbit * MBIT / 2 < last.rate < mbit * MBIT * 1.5, (last, lane.qdisc_stats())
    assert last.rtt is not None and 0 < last.rtt < 3.0
    assert last.min_rtt is not None and last.min_rtt < 0.05 * SLACK
    assert last.backlog is not None and last.backlog > 0
    assert viewer.poll() is None  # still reading


@linux_only
def test_small_frames_on_a_faster_link_show_the_link_not_the_load(
    slow_links: SlowLinks, streamer_on: object
) -> None:
    """~10 KB frames at 30 fps (~2.4 Mbit/s) on an 8 Mbit/s link: never backlogged, the
    estimate comes from how fast each frame drained, well above what was offered."""
    lane = slow_links.lane(8)
    jpegs = noisy_jpegs(640, 360, 80, noise=8)
    streamer = streamer_on(slow_links.host_address, jpegs)  # type: ignore[operator]
    start_viewer(lane, slow_links.host_address, streamer.port)
    meter = meter_of_the_viewer(streamer)
    state = watch(meter, 3.0)[-1]
    offered = 30 * sum(map(len, jpegs)) / len(jpegs)
    assert offered < 5 * MBIT
    assert not state.measured
    assert state.rate > 1.5 * offered, (state, offered)
    assert state.rate < 8 * MBIT * 3


@linux_only
def test_the_estimate_follows_a_rate_change_mid_stream(
    slow_links: SlowLinks, streamer_on: object
) -> None:
    lane = slow_links.lane(8)
    streamer = streamer_on(slow_links.host_address, noisy_jpegs(1280, 720, 90, noise=16))  # type: ignore[operator]
    start_viewer(lane, slow_links.host_address, streamer.port)
    meter = meter_of_the_viewer(streamer)
    watch(meter, 2.0)
    assert meter.estimate.state(time.monotonic()).rate > 4 * MBIT  # type: ignore[operator]
    lane.set_rate(2)

    def fallen() -> bool:  # sampling feeds the estimate, as watch() does
        rate = meter.sample(time.monotonic()).rate
        return rate is not None and rate < 2.5 * MBIT

    assert wait_until(fallen, TIMEOUT), meter.estimate.state(time.monotonic())
    late = [s.rate for s in watch(meter, 1.0)]  # and it stays down
    assert max(late) < 3 * MBIT, late[-5:]


@linux_only
def test_a_loopback_viewer_gets_a_high_estimate(streamer_on: object) -> None:
    jpegs = noisy_jpegs(1280, 720, 90, noise=16)
    streamer = streamer_on("127.0.0.1", jpegs)  # type: ignore[operator]
    viewer = start_viewer(None, "127.0.0.1", streamer.port)
    try:
        meter = meter_of_the_viewer(streamer)
        state = watch(meter, 2.0)[-1]
        assert state.rate is not None and state.rate > 100 * MBIT, state
        assert state.rtt is not None and state.rtt < 0.05 * SLACK
    finally:
        viewer.kill()
        viewer.communicate(timeout=TIMEOUT)


def test_without_tcp_info_a_slow_link_is_measured_by_write_timing(
    slow_links: SlowLinks, streamer_on: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the platform has no ``TCP_INFO`` (made so here: the socket's figures are the
    platform's, not the network's), the viewer's blocking writes that wait for the link give
    its rate, and the viewer steps down below the camera's own JPEGs."""
    from camstream.delivery import linkcontrol

    monkeypatch.setattr(tcpinfo, "_TCP_INFO", None)
    monkeypatch.setattr(linkcontrol, "TCP_INFO_SUPPORTED", False)
    mbit = 2
    lane = slow_links.lane(mbit)
    streamer = streamer_on(slow_links.host_address, noisy_jpegs(1280, 720, 90, noise=16))  # type: ignore[operator]
    viewer = adaptive_viewer(lane, slow_links.host_address, streamer)
    try:
        _, controller = controller_of_the_viewer(streamer)

        def stepped_down_on_a_measured_rate() -> bool:
            link = controller.link
            return controller.rung > 0 and link is not None and link.measured

        assert wait_until(stepped_down_on_a_measured_rate, 3 * TIMEOUT), controller.link
        link = controller.link
        assert link is not None and link.rate is not None
        assert link.rtt is None  # nothing but the writes was known
        # Coarse: the first figures come while the kernel's buffers and the shaper's burst
        # still take bytes faster than the link (0.9-2.2 times its rate in our runs).
        assert mbit * MBIT / 4 < link.rate < mbit * MBIT * 4, (link, lane.qdisc_stats())
        assert viewer.poll() is None  # still reading
    finally:
        viewer.kill()
        viewer.communicate(timeout=TIMEOUT)


@linux_only
def test_a_viewer_its_link_carries_on_a_lower_rung_is_not_looked_at_every_frame(
    slow_links: SlowLinks, streamer_on: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a rung below the top that its link carries (nothing left unsent at each frame), a
    viewer's socket is looked at every ``LOOK_BELOW_EVERY_S``, not at every frame: each look
    (``TCP_INFO``, the estimate, the rules) is the largest part of the cost of an adaptive
    viewer's frame. It stays on its rung, at the camera's rate."""

    lane = slow_links.lane(4)
    streamer = streamer_on(slow_links.host_address, noisy_jpegs(1280, 720, 90, noise=16))  # type: ignore[operator]
    viewer = adaptive_viewer(lane, slow_links.host_address, streamer)
    try:
        loop, controller = controller_of_the_viewer(streamer)
        looks: list[float] = []
        sample = controller.meter.sample

        def counted(now: float, unsent: int | None = None, held: int = 0) -> LinkState:
            looks.append(now)
            return sample(now, unsent, held)

        monkeypatch.setattr(controller.meter, "sample", counted)  # counts; the socket's own
        assert wait_until(lambda: controller.rung > 0, 3 * TIMEOUT), controller.link
        stepped = loop.stats.frames_sent
        assert wait_until(lambda: loop.stats.frames_sent >= stepped + 30, 3 * TIMEOUT)
        start_frames, start_looks, started = loop.stats.frames_sent, len(looks), time.monotonic()
        assert wait_until(lambda: loop.stats.frames_sent >= start_frames + 60, 3 * TIMEOUT)
        frames, seconds = loop.stats.frames_sent - start_frames, time.monotonic() - started
        span_looks = len(looks) - start_looks
        assert controller.rung > 0 and frames / seconds >= 20 / SLACK, (frames, seconds)
        assert span_looks <= 0.7 * frames, (span_looks, frames, controller.link)
        assert viewer.poll() is None  # still reading
    finally:
        viewer.kill()
        viewer.communicate(timeout=TIMEOUT)


# The estimate and the controller together, on a real link (a plain TCP sender)


SIZES = (180_000, 90_000, 45_000, 22_000, 11_000)  # a 720p ladder's frames, bytes
DRAIN = r"""
import socket, sys
sock = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30)
try:
    while sock.recv(1 << 20):
        pass
except OSError:
    pass
"""


class ClosedLoop:
    """Frames of ``SIZES[rung]`` bytes at 30 fps through a real socket, each decided by an
    :class:`AdaptController` from a :class:`SocketMeter` sampled right before it, as the
    integration will do (the test's thread; nothing else writes)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.meter = SocketMeter(sock)
        self.controller = AdaptController(len(SIZES), SIZES)
        self.sent: list[tuple[float, int]] = []  # (when, rung)
        self.changes: list[tuple[float, int, str]] = []
        self._due = time.monotonic()

    def run_until(self, done: object, timeout: float) -> bool:
        """Play frames until ``done(self)`` or ``timeout`` seconds; returns ``done``'s last."""
        end = time.monotonic() + timeout
        while not done(self):  # type: ignore[operator]
            now = time.monotonic()
            if now >= end:
                return False
            if now < self._due:
                time.sleep(min(self._due - now, 0.005))  # the camera's clock
                continue
            decision = self.controller.decide(now, self.meter.sample(now), 30, 30)
            if decision.reason is not None:
                self.changes.append((now, decision.rung, decision.reason))
            if not decision.send:
                time.sleep(0.005)  # the loop's behind-poll
                continue
            nbytes = SIZES[decision.rung]
            self.sock.sendall(bytes(nbytes))
            self.meter.wrote(now, nbytes)
            self.controller.sent(decision.rung, nbytes, now)
            self.sent.append((now, decision.rung))
            while self._due <= now:
                self._due += 1 / 30
        return True

    def steady(self, rung: int, seconds: float) -> object:
        """``done`` for :meth:`run_until`: from now on, ``seconds`` of frames all at ``rung``,
        at 25 fps or more."""
        since = time.monotonic()

        def done(loop: ClosedLoop) -> bool:
            now = time.monotonic()
            recent = [r for t, r in loop.sent if t >= max(since, now - seconds)]
            return now - since >= seconds and len(recent) >= 25 * seconds and set(recent) == {
                rung
            }
        return done


@linux_only
def test_the_controller_settles_drops_and_recovers_on_a_real_link(
    slow_links: SlowLinks,
) -> None:
    lane = slow_links.lane(8)
    with socket.create_server((slow_links.host_address, 0)) as server:
        lane.popen([sys.executable, "-c", DRAIN, slow_links.host_address,
                    str(server.getsockname()[1])])
        server.settimeout(3 * TIMEOUT)
        sock, _ = server.accept()
    with sock:
        loop = ClosedLoop(sock)
        # 8 Mbit/s at 30 fps fits 22 KB frames (rung 3), not 45 KB ones
        assert loop.run_until(loop.steady(3, 2.0), 2 * TIMEOUT), loop.changes
        assert all(rung > 0 for _, rung, _ in loop.changes)
        lane.set_rate(2)  # down to the floor, and quickly
        dropped, before = time.monotonic(), len(loop.changes)
        assert loop.run_until(lambda lp: lp.controller.rung == 4, TIMEOUT), loop.changes
        assert time.monotonic() - dropped < TIMEOUT / 2
        assert all(reason in ("backlog", "link") for _, _, reason in loop.changes[before:])
        lane.set_rate(8)  # back up, by probes (TCP itself may take a moment to catch up)
        before = len(loop.changes)
        assert loop.run_until(loop.steady(3, 1.0), 2 * TIMEOUT), loop.changes
        ups = loop.changes[before:]
        assert ups and {reason for _, _, reason in ups} <= {"probe", "probe_failed"}, ups
        assert ups[-1][1:] == (3, "probe")


# The shaped-link fixture itself


def test_shaped_links_are_made_and_removed(slow_links: SlowLinks) -> None:
    first, second = slow_links.lane(4), slow_links.lane(None)
    assert first.namespace != second.namespace and first.address != second.address
    assert "rate 4Mbit" in first.qdisc_stats()
    first.set_rate(12.5)
    assert "rate 12500Kbit" in first.qdisc_stats()
    second.set_rate(1)
    second.set_rate(None)
    assert "tbf" not in second.qdisc_stats()
    with pytest.raises(ValueError):
        first.set_rate(0)
    process = first.popen([sys.executable, "-c", "import time; time.sleep(60)"])
    slow_links.close()
    assert process.poll() is not None  # killed with the network
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert first.namespace not in listed and second.namespace not in listed
    links = subprocess.run(["ip", "link", "show"], capture_output=True, text=True).stdout
    assert slow_links.bridge not in links and first.host_device not in links
    slow_links.close()  # idempotent
    with pytest.raises(NetnsError):
        slow_links.lane(1)


def test_shaped_links_clean_up_after_a_failure() -> None:
    problem = unavailable()
    if problem is not None:
        pytest.skip(f"no shaped links: {problem}")
    with pytest.raises(RuntimeError, match="boom"):
        with SlowLinks() as links:
            lane = links.lane(2)
            raise RuntimeError("boom")
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert lane.namespace not in listed


def test_a_full_receive_window_is_the_reader_not_the_link() -> None:
    """Bytes wait while the reader's advertised window is full: what is acknowledged then is
    the reader's pace, not a measured rate of the link."""
    estimate = LinkEstimate()
    acked = 0
    for i in range(40):
        at = i * 0.01
        acked += 500  # the reader takes 50 KB/s
        estimate.wrote(at, 500)
        estimate.add(LinkSample(at, acked=acked, unsent=200_000, notsent=150_000, busy=at,
                                rtt=0.01, min_rtt=0.001, rwnd=at, window_full=True))
    state = estimate.state(0.4)
    assert state.reader_limited and not state.measured
