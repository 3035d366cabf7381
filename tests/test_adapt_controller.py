"""The adaptation controller on simulated links (pure logic: no sockets, time passed in).

A :class:`SimLink` is what a viewer's socket looks like from the server: written bytes queue
and drain at the link's rate; it reports cumulative bytes acknowledged, busy time, unsent and
not-yet-sent bytes as ``TCP_INFO``/``SIOCOUTQ`` would. The real :class:`LinkEstimate` turns
those samples into the controller's input, and :func:`drive` plays a viewer's loop: a frame is
due every period, the controller decides, a frame that may not go is asked about again 5 ms
later (the loop's behind-poll), as the integration will.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest

from camstream.delivery.adapt import REASONS, AdaptController, Decision
from camstream.delivery.linkestimate import LinkEstimate, LinkSample, LinkState

MBIT = 1e6 / 8  # bytes/s in one Mbit/s
SIZES = (180_000, 90_000, 45_000, 22_000, 11_000)  # a 720p webcam's ladder, bytes per frame
POLL_S = 0.005


class SimLink:
    """A socket's view of a link: a queue that drains at ``rate`` bytes/s."""

    def __init__(self, rate: float, rtt: float = 0.002, mss: int = 1448) -> None:
        self.rate = rate
        self.rtt = rtt
        self.mss = mss
        self.t = 0.0
        self.queue = 0.0
        self.acked = 0.0
        self.busy = 0.0

    def advance(self, to: float) -> None:
        if to > self.t and self.queue > 0:
            drained = min(self.queue, self.rate * (to - self.t))
            self.queue -= drained
            self.acked += drained
            self.busy += drained / self.rate
        self.t = max(self.t, to)

    def write(self, nbytes: int) -> float:
        """Queue a frame; returns when its last byte will have drained (at today's rate)."""
        self.queue += nbytes
        return self.t + self.queue / self.rate

    def sample(self) -> LinkSample:
        in_flight = min(self.queue, max(self.rate * self.rtt, 10 * self.mss))
        return LinkSample(
            at=self.t,
            acked=int(self.acked),
            unsent=int(self.queue),
            notsent=int(self.queue - in_flight),
            busy=self.busy,
            rtt=self.rtt + self.queue / self.rate,
            min_rtt=self.rtt,
        )


@dataclass
class Run:
    """What one viewer saw: every decision that changed the rung, every frame sent."""

    changes: list[tuple[float, int, str]] = field(default_factory=list)  # (t, rung, reason)
    # (t, rung, bytes, when its last byte drains)
    frames: list[tuple[float, int, int, float]] = field(default_factory=list)

    def rung_at(self, t: float) -> int:
        rung = 0
        for at, r, _ in self.changes:
            if at > t:
                break
            rung = r
        return rung

    def changes_between(self, start: float, end: float) -> list[tuple[float, int, str]]:
        return [c for c in self.changes if start <= c[0] < end]

    def fps_between(self, start: float, end: float) -> float:
        return sum(1 for f in self.frames if start <= f[0] < end) / (end - start)


