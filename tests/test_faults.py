"""Faults under real load: a camera that vanishes, a viewer that stops reading, connection churn,
shutdown while streaming, and a crash in application code.

Real servers (``streamer_factory``, or a ``python -m camstream`` subprocess), real clients
(``websockets`` or raw sockets). Nothing is mocked and nothing sleeps in place of waiting: every
wait is on a message, a socket read with a timeout, or a bounded poll of state that has no event.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import SLACK, TIMEOUT, camstream_threads, wait_until, write_video
from helpers import Counter, Publisher, RawViewer, next_binary, next_text, read_line, running
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from camstream import CloseCode, Streamer
from camstream.delivery.session import ClientSession

REPO = Path(__file__).resolve().parents[1]


# -- helpers -----------------------------------------------------------------------------------


def proc_status(field: str) -> int:
    """A numeric field of /proc/self/status (VmRSS in kB, Threads, ...)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# -- camera loss -------------------------------------------------------------------------------


def test_a_vanished_video_file_is_reported_lost_then_restored_and_frames_resume(
    streamer_factory, tmp_path: Path
) -> None:
    clip = write_video(tmp_path / "clip.avi", frames=10, fps=10.0)  # 1 s, looped
    away = tmp_path / "gone.avi"
    streamer = streamer_factory(str(clip))
    with connect(streamer.url, open_timeout=TIMEOUT) as a, \
            connect(streamer.url, open_timeout=TIMEOUT) as b:
        for ws in (a, b):
            assert next_text(ws)["type"] == "metadata"
            next_binary(ws)
        # The open capture reads on to the end of the file; the reopen that follows fails.
        os.rename(clip, away)
        for ws in (a, b):
            lost = next_text(ws, timeout=3 * TIMEOUT)
            assert lost["type"] == "camera_lost", lost
        assert streamer.camera.state.value == "lost"
        os.rename(away, clip)
        back = time.monotonic()
        for ws in (a, b):
            assert next_text(ws, "camera_restored", timeout=TIMEOUT)["type"] == "camera_restored"
            next_binary(ws, timeout=TIMEOUT)
            assert time.monotonic() - back < 2.0 * SLACK, "frames did not resume within 2 s"
        assert streamer.stats()["client_count"] == 2  # both stayed connected throughout


# -- a viewer that stops reading ---------------------------------------------------------------


def _stalled_viewer_scenario(streamer_factory: Any, **options: Any) -> float:
    """Two viewers read, one stops reading; returns how long until the stalled one was shed.

    Checks on the way that the readers kept their rate through the stall and that memory stayed
    flat.
    """
    rng = np.random.default_rng(7)
    # Noise does not compress: each 1280x720 JPEG is about 600 KB, so buffers fill in a few frames.
    images = [rng.integers(0, 256, (720, 1280, 3), dtype=np.uint8) for _ in range(4)]
    for image in images:
        image.flags.writeable = False
    fps = 15.0
    streamer = streamer_factory("push", fps=fps, **options)
    publisher = Publisher(streamer, images, fps)
    viewers = [Counter(streamer.url) for _ in range(2)]
    with running(publisher, *viewers):
        for viewer in viewers:
            assert viewer.ready.wait(TIMEOUT) and viewer.error is None, viewer.error
        # Steady state first, for the memory baseline: the encode cache keeps the last 64 JPEGs
        # (~40 MB of them here), so it must be full before memory can be called flat.
        assert wait_until(lambda: streamer.stats()["frames_encoded"] >= 70, timeout=3 * TIMEOUT)
        rss_before = proc_status("VmRSS")
        stalled = RawViewer(streamer.port, rcvbuf=16384)  # handshake, then never reads
        try:
            t0 = time.monotonic()
            assert wait_until(lambda: streamer.stats()["client_count"] == 3)
            shed = wait_until(lambda: streamer.stats()["client_count"] == 2, timeout=2 * TIMEOUT)
            shed_after = time.monotonic() - t0
            # Keep streaming a while after the shed (15 frames), then stop publishing: what the
            # readers get from then on was published in the window, so each must come to
            # nearly all of it. A reader held up behind the stalled one would lose the frames of
            # a whole send_timeout (15 or more); 80 %, not 90: every frame here is a byte-limit
            # search of 600 KB noise encodes, on 2 cores the suite's other process shares (CI
            # once saw 40 and 39 of 46).
            after_shed = t0 + shed_after
            assert wait_until(lambda: publisher.count_between(after_shed, math.inf) >= 15)
            publisher.stop.set()
            publisher.join(TIMEOUT)
            published = publisher.count_between(t0, math.inf)

            def got() -> list[int]:
                return [viewer.frames_between(t0, math.inf) for viewer in viewers]

            assert wait_until(lambda: min(got()) >= 0.8 * published - 1), (
                got(), published, shed_after)
        finally:
            stalled.close()
        rss_after = proc_status("VmRSS")
    assert rss_after - rss_before < 8 * 1024, (rss_before, rss_after)  # kB
    assert shed, f"the stalled viewer was still connected after {shed_after:.1f} s"
    return shed_after


