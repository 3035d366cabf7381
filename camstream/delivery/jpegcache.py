"""The shared JPEGs: each (frame, variant)'s file made once, by whichever thread asks first.

Single flight: the first caller for a key makes the JPEG, callers that come while it works wait
for its result, later ones get it at once. Bounded: the newest ``max_entries`` files and no more
than ``max_total_bytes`` of them are kept (clients only ever ask for recent frames, so a dropped
entry is at worst made again). It knows nothing of variants' rules or budgets: the caller's
``make`` does the work.
"""

from __future__ import annotations

import collections
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

from .variant import EncodedFrame, Variant

__all__ = ["JpegCache", "MakeFailed"]

Key = tuple[int, Variant]
"""A frame's ``seq`` and the variant (with its quality filled in)."""

_MAX_COUNTED_VARIANTS = 256  # encodes_by_variant starts over past this many distinct variants


class MakeFailed(ValueError):
    """Making the JPEG failed in the thread that made it; this caller waited for it.

    ``cause`` is that thread's exception (a :class:`ValueError` for a frame that cannot be
    decoded or encoded, or whatever else stopped it).
    """

    def __init__(self, seq: int, cause: BaseException) -> None:
        super().__init__(f"could not encode frame {seq}: {cause}")
        self.cause = cause


@dataclass
class _Slot:
    done: threading.Event = field(default_factory=threading.Event)
    result: EncodedFrame | None = None
    error: BaseException | None = None


class JpegCache:
    """Each (frame, variant)'s JPEG, made once and shared. Thread-safe (one lock, never held
    while a JPEG is made).

    Args:
        max_entries: JPEG files kept, newest first.
        max_total_bytes: their total size (one file may exceed it: the newest is always kept).
    """

    def __init__(self, max_entries: int = 64, max_total_bytes: int = 32 * 1024 * 1024) -> None:
        self._lock = threading.Lock()
        self._slots: collections.OrderedDict[Key, _Slot] = collections.OrderedDict()
        self._max_entries = max_entries
        self._max_total_bytes = max_total_bytes
        self._total_bytes = 0  # of the results held in _slots
        self.encodes = 0
        """JPEG files made: one per frame and variant."""
        self.encodes_by_variant: collections.Counter[Variant] = collections.Counter()
        """Files made per variant (bounded: starts over past 256 variants)."""

    @property
    def held(self) -> tuple[int, int]:
        """``(entries, bytes of JPEG)`` kept now."""
        with self._lock:
            return len(self._slots), self._total_bytes

    def get(self, key: Key, make: Callable[..., EncodedFrame], *args: Any) -> EncodedFrame:
        """The JPEG for ``key``: kept, or made by ``make(*args)`` in this thread if no other
        thread is making it (else waits for that one). A failed ``make`` is not kept: the next
        caller tries again.

        Raises:
            Whatever ``make`` raised, in the thread that called it.
            MakeFailed: ``make`` failed in another thread while this one waited.
        """
        with self._lock:
            slot = self._slots.get(key)
            owner = slot is None
            if slot is None:
                slot = self._slots[key] = _Slot()
        if not owner:
            if not slot.done.is_set():  # (is_set is cheaper than wait on a done slot)
                slot.done.wait()
            if slot.error is not None:
                raise MakeFailed(key[0], slot.error)
            assert slot.result is not None
            return slot.result
        try:
            result = make(*args)
        except BaseException as exc:
            slot.error = exc
            with self._lock:
                if self._slots.get(key) is slot:
                    del self._slots[key]  # let the next caller try again
            raise
        else:
            self._keep(key, slot, result)
        finally:
            slot.done.set()
        return result

    def made(self, key: Key) -> EncodedFrame | None:
        """The JPEG for ``key`` if it is made already, else None; never waits."""
        with self._lock:
            slot = self._slots.get(key)
            if slot is None or not slot.done.is_set():
                return None
        return slot.result

    def _keep(self, key: Key, slot: _Slot, result: EncodedFrame) -> None:
        """Store and count a file made; drop the oldest entries beyond the bounds. (The result
        is set under the lock, so a slot's bytes are counted exactly while it holds them.)"""
        with self._lock:
            slot.result = result
            self.encodes += 1
            if len(self.encodes_by_variant) > _MAX_COUNTED_VARIANTS:
                self.encodes_by_variant.clear()
            self.encodes_by_variant[key[1]] += 1
            slots = self._slots
            if slots.get(key) is slot:  # not already dropped while it was being made
                self._total_bytes += len(result.data)
            while len(slots) > 1 and (
                len(slots) > self._max_entries or self._total_bytes > self._max_total_bytes
            ):
                _, old = slots.popitem(last=False)
                if old.result is not None:
                    self._total_bytes -= len(old.result.data)
