"""The public surface: the names of ``camstream`` and of ``Streamer`` are the documented ones,
and every Streamer option is checked when the Streamer is made, named as the user wrote it."""

from __future__ import annotations

import inspect
import logging
import math

import pytest
from conftest import TIMEOUT
from helpers import next_text
from websockets.sync.client import connect

import camstream
from camstream import ConfigError, Streamer

PACKAGE_NAMES = {
    "AppClient", "DataError", "DataTooLargeError",  # issue 20
    "CameraState", "CameraThread", "CamstreamError", "CloseCode", "ConfigError",
    "ConnectionClosedError", "Frame", "PROTOCOL_VERSION", "ServerError", "SourceError",
    "Streamer", "__version__",
}
STREAMER_NAMES = {
    "start", "stop", "serve_forever", "publish", "publish_jpeg", "stats",
    "url", "urls", "port", "client_count", "is_serving", "camera",
    "broadcast",  # issue 20
}


def test_the_package_exports_the_documented_names() -> None:
    assert set(camstream.__all__) == PACKAGE_NAMES
    public = {n for n in vars(camstream) if not n.startswith("_") and not inspect.ismodule(
        getattr(camstream, n))} - {"annotations", "logging"}
    assert public | {"__version__"} == PACKAGE_NAMES


def test_streamer_has_the_documented_public_surface_only() -> None:
    streamer = Streamer("push", port=0)
    assert {n for n in dir(streamer) if not n.startswith("_")} == STREAMER_NAMES
    for name in STREAMER_NAMES:
        assert getattr(Streamer, name).__doc__, f"Streamer.{name} has no docstring"
    with pytest.raises(AttributeError):
        streamer.camera = None  # type: ignore[misc]  # read-only


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("send_timeout", -1), ("send_timeout", 0), ("send_timeout", math.nan),
        ("send_timeout", "5"), ("ping_interval", -1), ("ping_interval", math.inf),
        ("ping_timeout", -2.5), ("handshake_timeout", 0), ("first_line_timeout", -1),
        ("max_message_size", 0), ("max_message_size", 1.5),
        ("max_connections_per_address", -1), ("max_connections_per_address", True),
        ("quality", 0), ("quality", 101), ("quality", 80.5), ("fps", 0), ("fps", math.nan),
        ("fps", 241), ("max_clients", -1), ("port", -1), ("port", 65536), ("port", "8765"),
        ("token", ""), ("token", 1234), ("max_bytes", 100), ("max_bytes", -1),
        ("max_variants", -1), ("max_variants", 65), ("max_encodes_per_s", 0),
        ("max_encodes_per_s", math.inf), ("host", None),
        ("max_data_bytes", 0), ("max_data_bytes", 61441), ("max_data_bytes", "16k"),
        ("on_message", "handler"),
    ],
)
def test_every_option_is_checked_in_the_constructor_and_named(option: str, value: object) -> None:
    with pytest.raises(ConfigError, match=rf"^{option} must"):
        Streamer("push", **{option: value})


def test_in_range_options_construct_without_opening_anything() -> None:
    streamer = Streamer(
        "push", port=0, send_timeout=0.5, ping_interval=None, ping_timeout=1,
        handshake_timeout=1, first_line_timeout=1, max_message_size=1024,
        max_connections_per_address=None, max_bytes=None, max_clients=1, token="t",
    )
    assert not streamer.is_serving and streamer.client_count == 0


def test_a_named_streamer_labels_its_log_lines(streamer_factory, caplog) -> None:
    """Issue 22 item 9: a name of one's own (a camera's, say) instead of the port."""
    caplog.set_level(logging.INFO, logger="camstream")
    streamer = streamer_factory("test", width=32, height=24, name="front door")
    with connect(streamer.url, open_timeout=TIMEOUT) as ws:
        next_text(ws, "metadata")
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("camstream")]
    assert any(line.startswith("[front door] client ") for line in lines), lines


@pytest.mark.parametrize("name", ["", "a\nb", "x" * 65, 3])
def test_a_bad_name_is_a_config_error(name: object) -> None:
    with pytest.raises(ConfigError, match=r"^name must be 1-64 printable characters"):
        Streamer("push", name=name)  # type: ignore[arg-type]
