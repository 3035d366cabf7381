"""Pacer, the frame clock every viewer runs, on its own: time is passed in, never read."""

from __future__ import annotations

import pytest

from camstream.delivery.pacing import MAX_IN_FLIGHT_BYTES, Pacer

CAMERA_FPS = 30.0
PERIOD = 1 / CAMERA_FPS


def test_a_viewer_at_the_camera_rate_takes_every_new_frame_at_once() -> None:
    pacer = Pacer(stall_timeout=5.0)
    assert pacer.wait_s(100.0, CAMERA_FPS) < 0 and pacer.wake_after(CAMERA_FPS) == 0.0
    assert pacer.wants(1, 100.0, CAMERA_FPS)
    assert pacer.sent(1, 1000, 100.0, CAMERA_FPS, CAMERA_FPS) == 0
    assert not pacer.wants(1, 100.0, CAMERA_FPS)  # never the same frame twice
    assert pacer.wants(2, 100.0 + PERIOD, CAMERA_FPS)
    assert pacer.sent(5, 1000, 100.1, CAMERA_FPS, CAMERA_FPS) == 3  # 2, 3 and 4 were skipped
    assert pacer.due == 0.0


def test_a_slower_viewer_keeps_its_own_average_rate_on_the_camera_grid() -> None:
    pacer = Pacer(stall_timeout=5.0)
    now, seq, sent = 100.0, 0, []
    for _ in range(300):  # ten seconds of camera frames
        seq += 1
        if pacer.wants(seq, now, CAMERA_FPS):
            pacer.sent(seq, 1000, now, 10.0, CAMERA_FPS)
            sent.append(seq)
        now += PERIOD
    assert len(sent) == pytest.approx(100, abs=1)
    assert {b - a for a, b in zip(sent, sent[1:])} == {3}  # every third frame, no drift


def test_a_frame_may_go_a_quarter_camera_period_early_and_not_before() -> None:
    pacer = Pacer(stall_timeout=5.0)
    pacer.sent(1, 1000, 100.0, 10.0, CAMERA_FPS)
    assert pacer.due == pytest.approx(100.1)  # from 0.0 far behind: restarted one period on
    assert pacer.wait_s(100.0, CAMERA_FPS) == pytest.approx(0.1 - 0.25 * PERIOD)
    assert not pacer.wants(2, 100.1 - 0.3 * PERIOD, CAMERA_FPS)
    assert pacer.wants(2, 100.1 - 0.2 * PERIOD, CAMERA_FPS)


def test_a_viewer_far_behind_restarts_its_clock_instead_of_bursting() -> None:
    pacer = Pacer(stall_timeout=5.0)
    pacer.sent(1, 1000, 100.0, 10.0, CAMERA_FPS)
    pacer.sent(2, 1000, 200.0, 10.0, CAMERA_FPS)  # paused for 100 s
    assert pacer.due == pytest.approx(200.1)


def test_behind_and_stalled_follow_the_unsent_bytes() -> None:
    pacer = Pacer(stall_timeout=5.0)
    pacer.sent(1, 200_000, 100.0, CAMERA_FPS, CAMERA_FPS)
    assert not pacer.behind(None, 100.0)  # the platform cannot tell: never behind
    assert not pacer.behind(2 * 200_000, 100.0)  # two frames of its size may be in flight
    assert pacer.behind(2 * 200_000 + 1, 100.0)
    assert not pacer.stalled(105.0)
    assert pacer.behind(MAX_IN_FLIGHT_BYTES * 4, 105.0)  # still behind since 100.0
    assert pacer.stalled(105.01)
    assert not pacer.behind(0, 105.02) and not pacer.stalled(200.0)  # caught up: reset


def test_small_frames_may_have_the_in_flight_floor_unsent() -> None:
    pacer = Pacer(stall_timeout=1.0)
    pacer.sent(1, 10, 0.0, CAMERA_FPS, CAMERA_FPS)
    assert not pacer.behind(MAX_IN_FLIGHT_BYTES, 0.0)
    assert pacer.behind(MAX_IN_FLIGHT_BYTES + 1, 0.0)

