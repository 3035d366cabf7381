"""What a newcomer meets first: the default frame size limit, metadata first, the close logged as
the client saw it, ``url`` before ``start()``, SIGTERM, and docstrings that state the defaults."""

from __future__ import annotations

import inspect
import json
import logging
import re
import signal
import subprocess
import sys
import textwrap
import threading
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
from conftest import TIMEOUT, stop_process, wait_until
from helpers import read_line
from test_browser import browser, page, wait_for  # noqa: F401 - fixtures used below
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect
from wsraw import OP_CLOSE, OP_TEXT, RawClient

from camstream import ConfigError, Streamer
from camstream.client import Client

GODOT_LIMIT = 65535


def noisy_frame(seed: int = 1) -> np.ndarray:
    """A 1280x720 picture with sensor-like noise: about 120 KB as a JPEG at quality 80."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:720, 0:1280]
    base = np.dstack([x * 255 // 1280, y * 255 // 720, (x + y) * 255 // 2000]).astype(np.int16)
    return np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)


def first_messages(url: str, count: int) -> list[Any]:
    """The first ``count`` messages of a connection (text parsed as JSON, binary as bytes)."""
    with connect(url, open_timeout=TIMEOUT, max_size=2**24) as ws:
        messages = [ws.recv(timeout=TIMEOUT) for _ in range(count)]
    return [m if isinstance(m, bytes) else json.loads(m) for m in messages]


def next_frame_size(url: str) -> tuple[dict[str, Any], int]:
    """The metadata and the size of the first frame a client at ``url`` gets."""
    with connect(url, open_timeout=TIMEOUT, max_size=2**24) as ws:
        metadata = json.loads(ws.recv(timeout=TIMEOUT))
        while True:
            message = ws.recv(timeout=TIMEOUT)
            if isinstance(message, bytes):
                return metadata, len(message)


@pytest.fixture
def noisy_push(streamer_factory) -> Iterator[Any]:
    """A push Streamer that keeps publishing the noisy picture (about 30 frames a second)."""
    created: list[tuple[Streamer, threading.Event, threading.Thread]] = []

    def make(**options: Any) -> Streamer:
        streamer = streamer_factory("push", **options)
        stop = threading.Event()
        frame = noisy_frame()

        def publish() -> None:
            while not stop.wait(1 / 30):
                streamer.publish(frame)

        thread = threading.Thread(target=publish, name="test-publisher")
        thread.start()
        created.append((streamer, stop, thread))
        return streamer

    yield make
    for _, stop, thread in created:
        stop.set()
        thread.join(TIMEOUT)
        assert not thread.is_alive(), "thread did not finish"


# Item 0: a client that says nothing gets frames Godot's default WebSocketPeer takes


def test_a_silent_client_gets_frames_within_godots_default_limit(noisy_push) -> None:
    streamer = noisy_push()
    metadata, size = next_frame_size(streamer.url)
    assert metadata["max_bytes"] == GODOT_LIMIT and size <= GODOT_LIMIT
    metadata, size = next_frame_size(streamer.url + "?max_bytes=0")  # "no limit"
    assert metadata["max_bytes"] is None and size > 100_000
    metadata, size = next_frame_size(streamer.url + "?max_bytes=32768")
    assert metadata["max_bytes"] == 32768 and size <= 32768


def test_the_server_wide_max_bytes_sets_the_default(noisy_push) -> None:
    unlimited = noisy_push(max_bytes=0)
    metadata, size = next_frame_size(unlimited.url)
    assert metadata["max_bytes"] is None and size > 100_000
    smaller = noisy_push(max_bytes=20000)
    metadata, size = next_frame_size(smaller.url)
    assert metadata["max_bytes"] == 20000 and size <= 20000
    # A config message with 0 lifts the limit too.
    with connect(smaller.url, open_timeout=TIMEOUT, max_size=2**24) as ws:
        assert json.loads(ws.recv(timeout=TIMEOUT))["type"] == "metadata"
        ws.send(json.dumps({"type": "config", "max_bytes": 0}))
        assert wait_until(lambda: smaller.stats()["clients"][0]["max_bytes"] is None)


def test_http_endpoints_have_no_default_limit(noisy_push) -> None:
    streamer = noisy_push()
    url = f"http://127.0.0.1:{streamer.port}/snapshot.jpg"
    with urllib.request.urlopen(url, timeout=TIMEOUT) as response:  # noqa: S310 - 127.0.0.1
        assert len(response.read()) > 100_000


@pytest.mark.parametrize("value", [-1, 1, 4095, 2**31])
def test_bad_server_max_bytes_is_a_config_error(value: int) -> None:
    with pytest.raises(ConfigError, match="max_bytes must be 0 .no limit. or 4096"):
        Streamer("test", max_bytes=value)


def test_a_bad_max_bytes_request_says_0_means_no_limit(streamer_factory) -> None:
    streamer = streamer_factory("test")
    metadata, error = first_messages(streamer.url + "?max_bytes=100", 2)
    assert metadata["max_bytes"] == GODOT_LIMIT  # the refused value leaves the default
    assert error["type"] == "error" and "(or 0 for no limit)" in error["message"], error


def test_the_bundled_python_client_asks_for_the_full_frames(streamer_factory) -> None:
    streamer = streamer_factory("test")
    with Client(streamer.url, timeout=TIMEOUT) as client:
        assert client.metadata["max_bytes"] is None
    with Client(streamer.url, max_bytes=None, timeout=TIMEOUT) as client:
        assert client.metadata["max_bytes"] == GODOT_LIMIT  # the server's default


def test_the_viewer_page_asks_for_the_full_frames(noisy_push, page: Any) -> None:  # noqa: F811
    streamer = noisy_push()
    page.goto(f"http://127.0.0.1:{streamer.port}/", timeout=TIMEOUT * 3000)
    wait_for(page, "() => camstreamStats.frames >= 3")
    (client,) = streamer.stats()["clients"]
    assert client["max_bytes"] is None and client["bytes_sent"] > 100_000 * client["frames_sent"]


def test_install_hints_work_from_a_checkout() -> None:
    """camstream is not on PyPI: no hint may say ``pip install camstream[client]``."""
    root = Path(__file__).resolve().parent.parent
    files = [root / "README.md", *root.glob("examples/*.py"), *root.glob("camstream/*.py")]
    offenders = [f.name for f in files if "camstream[client]" in f.read_text(encoding="utf-8")]
    assert not offenders
    assert "pip install '.[client]'" in (root / "README.md").read_text(encoding="utf-8")


# Item 2: metadata first, then the errors about the query


def test_metadata_is_the_first_message_even_when_the_query_is_bad(streamer_factory) -> None:
    streamer = streamer_factory("test", width=320, height=240)
    with RawClient(streamer.port, timeout=TIMEOUT) as raw:
        raw.handshake("/?fps=0&width=abc&quality=500")
        texts = []
        while len(texts) < 4:
            fin, opcode, payload = raw.recv_frame()
            assert fin and opcode == OP_TEXT, (opcode, payload[:40])  # no frame before these
            texts.append(json.loads(payload))
    assert texts[0]["type"] == "metadata", texts
    assert texts[0]["fps"] == 30 and texts[0]["width"] == 320 and texts[0]["quality"] == 80
    assert [t["type"] for t in texts[1:]] == ["error"] * 3, texts
    assert sorted(t["message"].split(":")[0] for t in texts[1:]) == ["fps", "quality", "width"]


# Item 5: the log says the close code the client received


def _left_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if " left (" in r.getMessage()]


def test_log_says_the_code_the_server_sent_at_shutdown(
    streamer_factory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="camstream")
    streamer = streamer_factory("test")
    with RawClient(streamer.port, timeout=TIMEOUT) as raw:
        raw.handshake()
        assert raw.recv_frame()[1] == OP_TEXT  # the metadata: the session is running
        stopper = threading.Thread(target=streamer.stop)
        stopper.start()
        code, _ = raw.recv_close()
        assert code == 1001
        raw.send_frame(OP_CLOSE, (1000).to_bytes(2, "big"))  # answers with another code
        stopper.join(TIMEOUT)
        assert not stopper.is_alive(), "stopper did not finish"
    (line,) = _left_lines(caplog)
    assert "server closed with code 1001" in line, line


def test_log_says_the_code_the_client_sent(
    streamer_factory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="camstream")
    streamer = streamer_factory("test")
    with connect(streamer.url, open_timeout=TIMEOUT) as ws:
        ws.recv(timeout=TIMEOUT)
        ws.close(4001, "done")
    assert wait_until(lambda: _left_lines(caplog)), caplog.text
    assert "client closed with code 4001" in _left_lines(caplog)[0]


# Nit: url before start() with port=0


def test_url_before_start_with_port_0_is_an_error_not_port_0() -> None:
    assert Streamer("test").url == "ws://127.0.0.1:8765/"
    with pytest.raises(RuntimeError, match="read url after"):
        Streamer("test", port=0).url  # noqa: B018 - the property is what is tested


def test_url_after_start_has_the_chosen_port(streamer_factory) -> None:
    streamer = streamer_factory("test", port=0)
    assert re.fullmatch(rf"ws://127\.0\.0\.1:{streamer.port}/", streamer.url)
    assert streamer.port != 0


# Item 12: SIGTERM to a program in serve_forever()

SIGTERM_PROGRAM = textwrap.dedent("""
    import signal
    from camstream import Streamer

    def mine(signum, frame):
        pass

    signal.signal(signal.SIGTERM, mine)
    streamer = Streamer("test", port=0, width=160, height=120)
    streamer.start()
    print(streamer.url, flush=True)
    streamer.serve_forever()
    print("returned, handler restored:", signal.getsignal(signal.SIGTERM) is mine, flush=True)
