"""Decoding a JPEG frame at the size its encodes need (libjpeg's 1/2, 1/4, 1/8 scales).

Unit tests, no sockets: :meth:`Frame.pixels` decodes at the smallest scale that covers the size
asked for, once, and gives the whole picture once it is there; :class:`DecodeSizes` keeps
asking for the largest size of the last moments, so a frame is not decoded twice while a larger
variant is in use; the encode cache's rungs come out of the smaller decode with the same picture.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from test_adaptive import webcam_jpegs

from camstream.capture.frame import Frame
from camstream.delivery.decodesize import WINDOW_S, DecodeSizes
from camstream.delivery.encoder import EncodeCache, Variant


def webcam_jpeg(gray: bool = False) -> bytes:
    """A 1280x720 webcam-like JPEG (test_adaptive's), or the same picture in grayscale."""
    jpeg = webcam_jpegs(1280, 720, 88, count=1)[0]
    if not gray:
        return jpeg
    picture = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_GRAYSCALE)
    return cv2.imencode(".jpg", picture, [cv2.IMWRITE_JPEG_QUALITY, 88])[1].tobytes()


class Counted:
    """Frames of one JPEG that count their decodes."""

    def __init__(self, jpeg: bytes, width: int = 1280, height: int = 720) -> None:
        self.jpeg, self.width, self.height, self.decodes = jpeg, width, height, 0

    def frame(self, seq: int = 1) -> Frame:
        return Frame(seq, None, 1.0, 1.0, jpeg=self.jpeg, width=self.width,
                     height=self.height, on_decode=self._count)

    def _count(self) -> None:
        self.decodes += 1


def test_a_frame_is_decoded_at_the_smallest_scale_that_covers_the_size() -> None:
    source = Counted(webcam_jpeg())
    frame = source.frame()
    assert [frame.decode_scale(*size) for size in ((480, 270), (320, 180), (321, 180),
                                                   (160, 90), (100, 50), (641, 360))] == [
        2, 4, 2, 8, 8, 1]
    half = frame.pixels(480, 270)
    assert half.shape == (360, 640, 3) and source.decodes == 1 and not frame.is_decoded
    assert frame.pixels(320, 180) is half and source.decodes == 1  # the larger one serves
    whole = frame.pixels(960, 540)
    assert whole.shape == (720, 1280, 3) and source.decodes == 2 and frame.is_decoded
    assert frame.pixels(320, 180) is whole and frame.image is whole and source.decodes == 2


def test_a_smaller_decode_is_replaced_by_a_larger_one_when_asked() -> None:
    source = Counted(webcam_jpeg())
    frame = source.frame()
    assert frame.pixels(160, 90).shape == (90, 160, 3)
    half = frame.pixels(600, 300)
    assert half.shape == (360, 640, 3) and source.decodes == 2
    assert frame.pixels(160, 90) is half and source.decodes == 2


def test_a_grayscale_jpeg_stays_grayscale_and_pixel_frames_are_never_decoded() -> None:
    frame = Counted(webcam_jpeg(gray=True)).frame()
    assert frame.pixels(320, 180).shape == (180, 320)
    image = np.zeros((720, 1280, 3), np.uint8)
    assert Frame(1, image, 1.0, 1.0).pixels(320, 180) is image


def test_a_header_claiming_too_many_pixels_is_not_decoded_small_instead() -> None:
    """OpenCV refuses a JPEG whose header claims more pixels than it decodes; a smaller scale
    must not get round that (the claim could be a lie costing hundreds of MB)."""
    ok, buffer = cv2.imencode(".jpg", np.zeros((16, 16, 3), np.uint8))
    data = bytearray(buffer.tobytes())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = (60000).to_bytes(2, "big") * 2
    frame = Frame(1, None, 1.0, 1.0, jpeg=bytes(data), width=60000, height=60000)
    with pytest.raises(ValueError, match="cannot be decoded"):
        frame.pixels(320, 320)


