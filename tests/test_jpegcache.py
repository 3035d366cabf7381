"""JpegCache on its own: single flight, failures not kept, bounds, exact byte accounting.

``make`` callables stand in for encodes (pure logic: no OpenCV, no sockets).
"""

from __future__ import annotations

import threading

import pytest
from conftest import TIMEOUT
from together import watch_slot

from camstream.delivery.jpegcache import JpegCache, MakeFailed
from camstream.delivery.variant import EncodedFrame, Variant

V = Variant(quality=80)


def jpeg(seq: int, size: int = 10) -> EncodedFrame:
    return EncodedFrame(seq, bytes(size), 64, 48, 80, 0.0, 0.0)


def start_all(threads: list[threading.Thread]) -> None:
    for t in threads:
        t.start()


def join_all(threads: list[threading.Thread]) -> None:
    for t in threads:
        t.join(TIMEOUT)
        assert not t.is_alive(), f"{t.name} did not finish"


def test_the_first_caller_makes_it_and_those_who_come_meanwhile_wait_for_it() -> None:
    cache = JpegCache()
    started, release = threading.Event(), threading.Event()
    calls: list[int] = []
    results: list[EncodedFrame] = []

    def make() -> EncodedFrame:
        calls.append(1)
        started.set()
        assert release.wait(TIMEOUT)
        return jpeg(1)

    first = threading.Thread(target=lambda: results.append(cache.get((1, V), make)))
    first.start()
    assert started.wait(TIMEOUT)
    done = watch_slot(cache, (1, V))
    waiters = [
        threading.Thread(target=lambda: results.append(cache.get((1, V), make)))
        for _ in range(8)
    ]
    start_all(waiters)
    for _ in waiters:
        assert done.waiters.acquire(timeout=TIMEOUT)
    assert cache.made((1, V)) is None  # in progress: made() does not wait
    release.set()
    join_all([first, *waiters])
    assert len(calls) == 1 and len(results) == 9
    assert all(r is results[0] for r in results)
    assert cache.made((1, V)) is results[0]
    assert cache.encodes == 1 and cache.encodes_by_variant[V] == 1


def test_a_failed_make_is_not_kept_and_its_waiters_learn_why() -> None:
    cache = JpegCache()
    started, release = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def failing() -> EncodedFrame:
        started.set()
        assert release.wait(TIMEOUT)
        raise ValueError("corrupt JPEG")

    def ask(make) -> None:
        try:
            cache.get((1, V), make)
        except (ValueError, RuntimeError) as exc:
            errors.append(exc)

    owner = threading.Thread(target=ask, args=(failing,))
    owner.start()
    assert started.wait(TIMEOUT)
    done = watch_slot(cache, (1, V))
    waiter = threading.Thread(target=ask, args=(lambda: jpeg(1),))
    waiter.start()
    assert done.waiters.acquire(timeout=TIMEOUT)
    release.set()
    join_all([owner, waiter])
    owner_error, waiter_error = sorted(errors, key=lambda e: isinstance(e, MakeFailed))
    assert type(owner_error) is ValueError  # the maker gets its own exception
    assert isinstance(waiter_error, MakeFailed) and waiter_error.cause is owner_error
    assert "frame 1" in str(waiter_error)
    assert cache.held == (0, 0) and cache.encodes == 0
    assert cache.get((1, V), lambda: jpeg(1)).seq == 1  # the next caller tries again


def test_entries_beyond_max_entries_are_dropped_oldest_first() -> None:
    cache = JpegCache(max_entries=3)
    for seq in range(1, 6):
        cache.get((seq, V), lambda seq=seq: jpeg(seq))
    assert cache.held == (3, 30)
    assert cache.made((2, V)) is None and cache.made((3, V)) is not None


def test_bytes_beyond_the_bound_are_dropped_but_the_newest_is_always_kept() -> None:
    cache = JpegCache(max_total_bytes=250)
    for seq in range(1, 4):
        cache.get((seq, V), lambda seq=seq: jpeg(seq, 100))
    assert cache.held == (2, 200)
    cache.get((4, V), lambda: jpeg(4, 1000))  # alone over the bound: kept, everything else out
    assert cache.held == (1, 1000)


def test_an_entry_dropped_while_it_was_made_is_not_counted_in_the_bytes() -> None:
    cache = JpegCache(max_entries=1)
    started, release = threading.Event(), threading.Event()

    def slow() -> EncodedFrame:
        started.set()
        assert release.wait(TIMEOUT)
        return jpeg(1, 500)

    result: list[EncodedFrame] = []
    slow_thread = threading.Thread(target=lambda: result.append(cache.get((1, V), slow)))
    slow_thread.start()
    assert started.wait(TIMEOUT)
    cache.get((2, V), lambda: jpeg(2, 7))  # pushes the slow one out while it is being made
    release.set()
    join_all([slow_thread])
    assert result[0].seq == 1  # its caller still gets it
    assert cache.held == (1, 7)  # only what is held is counted
    assert cache.encodes == 2


def test_variants_count_apart() -> None:
    cache = JpegCache()
    other = Variant(width=320, quality=80)
    cache.get((1, V), lambda: jpeg(1))
    cache.get((1, other), lambda: jpeg(1))
    cache.get((2, V), lambda: jpeg(2))
    cache.get((2, V), lambda: pytest.fail("made twice"))
    assert cache.encodes_by_variant == {V: 2, other: 1}
