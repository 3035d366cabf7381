"""The application's conversation with its viewers: ``app`` messages both ways.

A client sends ``{"type": "app", "value": ...}``; the Streamer's ``on_message(client, value)``
gets it in that client's reader thread (one client's values in the order it sent them). The
``client`` is an :class:`AppClient`: the same object for every message of one connection, with
its ``id``, its ``address`` (as the access policy resolved it) and :meth:`AppClient.send`.
:meth:`AppMessages.broadcast` (``Streamer.broadcast``) sends to every client in the
conversation: those that asked for ``data`` and those that have sent an ``app`` message.

What a client can do to the application is bounded by the transport (4 KiB a message, a
message budget per connection and per address, token and Origin checked at the handshake) and
here: a handler that raises costs the client an ``error`` message ("the application could not
handle this app message") and the log one line with the traceback, rate-limited per address;
the session lives on. A handler that blocks holds only its own client's reader thread: that
client's control messages (and keepalive pongs: past ``ping_interval + ping_timeout``, 40 s by
default, it is closed with 1011) wait, while its frames keep flowing from its sender thread and
every other client is untouched.

What the application sends is encoded once, in its own thread (:func:`camstream.protocol.
encode_value`: JSON, at most ``max_data_bytes``), and queued: ``send`` and ``broadcast`` never
block; each client holds at most :data:`~camstream.delivery.session.APP_QUEUE_LIMIT` messages
not yet written, and one that is full drops the new message (``send`` returns False, counted).
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Iterable

from . import logs, protocol
from .delivery.session import ClientSession
from .errors import ConfigError
from .ratelimit import KeyedLogBudget

__all__ = ["AppClient", "AppMessages", "OnMessage"]

logger = logs.get_logger(__name__)

OnMessage = Callable[["AppClient", Any], None]
"""``on_message(client, value)``: an ``app`` message's value from a client (reader thread)."""

HANDLER_FAILED = "the application could not handle this app message"
"""The ``error`` a client gets when ``on_message`` raised (the details go to the log only)."""


class AppClient:
    """One WebSocket client as the application sees it (what ``on_message`` gets).

    The same object for every message of one connection (keep it to answer later, from any
    thread). Attributes: ``id`` (the connection's number, as in logs and ``stats()``) and
    ``address`` (the client's address as the access policy resolved it: behind a trusted
    proxy, the forwarded one).
    """

    __slots__ = ("id", "address", "_session", "_messages")

    def __init__(
        self, session: ClientSession, address: str | None, messages: AppMessages
    ) -> None:
        self.id: int = session.connection.id
        self.address = address
        self._session = session
        self._messages = messages

    @property
    def connected(self) -> bool:
        """Whether the connection is still open."""
        return self._session.is_open

    def send(self, value: Any) -> bool:
        """Send ``{"type": "app", "value": value}`` to this client. Thread-safe; never blocks.

        Returns:
            True if queued; False if the client is gone or already has
            :data:`~camstream.delivery.session.APP_QUEUE_LIMIT` messages waiting (it reads
            too slowly): the message is dropped (``stats()["app"]["dropped"]``).

        Raises:
            DataError: ``value`` is not JSON; ``DataTooLargeError``: larger than the
                Streamer's ``max_data_bytes``.
        """
        text = self._messages.encode(value)
        return self._messages.post(self._session, text)

    def __repr__(self) -> str:
        return f"<AppClient {self.id} from {self.address}>"


class AppMessages:
    """The Streamer's side of ``app`` messages: calls ``on_message``, keeps each client's
    :class:`AppClient`, sends and broadcasts, counts.

    Args:
        on_message: the application's handler, or None (``app`` messages then get an
            ``error``: "no application handler").
        max_data_bytes: the largest value the application sends, as JSON.
        address_of: a session's client address as the access policy resolved it.

    Thread-safe: :meth:`handle` runs in each client's reader thread, :meth:`forget` in its
    closing thread, :meth:`broadcast` and sends in any.
    """

    def __init__(
        self,
        on_message: OnMessage | None,
        max_data_bytes: int,
        address_of: Callable[[ClientSession], str | None],
    ) -> None:
        if on_message is not None and not callable(on_message):
            raise ConfigError(f"on_message must be a callable, not {type(on_message).__name__}")
        self._on_message = on_message
        self._limit = max_data_bytes
        self._address_of = address_of
        self._lock = threading.Lock()
        self._clients: dict[ClientSession, AppClient] = {}  # those that sent an app message
        self._failures_log = KeyedLogBudget(rate=0.2, burst=3.0, total_rate=1.0, total_burst=20.0)
        self.received = 0  # app messages handed to on_message
        self.failures = 0  # of those, the ones on_message raised on
        self.sent = 0  # app messages queued to clients (send and broadcast)
        self.dropped = 0  # app messages a full client queue refused
        self.broadcasts = 0

    @property
    def handler(self) -> Callable[[ClientSession, Any], str | None] | None:
        """What a :class:`ClientSession` calls for each ``app`` message (None: no handler)."""
        return None if self._on_message is None else self.handle

    def handle(self, session: ClientSession, value: Any) -> str | None:
        """Hand one client's value to ``on_message`` (the client's reader thread).

        Returns:
            The text of an ``error`` message for the client if the handler raised, else None.
        """
        assert self._on_message is not None
        client = self._client(session)
        with self._lock:
            self.received += 1
        try:
            self._on_message(client, value)
        except Exception as exc:
            with self._lock:
                self.failures += 1
            skipped = self._failures_log.admit(client.address or "")
            if skipped is not None:
                more = f" ({skipped} more failures from this address not logged)" if skipped else ""
                logger.error(
                    "on_message raised on an app message from client %s (%s): %s%s", client.id,
                    logs.printable(client.address), logs.printable(exc), more, exc_info=True,
                )
            return HANDLER_FAILED
        return None

    def forget(self, session: ClientSession) -> None:
        """The client left (idempotent): its :class:`AppClient` is no longer a member."""
        with self._lock:
            self._clients.pop(session, None)

    def encode(self, value: Any) -> str:
        """``value`` as an ``app`` message's text (raises ``DataError``)."""
        return protocol.app_message_text(
            protocol.encode_value(value, self._limit, "an app message's value")
        )

    def post(self, session: ClientSession, text: str) -> bool:
        """Queue an encoded ``app`` message for one client; False if gone or full."""
        queued = session.is_open and session.post_app(text)
        with self._lock:
            if queued:
                self.sent += 1
            elif session.is_open:
                self.dropped += 1
        return queued

    def broadcast(self, sessions: Iterable[ClientSession], value: Any) -> int:
        """Send ``value`` to every client in the conversation: those with ``data`` on and those
        that have sent an ``app`` message. Returns how many it was queued for.

        Raises:
            DataError: as :meth:`AppClient.send` (nothing is sent then).
        """
        text = self.encode(value)
        with self._lock:
            self.broadcasts += 1
            members = set(self._clients)
        return sum(
            self.post(session, text)
            for session in sessions
            if session.settings.data or session in members
        )

    def report(self) -> dict[str, Any]:
        """The counters for ``stats()["app"]``."""
        with self._lock:
            return {
                "handler": self._on_message is not None,
                "received": self.received,
                "failures": self.failures,
                "sent": self.sent,
                "dropped": self.dropped,
                "broadcasts": self.broadcasts,
                "clients": len(self._clients),
            }

    def _client(self, session: ClientSession) -> AppClient:
        with self._lock:
            client = self._clients.get(session)
        if client is None:
            client = AppClient(session, self._address_of(session), self)
            with self._lock:
                client = self._clients.setdefault(session, client)
        return client