def drive(
    controller: AdaptController,
    link: SimLink,
    seconds: float,
    *,
    fps: float = 30.0,
    camera_fps: float = 30.0,
    sizes: tuple[int, ...] = SIZES,
    rates: dict[float, float] | None = None,
    estimate: LinkEstimate | None = None,
    distort: object = None,
    run: Run | None = None,
    seed: int = 1,
    late: dict[float, float] | None = None,
) -> Run:
    """Play ``seconds`` of a viewer's loop on ``link``; ``rates`` changes the link's rate at
    given times; ``distort`` (LinkState -> LinkState) bends what the controller is told;
    ``late`` holds the frame due at a given time back by so many seconds (the server held
    up: the frame goes late, the next one on time)."""
    rng = random.Random(seed)
    estimate = estimate or LinkEstimate()
    run = run or Run()
    changes = sorted((rates or {}).items())
    holdups = sorted((late or {}).items())
    period = 1.0 / min(fps, camera_fps)
    t = link.t
    end = t + seconds
    due = t
    while t < end:
        link.advance(t)
        while changes and changes[0][0] <= t + 1e-6:
            link.rate = changes.pop(0)[1]
        if holdups and holdups[0][0] <= t + 1e-6:
            t += holdups.pop(0)[1]
            link.advance(t)
        estimate.add(link.sample())
        state = estimate.state(t)
        if distort is not None:
            state = distort(state)  # type: ignore[operator]
        decision: Decision = controller.decide(t, state, fps, camera_fps)
        if decision.reason is not None:
            assert decision.reason in REASONS
            run.changes.append((t, decision.rung, decision.reason))
        if decision.send:
            nbytes = int(sizes[decision.rung] * rng.uniform(0.85, 1.15))
            done = link.write(nbytes)
            estimate.wrote(t, nbytes)
            controller.sent(decision.rung, nbytes, t)
            run.frames.append((t, decision.rung, nbytes, done))
            while due <= t + 1e-9:
                due += period  # the next frame on the viewer's grid (late ones skipped)
            t = due
        else:
            t += POLL_S  # the loop looks again shortly (its behind-poll)
    return run


def controller(**kwargs: object) -> AdaptController:
    return AdaptController(len(SIZES), SIZES, **kwargs)  # type: ignore[arg-type]


def fitting_rung(rate: float, fps: float = 30.0, headroom: float = 0.8) -> int:
    return next((k for k, b in enumerate(SIZES) if b * fps <= headroom * rate), len(SIZES) - 1)


# Convergence and stability


@pytest.mark.parametrize("mbit", [2, 4, 8, 20, 40])
def test_converges_to_the_highest_rung_that_fits_and_stays(mbit: float) -> None:
    link = SimLink(mbit * MBIT)
    run = drive(controller(), link, 40.0)
    want = fitting_rung(mbit * MBIT)
    assert run.rung_at(40.0) == want, run.changes
    settled = run.changes_between(5.0, 40.0)
    assert settled == [], f"rung changes on a steady {mbit} Mbit/s link: {settled}"
    if want < len(SIZES) - 1:  # a rung that fits goes at the full rate
        assert run.fps_between(5.0, 40.0) >= 29.0


def test_converges_from_below_as_well() -> None:
    ctrl = controller()
    ctrl.reconfigure(len(SIZES), SIZES, 0.0)  # starts at the top; force the floor first
    link = SimLink(0.3 * MBIT)
    run = drive(ctrl, link, 5.0)
    assert run.rung_at(5.0) == len(SIZES) - 1
    link.rate = 20 * MBIT
    drive(ctrl, link, 15.0, run=run)
    assert run.rung_at(20.0) == fitting_rung(20 * MBIT)
    ups = run.changes_between(5.0, 20.0)
    assert ups and all(reason == "probe" for _, _, reason in ups), ups
    assert [rung for _, rung, _ in ups] == sorted((rung for _, rung, _ in ups), reverse=True)


def test_frames_do_not_pile_up_on_a_slow_link() -> None:
    """At most about one frame in flight beyond what the link drains: latency stays near one
    frame's drain time even on the floor rung of a link too slow for 30 fps of it."""
    link = SimLink(1 * MBIT)
    run = drive(controller(), link, 20.0)
    late = [done - t for t, _, _, done in run.frames if t >= 5.0]
    floor_drain = SIZES[-1] * 1.15 / (1 * MBIT)
    assert max(late) < 2.5 * floor_drain, max(late)
    assert run.fps_between(5.0, 20.0) >= 8.0


# A drop and its recovery


