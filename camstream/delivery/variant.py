"""What a viewer receives: a :class:`Variant` of the frames, as :class:`EncodedFrame` JPEGs.

Pure values and rules, no threads and no OpenCV: the size a variant gives a frame
(:func:`fit_size`) and whether it takes the source's own JPEG untouched (:func:`passes_through`).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..capture.frame import Frame

__all__ = ["Variant", "EncodedFrame", "fit_size", "passes_through", "passed_through"]


@dataclass(frozen=True)
class Variant:
    """What one client receives: the frame fitted in ``width`` x ``height``, at ``quality``.

    ``width`` / ``height`` of ``None`` leave that side free; the aspect ratio is always kept and
    frames are never enlarged. ``quality`` of ``None`` means "as the source": a JPEG frame is
    passed through untouched where nothing else forces an encode, and frames that must be
    encoded get the cache's default quality. With ``max_bytes``, every JPEG is kept at or under
    that many bytes by lowering the quality first, then the size (a source JPEG that fits is
    passed through).
    """

    width: int | None = None
    height: int | None = None
    quality: int | None = None
    max_bytes: int | None = None


@dataclass(frozen=True)
class EncodedFrame:
    """A JPEG file made from one :class:`~camstream.capture.frame.Frame` for one
    :class:`Variant`."""

    seq: int
    data: bytes
    width: int
    height: int
    quality: int | None  # None: the source's own JPEG, passed through untouched
    captured_at: float
    captured_monotonic: float
    data_json: str | None = None  # the frame's application data (Frame.data_json), sent with it

    @property
    def passed_through(self) -> bool:
        """Whether these are the source's own bytes (no decode, no encode)."""
        return self.quality is None


def fit_size(
    width: int, height: int, box_width: int | None, box_height: int | None
) -> tuple[int, int]:
    """The size of a ``width`` x ``height`` picture scaled down to fit the box, aspect kept.

    Rounds the way ``imutils.resize`` does (the sizes of every encode so far).
    """
    width_scale = box_width / width if box_width is not None else 1.0
    height_scale = box_height / height if box_height is not None else 1.0
    if min(width_scale, height_scale) >= 1.0:
        return width, height
    if width_scale <= height_scale:
        assert box_width is not None  # (a free side scales by 1.0)
        return int(box_width), max(int(height * width_scale), 1)
    assert box_height is not None
    return max(int(width * height_scale), 1), int(box_height)


def passes_through(frame: Frame, variant: Variant) -> bool:
    """Whether ``variant`` takes ``frame``'s source JPEG untouched (no decode, no encode): the
    frame has one, the variant has no quality of its own, a size box the frame fits in, and a
    byte limit the file fits under."""
    return (
        frame.jpeg is not None
        and variant.quality is None
        and fit_size(frame.width, frame.height, variant.width, variant.height)
        == (frame.width, frame.height)
        and (variant.max_bytes is None or len(frame.jpeg) <= variant.max_bytes)
    )


def passed_through(frame: Frame) -> EncodedFrame:
    """``frame``'s source JPEG as the :class:`EncodedFrame` of a variant it passes through."""
    assert frame.jpeg is not None
    return EncodedFrame(
        frame.seq, frame.jpeg, frame.width, frame.height, None,
        frame.captured_at, frame.captured_monotonic, frame.data_json,
    )
