"""camstream's version, in a module that imports nothing (read by setup.cfg, the package and the
start line, so no module needs the package's ``__init__`` for it)."""

__version__ = "0.1.0"