def test_a_viewer_that_stops_reading_is_shed_and_the_others_keep_their_rate(
    streamer_factory,
) -> None:
    # Short keepalive too: whichever of the send timeout and the keepalive notices first.
    shed_after = _stalled_viewer_scenario(
        streamer_factory, send_timeout=1, ping_interval=1, ping_timeout=1
    )
    assert 1.0 <= shed_after < 1.0 + 2.0 * SLACK  # (it waits up to 2 * TIMEOUT for the shed)


def test_a_viewer_that_stops_reading_is_shed_after_the_send_timeout(streamer_factory) -> None:
    shed_after = _stalled_viewer_scenario(streamer_factory, send_timeout=1)
    assert 1.0 <= shed_after < 1.0 + 2.0 * SLACK


# -- connection churn --------------------------------------------------------------------------


def _cycle(port: int, kind: int) -> None:
    """One connect/disconnect of the given kind (0-3)."""
    viewer = RawViewer(port)
    try:
        if kind == 3:  # gone right after the handshake, without reading anything
            viewer.close()
            return
        opcode, _ = viewer.read_message()
        assert opcode == 0x1  # metadata
        if kind == 0:  # clean: Close, then read until the server's Close (or its EOF)
            viewer.send_close(1000)
            for _ in range(1000):
                opcode, _ = viewer.read_message()
                if opcode == 0x8:
                    break
            viewer.close()
        elif kind == 1:  # abrupt: RST
            viewer.reset()
        else:  # mid-frame: part of a binary message read, then RST
            for _ in range(1000):
                opcode, n = viewer.read_header()
                if opcode == 0x2:
                    viewer.read_exact(n // 2)
                    break
                viewer.read_exact(n)
            viewer.reset()
    except EOFError:
        viewer.close()  # the server may close first (a Close crossing ours); that is fine
    except BaseException:
        viewer.close()
        raise


def test_a_thousand_connects_and_disconnects_leak_no_thread_fd_or_memory(streamer_factory) -> None:
    streamer = streamer_factory("test", width=160, height=120, fps=30)
    port = streamer.port
    for i in range(40):  # warm up allocators and thread stacks before the baseline
        _cycle(port, i % 4)
    settled = lambda: streamer.stats()["client_count"] == 0  # noqa: E731
    assert wait_until(settled, timeout=2 * TIMEOUT)
    base_threads, base_fds, base_rss = proc_status("Threads"), open_fds(), proc_status("VmRSS")

    errors: list[BaseException] = []
    cycles, workers = 1000, 4

    def work(offset: int) -> None:
        try:
            for i in range(offset, cycles, workers):
                _cycle(port, i % 4)
        except BaseException as exc:  # reported below
            errors.append(exc)

    budget = 60 * SLACK  # ~10 s on an idle 2-core machine
    started = time.monotonic()
    threads = [threading.Thread(target=work, args=(k,), name=f"test-churn-{k}")
               for k in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:  # waits longer than the budget, so the bound below can fail
        thread.join(max(started + 2 * budget - time.monotonic(), 0.01))
    assert not any(t.is_alive() for t in threads), "churn did not finish"
    assert not errors, errors[:3]
    elapsed = time.monotonic() - started

    def back_to_baseline() -> bool:
        return (settled() and proc_status("Threads") <= base_threads
                and open_fds() <= base_fds)

    assert wait_until(back_to_baseline, timeout=2 * TIMEOUT), (
        f"threads {proc_status('Threads')} (was {base_threads}), fds {open_fds()} "
        f"(was {base_fds}), clients {streamer.stats()['client_count']}"
    )
    growth = proc_status("VmRSS") - base_rss
    assert growth < 10 * 1024, f"RSS grew by {growth} kB over {cycles} cycles"
    assert elapsed < budget, elapsed
    # The server still streams.
    with connect(streamer.url, open_timeout=TIMEOUT) as ws:
        next_text(ws, "metadata")
        next_binary(ws)


# -- shutdown under load -----------------------------------------------------------------------


def test_stop_with_twenty_viewers_streaming_closes_each_with_1001_within_a_second(
    streamer_factory,
) -> None:
    streamer = streamer_factory("test", fps=30)
    viewers = [Counter(streamer.url) for _ in range(20)]
    with running(*viewers):
        for viewer in viewers:
            assert viewer.ready.wait(TIMEOUT) and viewer.error is None, viewer.error
        assert wait_until(lambda: all(len(v.arrivals) >= 3 for v in viewers))
        threads_before = {t for t in camstream_threads()}
        assert len(threads_before) >= 20 + 2  # senders, readers, camera, server, watchdog
        started = time.monotonic()
        streamer.stop()
        assert wait_until(lambda: all(v.closed_at is not None for v in viewers), timeout=TIMEOUT)
    assert [v.close_code for v in viewers] == [CloseCode.GOING_AWAY] * 20
    assert max(v.closed_at for v in viewers) - started < 1.0 * SLACK  # type: ignore[type-var]
    assert wait_until(lambda: not (set(camstream_threads()) & threads_before)), \
        [t.name for t in set(camstream_threads()) & threads_before]
    assert streamer.camera.state.value == "stopped"


def test_sigint_stops_the_command_cleanly_and_viewers_get_1001(tmp_path: Path) -> None:
    log = open(tmp_path / "stderr.txt", "w+")
    proc = subprocess.Popen(
        [sys.executable, "-m", "camstream", "--source", "test", "--port", "0"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=log, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 4 * TIMEOUT)
        assert ready, "no startup line"
        line = read_line(proc.stdout)
        match = re.search(r"ws://\S+/", line)
        assert match, line
        with connect(match.group(0), open_timeout=TIMEOUT) as ws:
            assert next_text(ws)["type"] == "metadata"
            next_binary(ws)
            proc.send_signal(signal.SIGINT)
            with pytest.raises(ConnectionClosed) as info:
                for _ in range(10_000):
                    ws.recv(timeout=TIMEOUT)
            assert info.value.rcvd is not None and info.value.rcvd.code == CloseCode.GOING_AWAY
        assert proc.wait(2 * TIMEOUT) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()  # type: ignore[union-attr]
        log.seek(0)
        stderr = log.read()
        log.close()
    assert "Traceback" not in stderr, stderr


# -- a crash in application code ---------------------------------------------------------------


def test_an_exception_in_an_application_callback_closes_that_client_with_1011_only(
    caplog, monkeypatch,
) -> None:
    # (The encoder-error path of the sender thread is covered in test_control.py; this is the
    # transport's callback path, from a real client's message: a bug in the text handler.)
    handle_text = ClientSession.handle_text

    def crashing(self: ClientSession, text: str) -> None:
        if json.loads(text).get("type") == "app_command":
            raise RuntimeError("bug in the application's handler")
        handle_text(self, text)

    monkeypatch.setattr(ClientSession, "handle_text", crashing)
    streamer = Streamer("test", port=0, fps=30)
    streamer.start()
    try:
        with connect(streamer.url, open_timeout=TIMEOUT) as victim, \
                connect(streamer.url, open_timeout=TIMEOUT) as bystander:
            for ws in (victim, bystander):
                next_text(ws, "metadata")
                next_binary(ws)
            with caplog.at_level(logging.ERROR, logger="camstream"):
                victim.send(json.dumps({"type": "app_command"}))
                with pytest.raises(ConnectionClosed) as info:
                    for _ in range(10_000):
                        victim.recv(timeout=TIMEOUT)
            assert info.value.rcvd is not None
            assert info.value.rcvd.code == CloseCode.INTERNAL_ERROR
            failures = [r for r in caplog.records if "raised" in r.getMessage()]
            assert failures and failures[0].exc_info is not None  # logged with the traceback
            for _ in range(5):  # the other viewer never noticed
                next_binary(bystander)
        with connect(streamer.url, open_timeout=TIMEOUT) as newcomer:
            next_text(newcomer, "metadata")
            next_binary(newcomer)
    finally:
        streamer.stop()