def test_steps_down_within_a_frame_of_a_drop_and_recovers() -> None:
    link = SimLink(100 * MBIT)
    ctrl = controller()
    run = drive(ctrl, link, 20.0, rates={10.0: 2 * MBIT, 14.0: 100 * MBIT})
    assert run.changes_between(0.0, 10.0) == []
    first_down = run.changes_between(10.0, 14.0)[0]
    assert first_down[1] > 0 and first_down[2] in ("backlog", "link")
    assert first_down[0] - 10.0 <= 1 / 30 + 0.006, first_down  # the first frame after the drop
    assert run.rung_at(12.0) == fitting_rung(2 * MBIT)
    downs = run.changes_between(10.0, 14.0)
    assert all(rung > 0 for _, rung, _ in downs)
    after = run.changes_between(14.0, 20.0)
    assert after and all(reason == "probe" for _, _, reason in after)
    back = next(t for t, rung, _ in after if rung == 0)
    assert back - 14.0 <= 5.0, after


def test_a_drop_while_idle_between_frames_is_seen_at_the_next_frame() -> None:
    link = SimLink(50 * MBIT)
    ctrl = controller()
    run = drive(ctrl, link, 3.0)
    link.rate = 3 * MBIT  # between frames: the next one finds the queue
    drive(ctrl, link, 2.0, run=run)
    first_down = run.changes_between(3.0, 5.0)[0]
    assert first_down[0] - 3.0 <= 1 / 30 + 0.006


def test_a_frame_the_server_sent_late_is_not_a_slower_link() -> None:
    """The server held up for most of a period before it came to this viewer (a busy CPU,
    other viewers' encodes): that frame goes late, so the next one finds it still draining.
    That is no sign of a slower link: the next frame waits a moment, and the rung stays."""
    link = SimLink(7 * MBIT)  # rung 3 (22 KB x 30) fits, at 75 % of the link
    run = drive(controller(), link, 30.0, late={10.0: 0.028, 20.0: 0.025})
    assert run.rung_at(9.9) == 3, run.changes
    assert run.changes_between(9.9, 30.0) == [], run.changes
    assert run.fps_between(9.0, 12.0) >= 29.0


def test_frames_held_back_for_a_link_too_slow_for_their_rung_are_not_late_frames() -> None:
    """A frame the controller held back until its link drained goes out late too, and the
    next one finds it draining: that is the link being behind. With neither a measured rate
    nor a draining figure to go by (so only the backlog rule can tell), the viewer still
    steps down within about a second and a half of the link's drop."""
    for reported in (0.7, 1.0):  # a rate estimate below the link's, and an exact one

        def blind(state: LinkState, k: float = reported) -> LinkState:
            rate = None if state.rate is None else state.rate * k
            return state._replace(measured=False, draining=None, rate=rate)

        link = SimLink(8 * MBIT)  # rung 3 (22 KB x 30) fits; at 5.2 Mbit/s it does not
        run = drive(controller(), link, 20.0, rates={10.0: 5.2 * MBIT}, distort=blind)
        assert run.rung_at(9.99) == 3, run.changes
        downs = [c for c in run.changes_between(10.0, 20.0) if c[1] > 3]
        assert downs and downs[0][0] - 10.0 <= 1.6, (reported, run.changes)


# Who never adapts


def test_a_fast_link_never_leaves_the_top_rung() -> None:
    link = SimLink(1000 * MBIT, rtt=0.0002)
    run = drive(controller(), link, 60.0)
    assert run.changes == []
    assert {rung for _, rung, _, _ in run.frames} == {0}
    assert run.fps_between(0.0, 60.0) >= 29.9


def test_a_low_frame_rate_keeps_full_quality_where_the_link_carries_it() -> None:
    link = SimLink(20 * MBIT)  # 180 KB x 5 fps fits, x 30 would not
    run = drive(controller(), link, 30.0, fps=5.0)
    assert run.changes == []
    assert run.fps_between(0.0, 30.0) == pytest.approx(5.0, abs=0.1)
    faster = drive(controller(), SimLink(20 * MBIT), 30.0, fps=30.0)
    assert faster.rung_at(30.0) > 0  # the same link at 30 fps needs a lower rung


