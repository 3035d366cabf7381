"""The one place that imports PyPI ``websocket-server`` 0.6.4 and repairs its import.

``websocket_server`` calls ``logging.basicConfig()`` at import time (defect #17): remember the
root logger's handlers and level, import, and undo whatever the import added. The rest of
camstream gets the base classes from here (:class:`BaseHandler`, :class:`BaseServer`) and never
imports ``websocket_server`` itself; what the subclasses replace is listed in
``docs/websocket-server-fixes.md``.

The base classes' own messaging API (``send_message``, ``run_forever``, ``clients`` callbacks,
...) is hidden here: camstream replaces its plumbing, so those methods would misbehave (the
base ``run_forever`` calls ``sys.exit``, defect #19). Reading one raises ``AttributeError``.
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



class _Unsupported:
    """A websocket-server method camstream does not support: reading it raises AttributeError."""

    def __set_name__(self, owner: type, name: str) -> None:
        self._name = name

    def __get__(self, obj: object, objtype: type | None = None) -> None:
        raise AttributeError(
            f"{self._name} is websocket-server API that camstream does not support: use "
            f"camstream.ws.Connection and the Application callbacks"
        )


class BaseHandler(websocket_server.WebSocketHandler):  # type: ignore[misc]
    """websocket-server's per-connection handler (a ``socketserver.StreamRequestHandler``),
    without its own reading and sending methods."""

    read_bytes = _Unsupported()
    read_http_headers = _Unsupported()
    make_handshake_response = _Unsupported()
    calculate_response_key = _Unsupported()
    send_message = _Unsupported()
    send_text = _Unsupported()
    send_pong = _Unsupported()
    send_close = _Unsupported()


class BaseServer(websocket_server.WebsocketServer):  # type: ignore[misc]
    """websocket-server's server (``ThreadingMixIn`` + ``TCPServer``) without its messaging API."""

    run_forever = _Unsupported()
    new_client = _Unsupported()
    client_left = _Unsupported()
    message_received = _Unsupported()
    set_fn_new_client = _Unsupported()
    set_fn_client_left = _Unsupported()
    set_fn_message_received = _Unsupported()
    send_message = _Unsupported()
    send_message_to_all = _Unsupported()
    deny_new_connections = _Unsupported()
    allow_new_connections = _Unsupported()
    shutdown_gracefully = _Unsupported()
    shutdown_abruptly = _Unsupported()
    disconnect_clients_gracefully = _Unsupported()
    disconnect_clients_abruptly = _Unsupported()
    handler_to_client = _Unsupported()
