"""The fan-out fast path: one thread hands each new frame to the idle viewers.

Waking a viewer's own thread for every frame costs far more CPU than the frame's ``send`` (the
wake, the GIL hand-over, the context switch). So one :class:`FanOut` thread, woken once a
frame, walks the viewers, WebSocket sessions and MJPEG streams alike, and offers them the frame
(:meth:`~camstream.delivery.viewer.ViewerLoop.offer`, through each viewer's ``offer``): the
viewer's own delivery routine runs in the fan-out's thread, in its "never block, encode only
what the round allows" form. A viewer that is due by its own
:class:`~camstream.delivery.pacing.Pacer` and idle (nothing queued, no settings change, not
behind, its loop free and nothing of an earlier message left to write) gets its message in one
non-blocking write; nothing is woken.

A :class:`FanOutRound` is one frame's shared work: each JPEG's encode, and each output kind's
wire bytes of it (the WebSocket message, the MJPEG part), made once and shared by every viewer
of that JPEG; the outputs build them (this module knows no output and no protocol). In its
first pass the fan-out encodes only the default variants and the one most viewers use, so a
few viewers asking for their own size never delay everyone else's frame. Then, once every
other viewer has its frame, a second pass encodes the variants the first one left (the rungs
of adaptive delivery's quality ladders, other sizes: each once) and offers the frame again to
the viewers that wanted them, while the next frame is not due (0.9 of a camera period after
this one's capture; waking their threads instead costs far more CPU than the encodes, which
are made once either way); a viewer still left is woken, and its own thread encodes.

A viewer whose adaptive controller holds the frame back while its link drains
(:class:`~camstream.delivery.linkcontrol.LinkController`) is not woken either: the fan-out
offers it the newest frame again at the time the controller named, from its own timer (a new
frame supersedes the retries), so a viewer on a slow link costs no thread switch for a frame that
waits a few milliseconds. Its own thread still looks at it on its own timer (at least once a
second), which drops a viewer held for longer than the stall timeout.

Everything else goes to the viewer's own thread exactly as without the fast path: a viewer
that is behind, queued text messages, metadata, snapshots. A write the kernel takes only in
part leaves the rest with the connection's link (``camstream.ws.link``), and the viewer's
thread (woken) writes it before anything else, so messages keep their order.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from .. import logs
from ..capture.camera import CameraThread
from ..capture.frame import Frame
from ..errors import ConnectionClosedError
from .encoder import EncodeCache, EncodedFrame, Variant

__all__ = [
    "FanOut", "FanOutRound", "FastViewer", "Hold", "Retries", "WireBuilder", "fan_out",
    "offer_again",
]

logger = logs.get_logger(__name__)

_MIN_RETRY_S = 0.001  # a held viewer is offered a frame again no sooner than this

WireBuilder = Callable[[EncodedFrame], bytes]
"""An output kind's wire bytes of one JPEG (a module-level function: it is the round's key)."""


class FastViewer(Protocol):
    """A viewer the fan-out serves: a WebSocket session or an MJPEG stream."""

    def offer(self, frame: Frame, round_: FanOutRound) -> bool:
        """Send ``frame`` now if idle and due; False: the viewer's own thread should look."""

    def wake(self) -> None:
        """Wake the viewer's own thread (it takes the frame itself if it wants it)."""

    def held_until(self) -> float | None:
        """After :meth:`offer` returned False: the ``time.monotonic()`` at which to offer
        again, if the viewer's controller held the frame back (its thread need not be woken);
        None: wake its thread."""


class FanOutRound:
    """One frame's fan-out: each JPEG's encode, and each output kind's wire bytes of it, made
    once. Used by the fan-out's thread only."""

    def __init__(self) -> None:
        self.encode_any = False
        """The second pass: any variant asked for is encoded here (else only inline ones)."""
        self.left_unmade = False
        """Set when :meth:`encoded` returned None: a variant this pass may not encode."""
        self._inline: frozenset[Variant] | None = None  # the variants encoded here if need be
        self._encoded: dict[tuple[int, Variant], tuple[Frame, EncodedFrame]] = {}
        # builder -> id(jpeg) -> (jpeg, wire bytes); the JPEG is kept so its id is not reused
        self._wire: dict[WireBuilder, dict[int, tuple[bytes, bytes]]] = {}

    def encoded(self, cache: EncodeCache, frame: Frame, variant: Variant) -> EncodedFrame | None:
        """The JPEG of ``frame`` for ``variant``, asked of the cache once per round and variant.

        This thread encodes only the default variants and the most used one
        (:meth:`EncodeCache.encodes_inline`); for any other variant not made yet it returns
        None, and that viewer's own thread encodes it, in parallel with the fan-out, so a few
        viewers asking for their own size never delay everyone else's frame.
        """
        key = (id(frame), variant)
        entry = self._encoded.get(key)
        if entry is None or entry[0] is not frame:
            if self._inline is None:
                self._inline = cache.encodes_inline()
            if self.encode_any or variant in self._inline:
                result: EncodedFrame | None = cache.get(frame, variant)
            else:
                result = cache.made(frame, variant)
            if result is None:
                self.left_unmade = True
                return None  # (asked again for the next viewer: its thread may have made it)
            entry = self._encoded[key] = (frame, result)
        return entry[1]

    def wire(self, build: WireBuilder, encoded: EncodedFrame) -> bytes:
        """``build(encoded)``: an output kind's bytes of this JPEG, made once per round and
        shared by every viewer of that kind and JPEG."""
        data = encoded.data
        made = self._wire.get(build)
        if made is None:
            made = self._wire[build] = {}
        entry = made.get(id(data))
        if entry is None or entry[0] is not data:
            entry = made[id(data)] = (data, build(encoded))
        return entry[1]


