"""The HTTP side: routes (``/``, snapshots, MJPEG, stats, health), who may watch (``policy``)
and who a client is behind proxies (``proxy``), and the viewer page in ``static/``."""
