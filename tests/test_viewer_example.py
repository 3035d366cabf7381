"""``examples/viewer.py`` without a display (issue 22 item 9): one clear line that says to use
``--headless`` and a non-zero exit, not Qt's abort (exit 134)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TIMEOUT

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="displays are Linux's here")
def test_viewer_without_a_display_says_use_headless(streamer_factory) -> None:
    streamer = streamer_factory("test", width=64, height=48)
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "viewer.py"), streamer.url, "--seconds", "2"],
        capture_output=True, text=True, timeout=TIMEOUT * 4, env=env,
    )
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("viewer: cannot open a window: no display"), lines
    assert "--headless" in lines[0]