""")


def test_sigterm_stops_serve_forever_cleanly_and_restores_the_handler() -> None:
    process = subprocess.Popen(
        [sys.executable, "-c", SIGTERM_PROGRAM], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = read_line(process.stdout).strip()
        assert url.startswith("ws://127.0.0.1:"), process.stderr.read()  # type: ignore[union-attr]
        with connect(url, open_timeout=TIMEOUT) as ws:
            assert json.loads(ws.recv(timeout=TIMEOUT))["type"] == "metadata"
            process.send_signal(signal.SIGTERM)
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    ws.recv(timeout=TIMEOUT)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
        assert process.wait(TIMEOUT) == 0
        out = process.stdout.read()  # type: ignore[union-attr]
        assert "returned, handler restored: True" in out, out
        assert "Traceback" not in process.stderr.read()  # type: ignore[union-attr]
    finally:
        stop_process(process)


def test_serve_forever_outside_the_main_thread_leaves_signals_alone(streamer_factory) -> None:
    streamer = streamer_factory("test", width=160, height=120)
    before = signal.getsignal(signal.SIGTERM)
    thread = threading.Thread(target=streamer.serve_forever)
    thread.start()
    assert wait_until(lambda: streamer.client_count == 0 and streamer.is_serving)
    assert signal.getsignal(signal.SIGTERM) is before
    streamer.stop()
    thread.join(TIMEOUT)
    assert not thread.is_alive()


# Item 4: every "(default X)" in a docstring is the signature's default

_ARG = re.compile(r"^\s{8}(\w+(?:, \w+)*): (.*?)(?=^\s{8}\w+(?:, \w+)*: |\Z)", re.M | re.S)
_DEFAULT = re.compile(r"(?:\(default:? |[Tt]he default, |Default )(?:``)?([\w.'-]+)")


def _documented_defaults(obj: Any) -> list[tuple[str, str]]:
    doc = inspect.getdoc(obj) or ""
    args = doc.split("Args:", 1)[1].split("\n\n", 1)[0] if "Args:" in doc else ""
    found = []
    for names, text in _ARG.findall("\n" + textwrap.indent(args, "    ")):
        for match in _DEFAULT.finditer(text):
            found.extend((name, match.group(1).rstrip(".,:;)")) for name in names.split(", "))
    return found


@pytest.mark.parametrize("obj", [Streamer, Client])
def test_docstring_defaults_match_the_code(obj: Any) -> None:
    parameters = inspect.signature(obj).parameters
    documented = _documented_defaults(obj)
    assert documented, "no '(default X)' found: the check would check nothing"
    for name, text in documented:
        actual = parameters[name].default
        if text in ("the", "source's"):  # "default: the source's own"
            assert actual is None, name
            continue
        assert text == repr(actual).strip("'") or (
            isinstance(actual, (int, float)) and float(text) == actual
        ), f"{obj.__name__}({name}=...): docstring says default {text}, code has {actual!r}"


def test_streamer_docstring_does_not_promise_every_origin_by_default() -> None:
    doc = inspect.getdoc(Streamer) or ""
    assert "None`` admits every origin" not in doc
    assert re.search(r"default, None,\s+admits only same-origin", doc), doc
