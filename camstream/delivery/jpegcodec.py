"""Pixels to JPEG files: scaling and encoding through OpenCV. Pure functions, any thread."""

from __future__ import annotations

import cv2
import imutils
import numpy as np

from ..protocol import MAX_JPEG_SIDE

__all__ = ["encode_jpeg", "resize"]


def encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    """Encode a BGR, BGRA or grayscale image as a baseline JPEG file.

    Raises:
        ValueError: a side is over :data:`~camstream.protocol.MAX_JPEG_SIDE`, or OpenCV failed.
    """
    if max(image.shape[:2]) > MAX_JPEG_SIDE:
        raise ValueError(f"a JPEG cannot be over {MAX_JPEG_SIDE} pixels wide or high")
    if image.ndim == 3 and image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    ok, buffer = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError("OpenCV could not encode the frame as JPEG")
    return buffer.tobytes()


def resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """``image`` scaled to ``width`` x ``height`` (the same array if it has that size already).

    A size from :func:`~camstream.delivery.variant.fit_size` is scaled by ``imutils.resize``,
    whose rounding ``fit_size`` follows; any other size (the byte-limit search's) directly.
    """
    if image.shape[1] == width and image.shape[0] == height:
        return image
    scaled: np.ndarray
    if int(image.shape[0] * (width / image.shape[1])) == height:
        scaled = imutils.resize(image, width=width, inter=cv2.INTER_AREA)
    elif int(image.shape[1] * (height / image.shape[0])) == width:
        scaled = imutils.resize(image, height=height, inter=cv2.INTER_AREA)
    else:
        scaled = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    return scaled
