"""One MJPEG viewer: a ``multipart/x-mixed-replace`` writer driven by the shared viewer loop.

An :class:`MjpegStream` is the output of a :class:`~camstream.delivery.viewer.ViewerLoop` (the
frame clock WebSocket viewers use too) that writes each frame as one multipart part, with
``Content-Type``, ``Content-Length`` and ``X-Timestamp`` (capture time, Unix seconds, as
mjpg-streamer sends it). It runs in the HTTP connection's own handler thread; it queues nothing
itself: a reader that stops reading is dropped after the stall timeout. The fan-out fast path
(:mod:`camstream.delivery.fanout`) may write a due frame's part from its own thread instead
(:meth:`MjpegStream.offer`; the part is built once per JPEG for every stream); the stream's
thread writes the rest of a part the kernel did not take whole.

With adaptation on (``?adapt=on``, the default) the stream's loop has a
:class:`~.linkcontrol.LinkController`: each part is on the rung of the viewer's quality ladder
its link carries (a smaller or lower-quality JPEG: an MJPEG reader takes each part's size as it
comes), and frames wait while the link drains rather than queue in the kernel.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .. import logs
from ..capture.camera import CameraThread
from ..ws import HttpExchange
from .encoder import EncodeCache, EncodedFrame, Variant
from .fanout import FanOutRound
from .linkcontrol import LinkController, adapt_fields
from .viewer import ViewerLoop, ViewerStats

if TYPE_CHECKING:
    from ..capture.frame import Frame

__all__ = ["BOUNDARY", "MjpegStream", "part", "part_of"]

logger = logs.get_logger(__name__)

BOUNDARY = "camstream-frame"
"""The MJPEG part boundary; parts carry ``Content-Length`` too."""


class MjpegStream:
    """One open ``/stream.mjpg`` response.

    Args:
        stream_id: its number in ``stats()["http"]["mjpeg_streams"]``.
        exchange: the response, already started with the multipart headers.
        address: the client's address (for stats and logs).
        variant, fps: what the viewer asked for (the variant cap may give another variant).
        stall_timeout: seconds it may be behind before it is dropped.
        adapt: adaptive delivery (the rung of the quality ladder its link carries); False:
            every frame in the variant given, frames skipped while the link is behind.
        proxied: the request came through a trusted reverse proxy (see :mod:`.adapt`).
    """

    def __init__(
        self,
        stream_id: int,
        exchange: HttpExchange,
        camera: CameraThread,
        cache: EncodeCache,
        *,
        address: str,
        variant: Variant,
        fps: float,
        stall_timeout: float,
        adapt: bool = False,
        proxied: bool = False,
    ) -> None:
        self.id = stream_id
        self.address = address
        self.fps = fps
        self._exchange = exchange
        self._adaptive = LinkController(
            exchange.link, default_quality=cache.default_quality,
            default_max_bytes=cache.default_max_bytes, proxied=proxied,
        ) if adapt else None
        self._loop = ViewerLoop(camera, cache, stall_timeout, self._adaptive)
        self._wanted = variant
        self._variant = self._loop.variant(variant)  # the one given; released by run()
        self._running = False  # the fan-out may write only once the headers went, in run()

    def __repr__(self) -> str:
        return f"<MjpegStream {self.id} from {self.address}>"

    @property
    def stats(self) -> ViewerStats:
        return self._loop.stats

    def wake(self) -> None:
        """A new frame is there (camera thread)."""
        self._loop.wake()

    def offer(self, frame: Frame, fanout: FanOutRound) -> bool:
        """The fan-out's fast path (see :mod:`camstream.delivery.fanout`): True if ``frame``'s
        part went out from the calling thread; False if the stream's thread should look (then
        wake)."""
        return self._loop.offer(frame, self, fanout)

    def held_until(self) -> float | None:
        """After :meth:`offer` returned False: when to offer again, if the viewer's controller
        held the frame back; None: :meth:`wake` (:meth:`ViewerLoop.held_until`)."""
        return self._loop.held_until()

    def stop(self) -> None:
        """End the stream within one wake (any thread)."""
        self._loop.stop()

    def release(self) -> None:
        """Give its variant back to the cache (idempotent; handler thread, after :meth:`run`)."""
        self._loop.release()

    def run(self) -> None:
        """Write frames until stopped or stalled (handler thread).

        Raises:
            ConnectionClosedError: the client went away or a write timed out.
        """
        self._running = True
        try:
            self._loop.run(self)  # (a part's rest left unwritten is cut with the connection)
        finally:
            self._running = False

    def info(self, now: float) -> dict[str, Any]:
        """This stream in ``stats()["http"]["mjpeg_streams"]``."""
        stats, variant = self._loop.stats, self._loop.sending or self._variant
        return {
            "id": self.id,
            "address": self.address,
            "fps": self.fps,
            "width": variant.width,
            "height": variant.height,
            "quality": variant.quality,
            "max_bytes": variant.max_bytes,
            **adapt_fields(self._adaptive),
            "frames_sent": stats.frames_sent,
            "frames_skipped": stats.frames_skipped,
            "bytes_sent": stats.bytes_sent,
            "connected_s": round(now - stats.connected_at, 3),
        }

    # The loop's output (ViewerOutput)

    paused = False

    @property
    def is_open(self) -> bool:
        """False once the reader left (its connection reset: a write would notice too, but a
        frame held back while the link drains is no write)."""
        return not self._exchange.peer_closed()

    def unsent_bytes(self) -> int | None:
        return self._exchange.unsent_bytes()

    def ready(self, may_block: bool) -> tuple[Variant, float] | None:
        if may_block:
            self._exchange.flush()  # the rest of a part the fan-out began
        elif not self._running:
            return None
        return self._wanted, self.fps

    def send(
        self, encoded: EncodedFrame, variant: Variant, skipped: int, round_: FanOutRound | None
    ) -> int | None:
        if round_ is None:
            self._exchange.write(part_of(encoded))
            return 0
        return self._exchange.try_write(round_.wire(part_of, encoded))

    def stalled(self) -> None:
        logger.info("MJPEG stream %d dropped: it stopped reading", self.id)


def part_of(encoded: EncodedFrame) -> bytes:
    """The multipart part of one encoded frame (the fan-out's wire bytes for MJPEG streams)."""
    return part(encoded.data, encoded.captured_at)


def part(jpeg: bytes, captured_at: float) -> bytes:
    """One multipart part: boundary line, part headers, the JPEG, CRLF.

    ``X-Timestamp`` is the capture time in Unix seconds, as mjpg-streamer sends it; readers
    that do not know it ignore it.
    """
    head = (
        f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n"
        f"X-Timestamp: {captured_at:.6f}\r\n\r\n"
    ).encode("ascii")
    return head + jpeg + b"\r\n"


