"""Protocol parsing on its own: control messages and settings, from JSON and from URLs.

(test_control_fuzz.py throws generated JSON at the same functions; this file pins the answers.)
"""

from __future__ import annotations

import json

import pytest

from camstream.protocol import ProtocolInputError, parse_config, parse_control


@pytest.mark.parametrize(
    "text",
    [
        '{"type": "config", "fps": 5}', '{"type": "pause"}', '{"type": "resume"}',
        '{"type": "snapshot", "quality": 90}', '{"type": "ping", "t": 12.5}',
        '{"type": "ping", "t": "abc"}', '{"type": "ping"}', '{"type": "pause", "extra": [1]}',
    ],
)
def test_known_messages_are_returned_as_sent(text: str) -> None:
    assert parse_control(text) == json.loads(text)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("not json", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        ('"config"', "JSON object"),
        ("{}", 'no "type"'),
        ('{"type": "dance"}', 'unknown message type "dance"'),
        ('{"type": 7}', "unknown message type 7"),
        ('{"type": "ping", "t": [1]}', "ping t: expected a number or a string"),
        ('{"type": "ping", "t": true}', "ping t: expected a number or a string"),
        ('{"type": "config", "fps": 1e309}', "number 1e309 is out of range"),
        ('{"type": "config", "fps": NaN}', "not valid JSON"),
        ("[" * 100_000, "not valid JSON"),
    ],
)
def test_bad_messages_are_explained(text: str, words: str) -> None:
    with pytest.raises(ProtocolInputError, match=words):
        parse_control(text)


def test_config_values_are_converted_and_unknown_keys_ignored() -> None:
    settings, problems = parse_config(
        {"fps": 12, "quality": None, "width": 320.0, "max_bytes": 0, "frame_info": True,
         "token": "x", "future_field": 1}
    )
    assert problems == []
    assert settings == {
        "fps": 12.0, "quality": None, "width": 320, "max_bytes": None, "frame_info": True,
    }
    assert isinstance(settings["fps"], float) and isinstance(settings["width"], int)


def test_url_values_are_strings_with_words_for_null_and_booleans() -> None:
    settings, problems = parse_config(
        {"fps": "7.5", "quality": "none", "height": "240", "frame_info": "yes",
         "max_bytes": "4096"},
        from_url=True,
    )
    assert problems == []
    assert settings == {
        "fps": 7.5, "quality": None, "height": 240, "frame_info": True, "max_bytes": 4096,
    }
    assert parse_config({"frame_info": "off"}, from_url=True) == ({"frame_info": False}, [])


@pytest.mark.parametrize(
    ("values", "from_url", "problem"),
    [
        ({"fps": 0}, False, "fps: must be between 0.1 and 240"),
        ({"fps": None}, False, "fps: a value is required"),
        ({"fps": "inf"}, True, "fps: must be between 0.1 and 240, not inf"),
        ({"quality": 80.5}, False, "quality: expected a whole number, not 80.5"),
        ({"quality": True}, False, "quality: expected a number, not true"),
        ({"quality": "80"}, False, 'quality: expected a number, not "80"'),
        ({"width": 15}, False, "width: must be between 16 and 8192, not 15"),
        ({"width": 10**400}, False, "width: must be between 16 and 8192"),
        ({"max_bytes": 100}, False, "max_bytes: must be between 4096 and 2147483647 (or 0"),
        ({"frame_info": 1}, False, "frame_info: expected true or false, not 1"),
        ({"height": "tall"}, True, 'height: expected a number, not "tall"'),
    ],
)
def test_refused_values_are_named_and_the_rest_kept(
    values: dict, from_url: bool, problem: str
) -> None:
    settings, problems = parse_config({**values, "fps": 5} if "fps" not in values else values,
                                      from_url=from_url)
    assert len(problems) == 1 and problems[0].startswith(problem), problems
    assert set(settings) <= {"fps"}
