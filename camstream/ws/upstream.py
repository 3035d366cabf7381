"""The one place that imports PyPI ``websocket-server`` 0.6.4 and repairs its import.

``websocket_server`` calls ``logging.basicConfig()`` at import time (defect #17): remember the
root logger's handlers and level, import, and undo whatever the import added. The rest of
camstream gets the base classes from here (:data:`BaseHandler`, :data:`BaseServer`) and never
imports ``websocket_server`` itself; what the subclasses replace is listed in
``docs/websocket-server-fixes.md``.
"""

from __future__ import annotations

import logging

__all__ = ["BaseHandler", "BaseServer"]

_root = logging.getLogger()
_saved_handlers, _saved_level = list(_root.handlers), _root.level
try:
    import websocket_server  # type: ignore[import-untyped]
finally:
    for _handler in _root.handlers[:]:
        if _handler not in _saved_handlers:
            _root.removeHandler(_handler)
    _root.setLevel(_saved_level)
    del _root, _saved_handlers, _saved_level

BaseHandler = websocket_server.WebSocketHandler
"""websocket-server's per-connection handler (a ``socketserver.StreamRequestHandler``)."""
BaseServer = websocket_server.WebsocketServer
"""websocket-server's server (a ``ThreadingMixIn`` + ``TCPServer``)."""
