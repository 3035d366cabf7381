"""The viewer registry on its own: WebSocket sessions and MJPEG streams share one count."""

from __future__ import annotations

import threading

from conftest import TIMEOUT

from camstream.delivery.registry import Admission, ViewerRegistry


class Viewer:
    def __init__(self) -> None:
        self.wakes = 0

    def wake(self) -> None:
        self.wakes += 1


def test_sessions_and_streams_count_against_one_max_clients() -> None:
    registry: ViewerRegistry[Viewer, Viewer] = ViewerRegistry(max_clients=2)
    session, stream = Viewer(), Viewer()
    assert registry.add_session(1, session) is Admission.ADMITTED
    assert registry.add_stream(1, stream) is Admission.ADMITTED  # ids are per kind
    assert registry.add_session(2, Viewer()) is Admission.FULL
    assert registry.add_stream(2, Viewer()) is Admission.FULL
    assert registry.all() == [session, stream] and registry.session_count == 1
    assert registry.remove_stream(1) is stream and registry.remove_stream(1) is None
    assert registry.add_session(2, Viewer()) is Admission.ADMITTED


def test_without_max_clients_there_is_no_limit() -> None:
    registry: ViewerRegistry[Viewer, Viewer] = ViewerRegistry()
    for key in range(1000):
        assert registry.add_session(key, Viewer()) is Admission.ADMITTED
    assert registry.session_count == 1000


def test_once_closed_no_one_gets_in_and_the_streams_are_handed_back() -> None:
    registry: ViewerRegistry[Viewer, Viewer] = ViewerRegistry()
    session, stream = Viewer(), Viewer()
    registry.add_session(7, session)
    registry.add_stream(3, stream)
    assert registry.close() == [stream]
    assert registry.add_session(8, Viewer()) is Admission.CLOSED
    assert registry.add_stream(4, Viewer()) is Admission.CLOSED
    assert registry.take_sessions() == [session] and registry.sessions() == []
    assert registry.remove_session(7) is None


def test_racing_viewers_never_take_more_places_than_there_are() -> None:
    registry: ViewerRegistry[Viewer, Viewer] = ViewerRegistry(max_clients=5)
    start = threading.Barrier(8)
    results: list[Admission] = []

    def arrive(key: int) -> None:
        start.wait(timeout=TIMEOUT)
        add = registry.add_session if key % 2 else registry.add_stream
        results.append(add(key, Viewer()))

    threads = [threading.Thread(target=arrive, args=(k,)) for k in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)
        assert not thread.is_alive()
    assert results.count(Admission.ADMITTED) == 5 and results.count(Admission.FULL) == 3
    assert len(registry.all()) == 5
