"""A library that greets a newcomer (issue 22 item 5): ``Streamer().serve_forever()`` in a
program that set up no logging shows the start line and camstream's warnings on stderr; with
logging set up, ``quiet=True``, or the ``start()`` / ``with`` forms, camstream shows nothing of
its own. Each case is a real subprocess (pytest itself sets up logging in this one).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import TIMEOUT, stop_process
from helpers import next_text, read_line
from websockets.sync.client import connect

ROOT = Path(__file__).resolve().parent.parent
HAS_CAMERA = os.path.exists("/dev/video0")
START_LINE = re.compile(
    r"^camstream \S+: streaming test pattern 160x120 at 30 fps on "
    r"(ws://127\.0\.0\.1:(\d+)/) \(Ctrl\+C to stop\)$"
)
NO_CAMERA = "no camera found at index 0: streaming the built-in test pattern"

# The program under test: READY on stdout once serving (from a thread, so the main thread is
# the one that serves), then the form under test; stdout shows what the program printed.
PROGRAM = """
import threading, time
from camstream import Streamer
{setup}
streamer = Streamer("auto", port=0, width=160, height=120)

def ready():
    while not streamer.is_serving:
        time.sleep(0.01)
    print("READY", streamer.port, flush=True)

threading.Thread(target=ready, daemon=True).start()
{serve}
"""
SERVE_FOREVER = "streamer.serve_forever()"


def run(setup: str = "", serve: str = SERVE_FOREVER) -> tuple[int, str, str]:
    """Start the program, wait for READY, stop it with SIGTERM; (port, stdout, stderr)."""
    process = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(PROGRAM.format(setup=setup, serve=serve))],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        ready = read_line(process.stdout).split()
        assert ready and ready[0] == "READY", ready
        port = int(ready[1])
        with connect(f"ws://127.0.0.1:{port}/", open_timeout=TIMEOUT) as ws:
            assert next_text(ws, "metadata")["width"] == 160  # it serves
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=TIMEOUT)
        assert process.returncode == 0, err
        return port, out, err
    finally:
        stop_process(process)


def camstream_lines(stderr: str) -> list[str]:
    """What was written but OpenCV's own lines (``[ WARN:0@0.01] global ...``), which it may
    print while looking for a camera."""
    return [line for line in stderr.splitlines() if line.strip() and not line.startswith("[")]


def test_serve_forever_without_logging_shows_the_url_and_the_warning() -> None:
    port, out, err = run()
    assert out == ""  # nothing on stdout (but the program's READY): stdout is the program's
    lines = camstream_lines(err)
    starts = [m for m in map(START_LINE.match, lines) if m]
    assert len(starts) == 1, err
    assert starts[0].group(1) == f"ws://127.0.0.1:{port}/"
    if not HAS_CAMERA:  # the newcomer learns why it shows a test pattern, once
        warnings = [line for line in lines if NO_CAMERA in line]
        assert len(warnings) == 1 and " WARNING camstream." in warnings[0], err
        assert lines.index(warnings[0]) < lines.index(starts[0].group(0)), err
    assert all(" INFO " not in line for line in lines), err  # warnings and the start line only


@pytest.mark.skipif(HAS_CAMERA, reason="the warning is about a missing camera")
def test_with_logging_set_up_the_application_decides() -> None:
    _, _, err = run(setup="import logging; logging.basicConfig(format='APP %(message)s')")
    lines = camstream_lines(err)
    assert [line for line in lines if NO_CAMERA in line] == [f"APP {NO_CAMERA}"], err
    assert not [line for line in lines if START_LINE.match(line)], err  # no line of our own


def test_quiet_keeps_serve_forever_silent() -> None:
    _, _, err = run(serve="streamer.serve_forever(quiet=True)")
    assert camstream_lines(err) == [], err


@pytest.mark.parametrize("form", ["with", "start"])
def test_the_embedded_forms_stay_silent(form: str) -> None:
    serve = {
        "with": "with streamer:\n    streamer._stopped.wait()",
        "start": "streamer.start()\ntry:\n    streamer._stopped.wait()\nfinally:\n"
                 "    streamer.stop()",
    }[form]
    setup = "import signal, sys\nsignal.signal(signal.SIGTERM, lambda *a: sys.exit(0))"
    _, _, err = run(setup=setup, serve=serve)
    assert camstream_lines(err) == [], err
