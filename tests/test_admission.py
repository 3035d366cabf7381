"""VariantAdmission and EncodeBudget on their own: the cap, the one rule of what is free, every
attempt charged, rungs bounded. A test clock stands in for time."""

from __future__ import annotations

import functools

import pytest
from together import run_together

from camstream.delivery.admission import (
    MAX_RUNGS_BELOW,
    EncodeBudget,
    EncodeBudgetExceeded,
    VariantAdmission,
)
from camstream.delivery.variant import Variant


class Clock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def admission(clock: Clock | None = None, **options: object) -> VariantAdmission:
    options = {"default_max_bytes": 65535, "max_variants": 2, **options}
    return VariantAdmission(clock=clock or Clock(), **options)  # type: ignore[arg-type]


def charged(adm: VariantAdmission, variant: Variant) -> bool:
    """Whether one attempt for ``variant`` took a unit of the budget."""
    before = adm.budget.attempts
    adm.charge(variant)
    return adm.budget.attempts == before + 1


def test_the_default_variants_are_free_and_every_other_attempt_is_charged() -> None:
    adm = admission(max_encodes_per_s=1000)
    assert adm.defaults == {Variant(), Variant(max_bytes=65535)}
    assert not charged(adm, Variant())
    assert not charged(adm, Variant(max_bytes=65535))
    # The rule is the variant as the viewer has it, before its quality is filled in: asking
    # for the default quality, another limit, or no limit when the default has one is not free.
    assert charged(adm, Variant(quality=80))
    assert charged(adm, Variant(max_bytes=65534))
    assert charged(adm, Variant(width=320, max_bytes=65535))
    assert adm.budget.attempts == 3 and adm.budget.refused == 0


def test_the_budget_refuses_past_its_rate_and_comes_back_a_second_later() -> None:
    clock = Clock()
    budget = EncodeBudget(3, clock)
    for _ in range(3):
        budget.take()
    with pytest.raises(EncodeBudgetExceeded):
        budget.take()
    clock.now += 0.999
    with pytest.raises(EncodeBudgetExceeded):
        budget.take()
    clock.now += 0.002
    budget.take()
    assert (budget.attempts, budget.refused) == (4, 2)


def test_no_budget_allows_everything_and_still_counts() -> None:
    budget = EncodeBudget(None, Clock())
    for _ in range(1000):
        budget.take()
    assert (budget.attempts, budget.refused) == (1000, 0)


def test_threads_racing_for_the_budget_get_exactly_the_budget() -> None:
    """Checking and taking are one step: 32 callers at once cannot all pass a check first."""
    adm = admission(max_encodes_per_s=10)
    outcomes: list[bool] = []

    def attempt(i: int) -> None:
        try:
            adm.charge(Variant(width=100 + i))
            outcomes.append(True)
        except EncodeBudgetExceeded:
            outcomes.append(False)

    run_together([functools.partial(attempt, i) for i in range(32)])
    assert outcomes.count(True) == 10 and adm.budget.refused == 22


def test_the_cap_gives_the_nearest_live_variant_and_never_caps_the_defaults() -> None:
    adm = admission(max_variants=1)
    small = Variant(width=320, quality=60)
    assert adm.assign(small) == small
    assert adm.assign(Variant(width=300, quality=50)) == small
    assert adm.assign(Variant(max_bytes=65535)) == Variant(max_bytes=65535)
    assert adm.live_variants == 2
    for _ in range(2):
        adm.release(small)
    assert adm.assign(Variant(width=200)) == Variant(width=200)  # a place came free


def test_the_fan_out_encodes_the_defaults_and_the_most_used_variant() -> None:
    adm = admission()
    assert adm.encodes_inline() == adm.defaults
    popular, rare = Variant(width=320), Variant(width=160)
    for _ in range(3):
        adm.assign(popular)
    adm.assign(rare)
    assert adm.encodes_inline() == adm.defaults | {popular}


# Rungs: the seam for per-viewer adaptation (issue 18)


def test_rungs_are_bounded_per_variant_and_take_no_place_under_the_cap() -> None:
    adm = admission(max_variants=1)
    top = adm.assign(Variant(width=640, quality=80))
    rungs = [Variant(width=640, quality=q) for q in (60, 45, 30, 20, 15, 10)]
    given = [adm.assign_rung(top, rung) for rung in rungs]
    assert given[:MAX_RUNGS_BELOW] == rungs[:MAX_RUNGS_BELOW]
    # Beyond the bound: the nearest rung in use (quality 20), whatever is asked.
    assert set(given[MAX_RUNGS_BELOW:]) == {Variant(width=640, quality=20)}
    assert adm.live_variants == 1 + MAX_RUNGS_BELOW
    assert adm.assign(Variant(width=100)) == top  # rungs did not open places under the cap


def test_a_rung_is_budgeted_as_the_variant_it_comes_from() -> None:
    adm = admission(max_encodes_per_s=1000)
    default, own = adm.assign(Variant(max_bytes=65535)), adm.assign(Variant(width=320))
    below_default = Variant(width=320, quality=40, max_bytes=65535)
    below_own = Variant(width=160, quality=40)
    assert charged(adm, below_default)  # not a rung yet: an ordinary variant
    adm.assign_rung(default, below_default)
    adm.assign_rung(own, below_own)
    assert not charged(adm, below_default)
    assert charged(adm, below_own)
    adm.release_rung(default, below_default)
    assert charged(adm, below_default)  # free only while someone is on it
    assert adm.live_variants == 3


def test_a_rung_needs_a_live_variant_and_goes_when_released() -> None:
    adm = admission()
    with pytest.raises(ValueError):
        adm.assign_rung(Variant(width=320), Variant(width=160))
    top = adm.assign(Variant(width=320))
    rung = adm.assign_rung(top, Variant(width=160))
    adm.assign_rung(top, rung)
    adm.release_rung(top, rung)
    assert adm.live_variants == 2  # one viewer still on it
    adm.release_rung(top, rung)
    assert adm.live_variants == 1
    adm.release_rung(top, rung)  # already gone: nothing happens
    assert adm.live_variants == 1
