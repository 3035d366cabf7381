"""JPEG encoding: once per frame and variant, sizes, byte limits."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import decode_jpeg
from together import run_together

from camstream.capture.frame import Frame
from camstream.delivery.encoder import EncodeCache, Variant, encode_jpeg, fit_size


def make_frame(seq: int, image: np.ndarray) -> Frame:
    image.flags.writeable = False
    return Frame(seq, image, 0.0, 0.0)


def noise(width: int, height: int, seed: int = 1) -> np.ndarray:
    """A worst case for JPEG: every pixel random."""
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.mark.parametrize(
    ("size", "box", "expected"),
    [
        ((640, 480), (None, None), (640, 480)),
        ((640, 480), (320, None), (320, 240)),
        ((640, 480), (None, 120), (160, 120)),
        ((640, 480), (320, 320), (320, 240)),  # fits the box, keeps the aspect ratio
        ((640, 480), (1280, 960), (640, 480)),  # never enlarged
        ((1920, 1080), (640, 640), (640, 360)),
    ],
)
def test_fit_size(size, box, expected) -> None:
    assert fit_size(*size, *box) == expected


def test_variant_size_and_quality() -> None:
    cache = EncodeCache()
    frame = make_frame(1, noise(640, 480))
    small = cache.get(frame, Variant(width=320, quality=50))
    assert (small.width, small.height, small.quality) == (320, 240, 50)
    assert decode_jpeg(small.data).shape == (240, 320, 3)
    full = cache.get(frame, Variant(quality=90))
    assert decode_jpeg(full.data).shape == (480, 640, 3)
    assert len(full.data) > len(small.data)


def test_one_encode_per_frame_and_variant_however_many_ask() -> None:
    cache = EncodeCache()
    frame = make_frame(7, noise(1280, 720))
    results: list[bytes] = []
    run_together([lambda: results.append(cache.get(frame, Variant(quality=80)).data)] * 20)
    assert len(results) == 20 and len(set(results)) == 1
    assert cache.encodes == 1
    cache.get(frame, Variant(quality=60))
    cache.get(make_frame(8, noise(1280, 720)), Variant(quality=80))
    assert cache.encodes == 3
    assert cache.encodes_by_variant[Variant(quality=80)] == 2


def test_cache_is_bounded() -> None:
    cache = EncodeCache(max_entries=4)
    image = noise(64, 48)
    for seq in range(1, 20):
        cache.get(make_frame(seq, image.copy()), Variant())
    assert cache.jpegs.held[0] == 4
    assert cache.encodes == 19


@pytest.mark.parametrize("limit", [65535, 30000, 8000])
def test_max_bytes_respected_on_a_detailed_1080p_source(limit: int) -> None:
    cache = EncodeCache()
    variant = Variant(quality=90, max_bytes=limit)
    for seq in range(1, 6):
        encoded = cache.get(make_frame(seq, noise(1920, 1080, seed=seq)), variant)
        assert len(encoded.data) <= limit
        image = decode_jpeg(encoded.data)
        assert image.shape[:2] == (encoded.height, encoded.width)
        assert abs(encoded.width / encoded.height - 16 / 9) < 0.02  # aspect kept


def test_max_bytes_returns_to_full_quality_when_the_picture_gets_simple() -> None:
    cache = EncodeCache()
    variant = Variant(quality=80, max_bytes=65535)
    assert len(cache.get(make_frame(1, noise(1280, 720)), variant).data) <= 65535
    flat = np.full((720, 1280, 3), 90, np.uint8)
    last = None
    for seq in range(2, 40):
        last = cache.get(make_frame(seq, flat.copy()), variant)
    assert last is not None and (last.width, last.height, last.quality) == (1280, 720, 80)


def test_grayscale_and_bgra_frames_encode() -> None:
    gray = np.full((48, 64), 128, np.uint8)
    bgra = np.zeros((48, 64, 4), np.uint8)
    for image in (gray, bgra):
        assert decode_jpeg(encode_jpeg(image, 80)).shape[:2] == (48, 64)


def test_cache_is_bounded_in_bytes_too() -> None:
    cache = EncodeCache(max_entries=64, max_total_bytes=200_000)
    sizes = []
    for seq in range(1, 30):
        encoded = cache.get(make_frame(seq, noise(320, 240, seed=seq)), Variant(quality=95))
        sizes.append(len(encoded.data))
    entries, held = cache.jpegs.held
    assert 1 <= entries < 29
    assert held == sum(sizes[-entries:]) <= 200_000  # the newest ones, every byte accounted for


@pytest.mark.parametrize(
    ("variant", "untouched"),
    [
        (Variant(), True),
        (Variant(width=640), True),  # a box the frame fits in
        (Variant(width=4000, height=4000), True),
        (Variant(max_bytes=10**6), True),
        (Variant(width=320), False),
        (Variant(quality=80), False),  # a quality of its own, even the default one
        (Variant(max_bytes=5000), False),  # the frame breaks the limit
    ],
)
def test_jpeg_frames_pass_through_only_as_the_source(variant: Variant, untouched: bool) -> None:
    data = encode_jpeg(noise(640, 480), 90)
    decodes: list[int] = []
    frame = Frame(1, jpeg=data, width=640, height=480, on_decode=lambda: decodes.append(1))
    cache = EncodeCache()
    encoded = cache.get(frame, variant)
    assert (encoded.data == data) is untouched
    assert encoded.passed_through is untouched and (encoded.quality is None) is untouched
    assert len(decodes) == (0 if untouched else 1)  # decoded at most once
    assert (cache.encodes == 0) is untouched
    if variant.max_bytes is not None:
        assert len(encoded.data) <= variant.max_bytes


def test_quality_none_encodes_pixel_frames_at_the_default_and_shares_the_encode() -> None:
    cache = EncodeCache(default_quality=55)
    frame = make_frame(1, noise(320, 240))
    first = cache.get(frame, Variant())
    assert first.quality == 55 and not first.passed_through
    assert cache.get(frame, Variant(quality=55)) is first
    assert cache.encodes == 1


def test_the_facade_keeps_its_names_and_exposes_its_parts() -> None:
    from camstream.delivery import encoder

    for name in ("Variant", "EncodedFrame", "EncodeCache", "EncodeBudgetExceeded",
                 "encode_jpeg", "fit_size"):
        assert name in encoder.__all__ and hasattr(encoder, name)
    cache = EncodeCache(default_quality=70, max_variants=3, max_encodes_per_s=7.5)
    assert (cache.default_quality, cache.max_variants, cache.max_encodes_per_s) == (70, 3, 7.5)
    assert cache.encodes_inline() == cache.admission.encodes_inline() == cache.admission.defaults
