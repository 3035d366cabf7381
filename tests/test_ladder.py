"""The quality ladder: what each rung is, that real encodes get smaller rung by rung, and that
odd requests cannot multiply the variants below their top."""

from __future__ import annotations

import random

import cv2
import numpy as np
import pytest

from camstream.capture.frame import Frame
from camstream.delivery.encoder import EncodeCache, Variant, fit_size
from camstream.delivery.ladder import FLOOR_WIDTH, QUALITIES, WIDTHS, build_ladder

GODOT = 65535


def webcam_picture(width: int = 1280, height: int = 720, seed: int = 3) -> np.ndarray:
    """A webcam-like picture: smooth shapes, a gradient, sensor noise and some text."""
    rng = np.random.default_rng(seed)
    blobs = cv2.GaussianBlur(rng.integers(0, 255, (height, width, 3), dtype=np.uint8), (0, 0), 9)
    ramp = np.linspace(0, 120, width, dtype=np.uint8)[None, :, None]
    image = cv2.add(cv2.addWeighted(blobs, 1.5, blobs, 0, -60), ramp)
    image = cv2.add(image, rng.integers(0, 24, (height, width, 3), dtype=np.uint8))
    for i in range(6):
        cv2.putText(image, f"camstream {i}", (40, 80 + i * height // 7), 0, width / 900,
                    (255, 255, 255), 2)
    return image


def camera_frame(image: np.ndarray, quality: int = 92) -> Frame:
    """A frame as a camera in MJPEG mode gives it: its own JPEG, untouched."""
    data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()
    return Frame(1, jpeg=data, width=image.shape[1], height=image.shape[0])


def test_the_top_is_what_was_asked_and_passes_the_camera_jpeg_through() -> None:
    asked = Variant()
    ladder = build_ladder(asked, 1280, 720)
    assert ladder.variant(0) is asked
    cache = EncodeCache()
    frame = camera_frame(webcam_picture())
    top = cache.get(frame, ladder.variant(0))
    assert top.passed_through and top.data == frame.jpeg
    assert cache.encodes == 0


def test_each_rung_carries_fewer_bytes_quality_first_then_size() -> None:
    ladder = build_ladder(Variant(), 1280, 720)
    assert 3 <= len(ladder) <= 5
    rungs = ladder.rungs
    # quality first: the first rung below keeps the size and lowers the quality
    assert (rungs[1].width, rungs[1].height) == (1280, 720)
    assert rungs[1].variant.quality in QUALITIES
    widths = [r.width for r in rungs]
    assert widths == sorted(widths, reverse=True)
    assert rungs[-1].width == FLOOR_WIDTH
    for rung in rungs:  # aspect kept
        assert abs(rung.height - rung.width * 720 / 1280) <= 1
    model = ladder.model_bytes
    assert all(lower <= 0.7 * upper for upper, lower in zip(model, model[1:]))
    # real encodes of a webcam-like picture shrink rung by rung, by roughly half or more
    cache = EncodeCache()
    frame = camera_frame(webcam_picture())
    sizes = [len(cache.get(frame, rung.variant).data) for rung in rungs]
    assert all(lower <= 0.75 * upper for upper, lower in zip(sizes, sizes[1:])), sizes
    assert sizes[-1] <= sizes[0] / 8, sizes
    for rung in rungs[1:]:
        encoded = cache.get(frame, rung.variant)
        assert (encoded.width, encoded.height) == (rung.width, rung.height)


def test_pixel_sources_start_from_the_servers_quality() -> None:
    ladder = build_ladder(Variant(), 1280, 720, source_is_jpeg=False, default_quality=80)
    assert ladder.rungs[1].variant.quality == 60  # 75 would save too little below 80
    assert ladder.rungs[-1].width == FLOOR_WIDTH


def test_byte_limits_hold_on_every_rung() -> None:
    ladder = build_ladder(Variant(max_bytes=GODOT), 1280, 720, default_max_bytes=GODOT)
    assert ladder.rungs[0].model_bytes == GODOT  # the top is capped by its limit
    assert all(r.variant.max_bytes == GODOT for r in ladder.rungs)
    assert all(r.model_bytes <= 0.7 * GODOT for r in ladder.rungs[1:])
    odd = build_ladder(Variant(max_bytes=50_001), 1280, 720, default_max_bytes=GODOT)
    assert {r.variant.max_bytes for r in odd.rungs[1:]} == {32768}  # a power of two under it
    cache = EncodeCache(default_max_bytes=GODOT)
    frame = camera_frame(webcam_picture())
    for rung in odd.rungs:
        assert len(cache.get(frame, rung.variant).data) <= 50_001


def test_ladders_are_fixed_and_shared() -> None:
    first = build_ladder(Variant(), 1280, 720)
    assert build_ladder(Variant(), 1280, 720) is first  # cached
    boxed = build_ladder(Variant(width=1280, height=720), 1280, 720)
    assert boxed.rungs[1:] == first.rungs[1:]  # the same request in other words: same rungs
    smaller = build_ladder(Variant(width=640), 1280, 720)
    assert set(smaller.rungs[1:]) <= set(first.rungs[1:]) | {
        r for r in build_ladder(Variant(width=640, quality=60), 1280, 720).rungs
    }


def test_odd_requests_cannot_multiply_the_rungs_below_their_top() -> None:
    rng = random.Random(7)
    below: set[Variant] = set()
    for _ in range(2000):
        asked = Variant(
            width=rng.choice([None, rng.randint(16, 4000)]),
            height=rng.choice([None, rng.randint(16, 4000)]),
            quality=rng.choice([None, rng.randint(1, 100)]),
            max_bytes=rng.choice([None, GODOT, rng.randint(4096, 2**31 - 1)]),
        )
        ladder = build_ladder(asked, 1280, 720, default_max_bytes=GODOT)
        assert len(ladder) <= 5
        for rung in ladder.rungs[1:]:
            v = rung.variant
            assert v.width in (*WIDTHS, 1280) and v.height is None
            assert v.quality is not None and v.quality % 5 == 0
            assert v.max_bytes in (None, GODOT) or v.max_bytes & (v.max_bytes - 1) == 0
            assert asked.max_bytes is None or (v.max_bytes or 0) <= asked.max_bytes
            assert fit_size(1280, 720, v.width, None)[0] <= fit_size(
                1280, 720, asked.width, asked.height)[0]
            below.add(v)
    # widths (6 at most for 720p) x qualities (a handful) x limits (None, Godot, 2^k)
    sizes_and_qualities = {(v.width, v.quality) for v in below}
    assert len(sizes_and_qualities) <= 40, sorted(sizes_and_qualities, key=str)


@pytest.mark.parametrize(
    ("source", "lowest"),
    [((1920, 1080), 320), ((640, 480), 320), ((720, 1280), 320), ((3840, 2160), 320)],
)
def test_every_source_size_steps_down_to_the_floor(source: tuple[int, int], lowest: int) -> None:
    ladder = build_ladder(Variant(), *source)
    assert ladder.rungs[-1].width == lowest
    assert len(ladder) <= 5
    assert all(a.model_bytes > b.model_bytes for a, b in zip(ladder.rungs, ladder.rungs[1:]))


def test_small_pictures_keep_what_they_can() -> None:
    for width, height in ((160, 120), (320, 240)):  # at or below the floor: only the quality
        small = build_ladder(Variant(), width, height)
        assert [r.width for r in small.rungs] == [width] * len(small)
        assert 2 <= len(small) <= 3
    assert len(build_ladder(Variant(width=200, quality=60), 320, 240)) == 1  # nothing to drop
    assert len(build_ladder(Variant(), 1280, 720, max_below=0)) == 1
    assert len(build_ladder(Variant(), 1280, 720, max_below=2)) == 3


def test_bad_sizes_are_refused() -> None:
    with pytest.raises(ValueError):
        build_ladder(Variant(), 0, 720)
    with pytest.raises(ValueError):
        build_ladder(Variant(), 1280, 720, max_below=-1)
