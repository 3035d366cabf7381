"""JPEG files without decoding them: size from the frame header, and whole-file checks.

Sources that deliver JPEG (a camera in MJPEG mode, an MJPEG file or stream, ``publish_jpeg``)
hand camstream bytes that may be broken: a USB transfer cut short, a frame whose header says
another size than the stream. :func:`inspect_jpeg` reads the markers up to the scan and says
what the file is, or raises :class:`CorruptJpeg`; nothing here decodes pixels.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = ["CorruptJpeg", "JpegInfo", "inspect_jpeg"]

_SOI, _EOI, _SOS, _DHT = 0xD8, 0xD9, 0xDA, 0xC4
# Start-of-frame markers: C0-CF except DHT (C4), JPG (C8) and DAC (CC).
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM and RSTn carry no length


class CorruptJpeg(ValueError):
    """The bytes are not one whole JPEG file (the message says what is wrong)."""


@dataclass(frozen=True)
class JpegInfo:
    """What the headers of a JPEG file say."""

    width: int
    height: int
    components: int  # 1: grayscale, 3: colour
    has_huffman_tables: bool  # False for the many UVC cameras that omit DHT (MJPEG convention)
    progressive: bool


def inspect_jpeg(data: bytes | bytearray | memoryview) -> JpegInfo:
    """Check that ``data`` is one whole JPEG file and read its frame header.

    Whole means: starts with SOI, has a frame header (SOF) and a scan (SOS) before the end,
    and ends with EOI (trailing zero padding, which some cameras add, is allowed).

    Raises:
        CorruptJpeg: anything else, with the reason.
    """
    view = memoryview(data).cast("B") if not isinstance(data, bytes) else data
    n = len(view)
    if n < 4 or view[0] != 0xFF or view[1] != _SOI:
        raise CorruptJpeg("does not start with a JPEG SOI marker")
    end = n
    while end > 2 and view[end - 1] == 0:
        end -= 1
    if view[end - 2] != 0xFF or view[end - 1] != _EOI:
        raise CorruptJpeg("does not end with an EOI marker (truncated frame)")
    pos = 2
    size: tuple[int, int, int] | None = None
    progressive = False
    has_dht = False
    while pos + 4 <= end:
        if view[pos] != 0xFF:
            raise CorruptJpeg(f"expected a marker at byte {pos}")
        marker = view[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker in _STANDALONE:
            pos += 2
            continue
        (length,) = struct.unpack_from("!H", view, pos + 2)
        if length < 2 or pos + 2 + length > end:
            raise CorruptJpeg(f"marker {marker:#04x} at byte {pos} runs past the end")
        if marker in _SOF_MARKERS:
            if length < 8:
                raise CorruptJpeg("frame header too short")
            height, width = struct.unpack_from("!HH", view, pos + 5)
            components = view[pos + 9]
            if width == 0 or height == 0 or components not in (1, 3, 4):
                raise CorruptJpeg(f"frame header says {width}x{height}, {components} components")
            size = (width, height, components)
            progressive = marker in (0xC2, 0xC6, 0xCA, 0xCE)
        elif marker == _DHT:
            has_dht = True
        elif marker == _SOS:
            if size is None:
                raise CorruptJpeg("scan before any frame header")
            return JpegInfo(size[0], size[1], size[2], has_dht, progressive)
        elif marker == _EOI:
            break
        pos += 2 + length
    raise CorruptJpeg("no image scan (SOS) in the file")