class FanOut:
    """The fan-out thread: :meth:`notify` once a frame; :meth:`start`, :meth:`stop` (joins)."""

    def __init__(
        self, camera: CameraThread, viewers: Callable[[], Sequence[FastViewer]]
    ) -> None:
        self._camera = camera
        self._viewers = viewers
        self._event = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(
            target=logs.thread_target(self._run), name="camstream-fanout", daemon=True
        )

    def start(self) -> FanOut:
        self._thread.start()
        return self

    def stop(self, timeout: float = 2.0) -> None:
        """End the thread and join it. Idempotent; any thread."""
        self._stopping.set()
        self._event.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def notify(self) -> None:
        """A new frame is there (the camera's frame listener)."""
        self._event.set()

    def _run(self) -> None:
        last_seq = 0
        retries = Retries()

        def hold(viewer: FastViewer, at: float) -> None:
            # (never a retry due at once: a controller's time just past is not a busy loop)
            retries.add(viewer, max(at, time.monotonic() + _MIN_RETRY_S))

        while not self._stopping.is_set():
            # A frame or stop() sets the event (an idle camera costs no wake-up); a held
            # viewer's retry time ends the wait.
            self._event.wait(retries.wait_s(time.monotonic()))
            self._event.clear()
            frame = self._camera.latest()
            if frame is None:  # an on-demand camera gone idle: nothing to offer again
                retries.clear()
                continue
            if self._stopping.is_set():
                continue
            if frame.seq != last_seq:
                last_seq = frame.seq
                retries.clear()  # each viewer is offered this frame: a hold starts anew
                fan_out(
                    frame, self._viewers(), frame.captured_monotonic + 0.9 / self._camera.fps,
                    hold,
                )
            due = retries.due(time.monotonic())
            if due:
                offer_again(frame, due, hold)


class Retries:
    """The viewers held back by their controllers, and when to offer them a frame again (the
    fan-out's thread only)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, FastViewer]] = []
        self._order = itertools.count()  # ties: first held, first offered

    def add(self, viewer: FastViewer, at: float) -> None:
        """Offer ``viewer`` a frame again at ``at`` (``time.monotonic()``)."""
        heapq.heappush(self._heap, (at, next(self._order), viewer))

    def clear(self) -> None:
        self._heap.clear()

    def wait_s(self, now: float) -> float | None:
        """Seconds until the next retry (None: none pending)."""
        return max(self._heap[0][0] - now, 0.0) if self._heap else None

    def due(self, now: float) -> list[FastViewer]:
        """The viewers whose retry time has come (removed), in order."""
        due = []
        while self._heap and self._heap[0][0] <= now:
            due.append(heapq.heappop(self._heap)[2])
        return due


Hold = Callable[[FastViewer, float], None]
"""Takes a viewer held back by its controller, and when to offer it a frame again."""


def fan_out(
    frame: Frame, viewers: Sequence[FastViewer], until: float | None = None,
    hold: Hold | None = None,
) -> None:
    """Offer ``frame`` to every viewer; wake the thread of each one that did not take it.

    Viewers left for want of an encode this pass may not make are offered the frame again
    once every other viewer was served, with those encodes made here, if ``until``
    (``time.monotonic()``) has not passed; else, and if still not taken, woken too. A viewer
    its controller held back goes to ``hold`` (if given) instead of being woken.
    """
    round_ = FanOutRound()
    later = []
    for viewer in viewers:
        round_.left_unmade = False
        if _offer(viewer, frame, round_):
            continue
        if until is not None and round_.left_unmade:
            later.append(viewer)
        else:
            _not_taken(viewer, hold)
    if later and until is not None:
        round_.encode_any = True
        for viewer in later:
            if time.monotonic() > until:
                viewer.wake()
            elif not _offer(viewer, frame, round_):
                _not_taken(viewer, hold)


def offer_again(frame: Frame, viewers: Sequence[FastViewer], hold: Hold) -> None:
    """Offer ``frame`` (the newest) to viewers whose retry time came, encoding what they
    need here; wake those that do not take it and are not held back again."""
    round_ = FanOutRound()
    round_.encode_any = True
    for viewer in viewers:
        if not _offer(viewer, frame, round_):
            _not_taken(viewer, hold)


def _not_taken(viewer: FastViewer, hold: Hold | None) -> None:
    """A viewer did not take the frame: to ``hold`` if its controller held it back, else
    woken."""
    at = viewer.held_until() if hold is not None else None
    if hold is None or at is None:
        viewer.wake()
    else:
        hold(viewer, at)


def _offer(viewer: FastViewer, frame: Frame, round_: FanOutRound) -> bool:
    try:
        return viewer.offer(frame, round_)
    except ConnectionClosedError:
        return False  # the viewer's own thread sees the connection closed
    except Exception:
        logger.exception("fan-out to %r failed", viewer)
        return False