def test_the_smaller_decode_gives_the_same_picture_as_scaling_the_whole() -> None:
    """The rungs of a 1280x720 source at 480 and 320 wide: within a few grey levels of the
    same rung made from the whole decode."""
    jpeg = webcam_jpeg()
    whole = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    for width, height in ((480, 270), (320, 180)):
        source = Counted(jpeg)
        made = EncodeCache().get(source.frame(), Variant(width=width, quality=95))
        assert (made.width, made.height) == (width, height) and source.decodes == 1
        assert not source.frame().is_decoded
        picture = cv2.imdecode(np.frombuffer(made.data, np.uint8), cv2.IMREAD_COLOR)
        reference = cv2.resize(whole, (width, height), interpolation=cv2.INTER_AREA)
        difference = np.abs(picture.astype(np.int16) - reference.astype(np.int16))
        assert difference.mean() < 3.0, (width, difference.mean())


def test_decode_sizes_keep_the_largest_size_asked_for_lately() -> None:
    now = [100.0]
    sizes = DecodeSizes(clock=lambda: now[0])
    assert sizes.need(480, 270) == (480, 270)
    assert sizes.need(960, 540) == (960, 540)
    now[0] += WINDOW_S / 2
    assert sizes.need(320, 180) == (960, 540)  # a larger variant is in use: decode whole
    now[0] += WINDOW_S / 4
    assert sizes.need(320, 180) == (960, 540)  # the 960 was asked for 3/4 WINDOW_S ago
    now[0] += WINDOW_S / 2
    assert sizes.need(320, 180) == (320, 180)  # no longer: small again
    assert sizes.need(480, 270) == (480, 270)


def test_the_cache_decodes_each_frame_once_while_a_larger_rung_is_in_use() -> None:
    """A frame's first encode is a small rung, then a larger one: two decodes for that frame
    (small, then whole); the next frames, asked the same, are decoded whole once."""
    jpeg = webcam_jpeg()
    cache = EncodeCache()
    first = Counted(jpeg)
    cache.get(first.frame(1), Variant(width=320, quality=60))
    cache.get(first.frame(1), Variant(width=960, quality=60))
    assert first.decodes == 2
    for seq in (2, 3):
        source = Counted(jpeg)
        frame = source.frame(seq)
        cache.get(frame, Variant(width=320, quality=60))
        cache.get(frame, Variant(width=960, quality=60))
        assert source.decodes == 1 and frame.is_decoded


def test_a_byte_limit_search_counts_as_a_size_asked_for() -> None:
    """A viewer under a byte limit (Godot's default) and one on a small rung, frame after
    frame: each frame is decoded once, whole (the search starts at the whole size), never
    small first and then whole again."""
    jpeg = webcam_jpeg()
    cache = EncodeCache()
    for seq in (1, 2, 3):
        source = Counted(jpeg)
        frame = source.frame(seq)
        limited = cache.get(frame, Variant(max_bytes=65535))
        cache.get(frame, Variant(width=320, quality=60))
        assert len(limited.data) <= 65535 and frame.is_decoded
        assert source.decodes == 1, seq
    # The other order: the small rung first, from the second frame on decoded whole at once.
    cache = EncodeCache()
    for seq in (1, 2):
        source = Counted(jpeg)
        frame = source.frame(seq)
        cache.get(frame, Variant(width=320, quality=60))
        cache.get(frame, Variant(max_bytes=65535))
        assert source.decodes == (2 if seq == 1 else 1), seq


def exif_rotated(jpeg: bytes) -> bytes:
    """``jpeg`` with an EXIF block saying "rotate 90 degrees" (orientation 6) after SOI."""
    tiff = (b"II*\x00\x08\x00\x00\x00" + b"\x01\x00"  # little endian, IFD at 8, one entry
            + b"\x12\x01\x03\x00\x01\x00\x00\x00\x06\x00\x00\x00" + b"\x00\x00\x00\x00")
    body = b"Exif\x00\x00" + tiff
    app1 = b"\xff\xe1" + (len(body) + 2).to_bytes(2, "big") + body
    return jpeg[:2] + app1 + jpeg[2:]


def test_an_exif_orientation_is_left_alone_as_by_the_whole_decode() -> None:
    """A JPEG that says "rotated" (a phone's, pushed): decoded small it keeps the size its
    header gives, as the whole decode does, so its rungs are not squeezed."""
    jpeg = exif_rotated(webcam_jpeg())
    assert cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_REDUCED_COLOR_2).shape[:2] == (
        640, 360)  # OpenCV's own reading turns it
    frame = Counted(jpeg).frame()
    assert frame.pixels(480, 270).shape[:2] == (360, 640)
    assert frame.image.shape[:2] == (720, 1280)
