"""One meaning for 0 (issue 22 item 4): every numeric option of the ``camstream`` command means
the same as the ``Streamer`` argument it sets, 0 included: both accept it with the same meaning
(``no limit`` where ``None`` is no limit), or both refuse it with the same message."""

from __future__ import annotations

import argparse

import pytest
from conftest import TIMEOUT
from helpers import RawViewer

from camstream import ConfigError, Streamer
from camstream.cli import _with_option_names, build_parser, main


def numeric_options() -> list[argparse.Action]:
    return [
        action for action in build_parser()._actions
        if action.type in (int, float) and action.option_strings
    ]


def test_the_numeric_options_are_the_known_ones() -> None:
    """A new numeric option gets into the parametrization below by itself; this says which."""
    assert {a.dest for a in numeric_options()} == {
        "port", "fps", "width", "height", "quality", "max_bytes", "max_clients",
        "max_connections_per_address", "max_variants",
    }


@pytest.mark.parametrize("action", numeric_options(), ids=lambda a: a.option_strings[0])
@pytest.mark.parametrize("value", [0, -1])
def test_the_cli_and_the_api_agree_on_every_numeric_value(
    action: argparse.Action, value: int, capsys: pytest.CaptureFixture[str]
) -> None:
    flag = action.option_strings[0]
    status = main(["--check-config", "--source", "test", flag, str(value)])
    cli_error = capsys.readouterr().err.strip()
    try:
        Streamer("test", **{action.dest: action.type(value)})  # as argparse gives it
        api_error = None
    except ConfigError as exc:
        api_error = str(exc)
    if api_error is None:
        assert status == 0 and not cli_error, (flag, value, cli_error)
    else:
        assert status == 1, (flag, value, api_error)
        assert cli_error == f"camstream: error: {_with_option_names(api_error, build_parser())}"


@pytest.mark.parametrize(
    "option", ["max_clients", "max_connections_per_address", "max_bytes", "ping_interval"]
)
def test_zero_is_accepted_where_none_means_no_limit(option: str) -> None:
    with pytest.raises(ConfigError):  # what is refused: the check is there
        Streamer("push", port=0, **{option: -1})
    Streamer("push", port=0, **{option: 0})  # 0 is accepted: no ConfigError


def test_zero_limits_admit_more_than_the_defaults_would(streamer_factory) -> None:
    """33 WebSocket viewers from one address: over the default per-address limit of 32."""
    streamer = streamer_factory(
        "test", width=32, height=24, fps=5, max_clients=0, max_connections_per_address=0
    )
    viewers = []
    try:
        for _ in range(33):
            viewers.append(RawViewer(streamer.port, timeout=TIMEOUT))
        for viewer in viewers:
            opcode, _ = viewer.read_message()  # the metadata: admitted, not closed
            assert opcode == 0x1
    finally:
        for viewer in viewers:
            viewer.close()
