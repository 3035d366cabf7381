"""The package metadata lists what an installed camstream needs.

``setup.cfg`` names its packages one by one (so ``camstream.web.static`` is declared properly); a
new subpackage that is not listed would be missing from a plain ``pip install .``, while an
editable install (the test command's) would not notice.
"""

from __future__ import annotations

import configparser
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_camstream_package_is_listed_in_setup_cfg() -> None:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg", encoding="utf-8")
    listed = set(config["options"]["packages"].split())
    on_disk = {
        ".".join(path.parent.relative_to(ROOT).parts)
        for path in (ROOT / "camstream").rglob("*")
        if path.suffix in (".py", ".html") and "__pycache__" not in path.parts
    }
    assert on_disk <= listed, f"not in setup.cfg [options] packages: {sorted(on_disk - listed)}"
