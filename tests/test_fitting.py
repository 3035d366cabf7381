"""ByteLimitFitter on its own: the search stays under the limit, each try is charged, the hints
make the next frame cost about one try."""

from __future__ import annotations

import numpy as np
import pytest

from camstream.capture.frame import Frame
from camstream.delivery.admission import EncodeBudgetExceeded
from camstream.delivery.fitting import MIN_QUALITY, ByteLimitFitter, step_down, step_up
from camstream.delivery.variant import Variant


def noise_frame(seq: int, width: int = 640, height: int = 480) -> Frame:
    image = np.random.default_rng(seq).integers(0, 256, (height, width, 3), dtype=np.uint8)
    image.flags.writeable = False
    return Frame(seq, image, 0.0, 0.0)


class Tries:
    """A charge() that counts the tries (and refuses past ``limit``)."""

    def __init__(self, limit: int | None = None) -> None:
        self.count, self._limit = 0, limit

    def __call__(self) -> None:
        if self._limit is not None and self.count >= self._limit:
            raise EncodeBudgetExceeded("spent")
        self.count += 1


def test_step_down_gives_up_quality_first_then_size_then_both() -> None:
    steps, state = [], (80, 1.0)
    while True:
        try:
            state = step_down(*state, smaller_side=int(480 * state[1]))
        except ValueError:
            break
        steps.append(state)
    qualities = [q for q, _ in steps]
    assert qualities[:3] == [64, 51, 40]  # quality down to 40 at full size
    first_smaller = next(i for i, (_, s) in enumerate(steps) if s < 1.0)
    assert all(q == 40 for q, _ in steps[first_smaller:first_smaller + 3])
    assert steps[-1][0] == MIN_QUALITY and steps[-1][1] < 0.05  # until 16 px a side


def test_step_up_retraces_step_down() -> None:
    assert step_up(40, 0.5, 80) == (40, 0.625)  # size back first while quality is good
    assert step_up(20, 0.5, 80) == (26, 0.5)  # below 40 and at half size: quality first
    assert step_up(40, 1.0, 80) == (51, 1.0)
    assert step_up(79, 1.0, 80) == (80, 1.0)  # never above what was asked


def test_a_search_stays_under_the_limit_and_charges_every_try() -> None:
    fitter, tries = ByteLimitFitter(), Tries()
    variant = Variant(quality=90, max_bytes=20_000)
    data, width, height, quality = fitter.fit(noise_frame(1), variant, 640, 480, tries)
    assert len(data) <= 20_000
    assert tries.count > 3  # noise at 640x480 needs several steps down
    assert width < 640 and height < 480 and quality <= 40


def test_the_hint_makes_the_next_frame_cost_about_one_try() -> None:
    fitter = ByteLimitFitter()
    variant = Variant(quality=90, max_bytes=20_000)
    fitter.fit(noise_frame(1), variant, 640, 480, Tries())
    again = Tries()
    data, *_ = fitter.fit(noise_frame(2), variant, 640, 480, again)
    assert len(data) <= 20_000 and again.count <= 2


def test_a_new_limit_starts_from_the_nearest_known_one() -> None:
    fitter = ByteLimitFitter()
    fitter.fit(noise_frame(1), Variant(quality=90, max_bytes=20_000), 640, 480, Tries())
    near = Tries()
    fitter.fit(noise_frame(2), Variant(quality=90, max_bytes=21_000), 640, 480, near)
    assert near.count <= 2


def test_a_refused_try_stops_the_search_and_the_next_one_resumes_there() -> None:
    fitter = ByteLimitFitter()
    variant = Variant(quality=90, max_bytes=20_000)
    whole = Tries()
    fitter.fit(noise_frame(1), variant, 640, 480, whole)  # how many tries it takes at once
    fitter = ByteLimitFitter()
    first = Tries(limit=2)
    with pytest.raises(EncodeBudgetExceeded):
        fitter.fit(noise_frame(1), variant, 640, 480, first)
    assert not fitter.starts_at_full(variant)  # it remembers where it stopped
    rest = Tries()
    data, *_ = fitter.fit(noise_frame(1), variant, 640, 480, rest)
    assert len(data) <= 20_000
    assert first.count + rest.count == whole.count  # no try made twice


def test_full_did_not_fit_starts_the_next_search_one_step_down() -> None:
    fitter = ByteLimitFitter()
    variant = Variant(quality=80, max_bytes=20_000)
    assert fitter.starts_at_full(variant)
    fitter.full_did_not_fit(variant, smaller_side=480)
    assert not fitter.starts_at_full(variant)
