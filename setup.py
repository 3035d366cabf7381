"""Shim for tools that still call setup.py; all metadata is in setup.cfg.

One thing is chosen here, when camstream is built from source (camstream is installed from a
checkout or an sdist, never from a prebuilt wheel): which OpenCV wheel it requires. All four
OpenCV wheels write the same ``cv2`` package, so an environment must hold exactly one of them.
A plain build requires ``opencv-python`` (setup.cfg); on a server, name another wheel:

    CAMSTREAM_OPENCV=opencv-python-headless pip install .

and camstream's metadata names that wheel, so nothing pulls ``opencv-python`` in and
``pip check`` is clean. Give the same variable again when you upgrade.
"""

from __future__ import annotations

import configparser
import os
import re
import runpy
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).resolve().parent
# The one list of OpenCV wheels, shared with the camstream command (a module that imports
# nothing, run here because camstream's dependencies may not be installed yet).
OPENCV_WHEELS: tuple[str, ...] = runpy.run_path(
    str(HERE / "camstream" / "opencv_wheels.py")
)["OPENCV_WHEELS"]


def _install_requires(wheel: str) -> list[str]:
    """setup.cfg's install_requires with its OpenCV wheel replaced by ``wheel``."""
    config = configparser.ConfigParser()
    config.read(HERE / "setup.cfg", encoding="utf-8")
    lines = config["options"]["install_requires"].splitlines()
    pattern = re.compile(r"^opencv-python(?=\s*(?:[<>=!~;\[]|$))")
    return [pattern.sub(wheel, line.strip()) for line in lines if line.strip()]


def _setup_arguments() -> dict[str, list[str]]:
    wheel = os.environ.get("CAMSTREAM_OPENCV", "").strip()
    if not wheel or wheel == OPENCV_WHEELS[0]:
        return {}  # setup.cfg as it is
    if wheel not in OPENCV_WHEELS:
        raise SystemExit(
            f"CAMSTREAM_OPENCV must be one of {', '.join(OPENCV_WHEELS)}, not {wheel!r}"
        )
    return {"install_requires": _install_requires(wheel)}


setup(**_setup_arguments())
