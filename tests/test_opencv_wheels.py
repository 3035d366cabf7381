"""One list of OpenCV wheels: setup.py's ``CAMSTREAM_OPENCV`` choice takes it from the module
the ``camstream`` command uses (tests/test_cli.py covers the command's warning)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TIMEOUT

from camstream import cli
from camstream.opencv_wheels import OPENCV_WHEELS

ROOT = Path(__file__).resolve().parents[1]


def run_setup(wheel: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "setup.py", *args], cwd=ROOT, capture_output=True, text=True,
        timeout=TIMEOUT * 4, env={**os.environ, "CAMSTREAM_OPENCV": wheel},
    )


def test_the_command_warns_about_the_same_wheels() -> None:
    assert cli.OPENCV_WHEELS is OPENCV_WHEELS
    assert OPENCV_WHEELS[0] == "opencv-python"  # what setup.cfg requires


def test_setup_refuses_a_wheel_not_in_the_list_and_names_the_list() -> None:
    result = run_setup("opencv-pithon", "--name")
    assert result.returncode == 1
    assert f"one of {', '.join(OPENCV_WHEELS)}, not 'opencv-pithon'" in result.stderr


@pytest.mark.parametrize("wheel", OPENCV_WHEELS[1:])
def test_setup_requires_the_wheel_named(wheel: str, tmp_path: Path) -> None:
    result = run_setup(wheel, "-q", "egg_info", "--egg-base", str(tmp_path))
    assert result.returncode == 0, result.stderr
    (requires,) = tmp_path.glob("*.egg-info/requires.txt")
    base = requires.read_text().split("\n\n")[0].split()  # install_requires, before the extras
    assert f"{wheel}>=4.5" in base
    assert not any(line.startswith("opencv") and line != f"{wheel}>=4.5" for line in base)
