"""RateWindow and CounterRates on their own: time is passed in, never read."""

from __future__ import annotations

import pytest
from together import run_together

from camstream.delivery.pacing import CounterRates as PacingCounterRates
from camstream.delivery.ratewindow import CounterRates, RateWindow


def test_events_leave_the_window_once_it_has_passed_them() -> None:
    window = RateWindow(1.0)
    for t in (10.0, 10.25, 10.5):  # (times a float holds exactly)
        window.add(t)
    assert window.count(10.5) == 3
    assert window.count(10.75) == 3
    assert window.count(11.0) == 2  # the window is (10.0, 11.0]: 10.0 is out
    assert window.count(11.25) == 1
    assert window.count(11.5) == 0
    window.add(11.5, (2,))
    assert window.count(11.5) == 2 and window.count(12.5) == 0


def test_kinds_are_counted_apart_and_missing_ones_are_zero() -> None:
    window = RateWindow(2.0, kinds=3)
    window.add(0.0, (1, 5, 0))
    window.add(1.0, (2,))
    assert window.counts(1.0) == (3, 5, 0)
    assert window.counts(2.5) == (2, 0, 0)


def test_a_limit_refuses_once_the_window_holds_that_many() -> None:
    window = RateWindow(1.0)
    assert [window.add(5.0, limit=3) for _ in range(5)] == [True, True, True, False, False]
    assert window.count(5.0) == 3  # refused events are not recorded
    assert not window.add(5.9, limit=3)
    assert window.add(6.0, limit=3)  # the first three have left the window


def test_a_limit_holds_when_threads_race_for_the_last_places() -> None:
    window = RateWindow(1.0)
    taken: list[bool] = []

    def race() -> None:
        for _ in range(50):
            taken.append(window.add(0.5, limit=100))

    run_together([race] * 16)
    assert taken.count(True) == 100 == window.count(0.5)


def test_per_s_is_zero_until_half_a_second_is_watched_then_counts_over_the_time_watched() -> None:
    window = RateWindow(2.0)
    window.add(10.0, (0,))
    window.add(10.2, (4,))
    assert window.per_s(10.4) == (0.0,)
    assert window.per_s(11.0) == (4.0,)  # 4 events over the 1 s watched, not over 2 s
    assert window.per_s(11.0, pending=(2,)) == (6.0,)
    assert window.per_s(14.0) == (0.0,)  # all gone


def test_counter_rates_divide_growth_by_the_window() -> None:
    rates = CounterRates(window_s=2.0)
    assert rates.per_s(10.0, (0, 0)) == (0.0, 0.0)
    for step in range(31):  # 3 s of samples, 10 a second, counters growing by 3 and 1
        rates.sample(10.0 + step / 10, (3 * step, step))
    assert rates.per_s(13.0, (90, 30)) == pytest.approx((30.0, 10.0), abs=0.2)
    assert rates.per_s(13.0, (90 + 60, 30)) == pytest.approx((60.0, 10.0), abs=0.2)


def test_counter_rates_start_from_the_first_totals_not_from_zero() -> None:
    rates = CounterRates(window_s=2.0)
    rates.sample(100.0, (5000, 7))  # counters that ran before the first sample
    rates.sample(101.0, (5030, 7))
    assert rates.per_s(101.0, (5030, 7)) == (30.0, 0.0)


def test_the_pacing_module_still_names_counter_rates() -> None:
    assert PacingCounterRates is CounterRates


@pytest.mark.parametrize(("window_s", "kinds"), [(0.0, 1), (-1.0, 1), (1.0, 0)])
def test_a_window_needs_a_length_and_a_kind(window_s: float, kinds: int) -> None:
    with pytest.raises(ValueError):
        RateWindow(window_s, kinds)