# Probing


def test_a_failed_probe_makes_the_next_one_wait_longer() -> None:
    """An estimate that says the rung above fits when it does not (a shaper's bucket makes
    bursts look faster than the link): each probe fails, and they get further apart."""
    link = SimLink(1 * MBIT * 8)  # rung 3 fits; rung 2 (45 KB x 30) does not

    def optimistic(state: LinkState) -> LinkState:
        if state.measured or state.rate is None:
            return state
        return state._replace(rate=state.rate * 2.2)

    run = drive(controller(), link, 90.0, distort=optimistic)
    probes = [t for t, rung, reason in run.changes if reason == "probe" and rung == 2]
    fails = [c for c in run.changes if c[2] == "probe_failed"]
    assert len(probes) >= 4 and len(fails) >= 3, run.changes
    gaps = [b - a for a, b in zip(probes, probes[1:])]
    assert all(later > earlier for earlier, later in zip(gaps[:3], gaps[1:4])), gaps
    assert max(gaps) <= 30.0 + 3.0
    assert run.rung_at(90.0) in (2, 3)


def test_probes_blind_where_the_estimate_cannot_tell() -> None:
    """No rate at all (no TCP_INFO): the controller still climbs, by probing."""
    ctrl = controller()
    ctrl.reconfigure(len(SIZES), SIZES, 0.0)
    blind = LinkState()
    ctrl.decide(0.0, LinkState(rate=1000.0, measured=True, backlog=0), 30, 30)
    assert ctrl.rung == len(SIZES) - 1
    rungs = []
    for i in range(1, 400):
        decision = ctrl.decide(i * 0.05, blind, 30, 30)
        assert decision.send
        rungs.append(decision.rung)
    assert rungs[-1] == 0
    assert rungs == sorted(rungs, reverse=True)


# Priors and configuration


def test_rungs_never_seen_are_guessed_from_the_one_seen() -> None:
    ctrl = AdaptController(4)  # no model: half the bytes per rung down
    ctrl.sent(0, 100_000, 0.0)
    assert [ctrl.expected_bytes(k, 0.1) for k in range(4)] == [100_000, 50_000, 25_000, 12_500]
    modelled = AdaptController(3, [90_000, 30_000, 10_000])
    modelled.sent(1, 20_000, 0.0)
    assert modelled.expected_bytes(0, 0.1) == pytest.approx(60_000)
    assert modelled.expected_bytes(2, 0.1) == pytest.approx(20_000 / 3)
    modelled.sent(1, 40_000, 0.2)  # recent frames of a rung move its figure
    assert 20_000 < modelled.expected_bytes(1, 0.3) < 40_000


def test_reconfigure_starts_on_the_highest_rung_a_measured_rate_fits() -> None:
    ctrl = controller()
    measured = LinkState(rate=8 * MBIT, measured=True, backlog=0)
    ctrl.reconfigure(len(SIZES), SIZES, 0.0, measured, fps=30)
    assert (ctrl.rung, ctrl.reason) == (fitting_rung(8 * MBIT), "config")
    ctrl.reconfigure(len(SIZES), SIZES, 1.0)  # nothing measured: the top
    assert (ctrl.rung, ctrl.reason) == (0, "config")


def test_bad_ladders_are_refused() -> None:
    with pytest.raises(ValueError):
        AdaptController(0)
    with pytest.raises(ValueError):
        AdaptController(3, [1, 2])


def test_a_single_rung_ladder_never_moves() -> None:
    ctrl = AdaptController(1, [50_000])
    run = drive(ctrl, SimLink(0.5 * MBIT), 5.0, sizes=(50_000,))
    assert run.changes == []
    assert run.frames  # frames still go, as fast as the link drains them


def test_a_reader_that_does_not_read_is_not_a_slow_link() -> None:
    """Bytes queue because the viewer's own receive window is full (a program busy with each
    frame): no step down, the frame waits; the same queue on the link steps down at once."""
    queued = LinkState(rate=4 * MBIT, measured=True, backlog=400_000, unsent=400_000)
    reader = AdaptController(len(SIZES), SIZES)
    reader.sent(0, SIZES[0], 0.0)
    stuck = queued._replace(reader_limited=True)
    decision = reader.decide(0.1, stuck, 30.0, 30.0)
    assert (decision.rung, decision.send, decision.reason) == (0, False, None)
    link = AdaptController(len(SIZES), SIZES)
    link.sent(0, SIZES[0], 0.0)
    decision = link.decide(0.1, queued, 30.0, 30.0)
    assert decision.rung > 0 and not decision.send and decision.reason == "link"



def test_a_viewer_on_this_machine_is_never_stepped_down() -> None:
    """Bytes that queue on loopback wait for a busy reader or CPU, not a link: the frame
    waits, the rung stays (encoding a smaller one would only cost more CPU)."""
    queued = LinkState(rate=15 * MBIT, backlog=52_000, unsent=52_000, rtt=0.01, min_rtt=2e-5)
    ctrl = AdaptController(len(SIZES), SIZES, local=True)
    ctrl.sent(0, 26_000, 0.0)
    decision = ctrl.decide(0.1, queued, 30.0, 30.0)
    assert (decision.rung, decision.send) == (0, False)
    assert AdaptController(len(SIZES), SIZES).decide(0.1, queued, 30.0, 30.0).rung > 0


def test_behind_a_reverse_proxy_the_proxy_reading_slowly_is_the_link() -> None:
    """A proxied viewer's socket is the proxy's, here or next door: the viewer's link shows
    only as the proxy's window closing once its buffers are full. Neither exemption holds:
    it steps down, though the socket is local and its reader holds the sending back."""
    stuck = LinkState(rate=4 * MBIT, measured=True, backlog=400_000, unsent=400_000,
                      reader_limited=True)
    ctrl = AdaptController(len(SIZES), SIZES, local=True, proxied=True)
    assert not ctrl.local
    ctrl.sent(0, SIZES[0], 0.0)
    decision = ctrl.decide(0.1, stuck, 30.0, 30.0)
    assert decision.rung > 0 and not decision.send and decision.reason == "link"


def test_behind_a_reverse_proxy_a_probe_holds_for_its_window_before_the_next() -> None:
    """The proxy's buffers hide a probe's failure for seconds, so a proxied viewer on a link
    that shows nothing goes up one rung, then waits out that probe's window (not only the
    up dwell) before the next: no climb to the top on buffers still filling."""
    quiet = LinkState(rate=200 * MBIT, measured=False, backlog=0, unsent=0, offered=MBIT)
    ctrl = AdaptController(
        len(SIZES), SIZES, proxied=True, up_dwell_s=2.0, probe_window_s=8.0,
        probe_backoff_s=4.0, now=0.0,
    )
    ctrl.sent(0, SIZES[0], 0.0)
    stuck = LinkState(rate=4 * MBIT, measured=True, backlog=400_000, unsent=400_000)
    assert ctrl.decide(0.1, stuck, 30.0, 30.0).rung > 0  # stepped down
    probes = []
    t = 0.1
    while t < 30.0:
        t = round(t + 1 / 30, 4)
        decision = ctrl.decide(t, quiet, 30.0, 30.0)
        if decision.reason == "probe":
            probes.append(t)
        ctrl.sent(decision.rung, SIZES[decision.rung], t)
    assert probes, "a proxied viewer probes up blind"
    assert all(b - a > 8.0 for a, b in zip(probes, probes[1:])), probes
    assert len(probes) >= 2, probes  # ...and goes on once each probe held
