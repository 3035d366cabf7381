"""Admission: which accepted sockets may cost a thread, and how a refused one is answered.

:class:`Admission` keeps the records (:class:`Slot`) of every accepted socket from accept until
its thread has finished, and the counts the rules need: sockets in all, per client address, and
those that have not shown the application's credential. I/O-free and thread-safe; the server
calls it from the accepting thread (:meth:`Admission.admit`) and from handler threads.

**Refusals are answered.** A socket refused at accept is answered ``503 Service Unavailable``
with ``Retry-After`` and a one-line reason, so a WebSocket client sees the status instead of a
bare reset. The refusal is decided at accept, before anything is read (and, with TLS, before the
TLS handshake, which must complete before any HTTP status can be read), so answering it needs a
handler thread like any connection: a refused socket gets one of a few *answer places*
(:data:`ANSWER_PLACES` at once, :data:`ANSWER_RATE` a second after a burst of
:data:`ANSWER_BURST`), where its thread runs the TLS handshake, reads the request within the
usual deadlines and answers 503 instead of calling the application. Past those, a refused socket
is closed at once, as before: a flood of refused connections costs at most a few threads and
handshakes a second more than it did.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from .. import logs
from ..ratelimit import LogBudget, RateLimiter
from .http import HttpError
from .link import Link

__all__ = [
    "ANSWER_BURST",
    "ANSWER_PLACES",
    "ANSWER_RATE",
    "RETRY_AFTER",
    "Admission",
    "Refusal",
    "Slot",
    "counted_form",
    "is_loopback",
]

logger = logs.get_logger(__name__)

ANSWER_PLACES = 32  # refused sockets answered at once (each holds a thread until it is answered)
ANSWER_RATE = 20.0  # refused sockets answered a second on average ...
ANSWER_BURST = 64.0  # ... after a burst of this many; the others are closed without an answer
RETRY_AFTER = 5  # seconds, in the Retry-After header of a refusal
EVICTION_SLACK = 16  # shed connections may overlap new ones by this many until they are gone

_LIFTED_BY = {
    "max_connections": "max_connections",
    "max_connections_per_address": (
        "max_connections_per_address, CLI --max-connections-per-address; clients behind one "
        "NAT or proxy share an address"
    ),
}


@dataclasses.dataclass(frozen=True)
class Refusal:
    """Why a socket was refused: the counter it adds to, the answer's one-line body, and the
    log line's reason (which names what lifts the limit)."""

    counter: str  # "refused_full" or "refused_per_address"
    body: str
    reason: str


@dataclasses.dataclass(eq=False)
class Slot:
    """Admission bookkeeping of one accepted socket, from accept until its thread has finished.

    Created by :meth:`Admission.admit` in the accepting thread; the fields change under the
    admission's lock.
    """

    client: str  # the client address: the peer's (counted_form), or the one a trusted proxy names
    counted: bool  # counts against the per-address limit (not a loopback peer, not a proxy)
    accepted: float  # time.monotonic() at accept
    proxied: bool = False  # from a trusted proxy: counted by the client it carries, if named
    link: Link | None = None  # set once its handler thread has registered it
    pending: bool = True  # the request has not been read yet: the eviction candidates
    authenticated: bool = False  # the request carried the credential (app.authenticated)
    anonymous: bool = False  # its request came without the credential: counted against that cap
    evicted: bool = False
    refusal: Refusal | None = None  # refused at accept: its thread only answers 503


def counted_form(address: str) -> str:
    """How an address is counted: IPv6 by its /64 network (one host usually has a whole /64),
    IPv4-mapped IPv6 as the IPv4 address, anything unparsable as it is."""
    try:
        parsed = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if isinstance(parsed, ipaddress.IPv6Address):
        if parsed.ipv4_mapped is not None:
            return str(parsed.ipv4_mapped)
        return str(ipaddress.IPv6Network((parsed, 64), strict=False))
    return str(parsed)


def is_loopback(address: str) -> bool:
    """Whether ``address`` (as :func:`counted_form` gives it) is this machine: 127.0.0.0/8, ::1."""
    try:
        return ipaddress.ip_network(address, strict=False).is_loopback
    except ValueError:
        return False


class Admission:
    """The admission rules and records of one server; thread-safe.

    Rules, in order (see :meth:`admit`):

    * at most ``max_connections_per_address`` connections per client address (None: no
      limit). Loopback clients (127.0.0.0/8, ::1: this machine) are not counted, so any number
      of local viewers fits within the caps below; nor are the connections of trusted proxies
      until their request names the client they carry (:meth:`request_read`);
    * at most ``max_connections`` in all: when that is reached, the connection that has waited
      longest without sending its whole request is shed to make room; if there is none, the new
      socket is refused;
    * at most ``max_connections - reserved_connections`` whose request came without the
      credential (checked when the request is read, :meth:`request_read`: at accept nobody
      knows yet, so a client with the credential always finds a place, even while the others
      are all held by clients without it).

    Args:
        is_trusted_proxy: ``peer address -> bool``, the application's.
        exempt_loopback: False: loopback clients count like any other (for a machine shared
            by several users, or tests that play remote clients from 127.0.0.2, 127.0.0.3...).
        lifted_by: What lifts each limit, for the refusal log lines, by the limit's name
            (``max_connections``, ``max_connections_per_address``), e.g. the option of the
            application that sets it.
    """

    def __init__(
        self,
        *,
        max_connections: int,
        max_connections_per_address: int | None,
        reserved_connections: int,
        is_trusted_proxy: Callable[[str], bool],
        exempt_loopback: bool = True,
        lifted_by: Mapping[str, str] | None = None,
    ) -> None:
        self.max_connections = max_connections
        self.max_connections_per_address = max_connections_per_address
        self.reserved_connections = reserved_connections
        self._is_trusted_proxy = is_trusted_proxy
        self._exempt_loopback = exempt_loopback
        self._lifted_by = {**_LIFTED_BY, **(lifted_by or {})}
        self._lock = threading.Lock()
        self._slots: dict[Any, Slot] = {}  # accepted socket -> its record
        self._per_address: dict[str, int] = {}
        self._active = 0  # admitted sockets whose handler thread has not finished
        self._anonymous = 0  # admitted sockets whose request came without the credential
        self._answering = 0  # refused sockets being answered
        self._answers = RateLimiter(ANSWER_RATE, ANSWER_BURST)
        self._log = LogBudget()  # anyone can cause refusals: a burst of lines, then one a second
        self._counts = {
            "refused_full": 0, "refused_per_address": 0, "evicted": 0, "refusals_answered": 0,
        }

    # -- The accepting thread ------------------------------------------------------------------

    def admit(self, sock: Any, client_address: Any) -> tuple[bool, Link | None]:
        """Admit ``sock`` (accepted from ``client_address``) or refuse it.

        Returns:
            ``(serve, victim)``: whether to start its handler thread (admitted, or refused with
            an answer place: its :attr:`Slot.refusal` is set), and the link of a connection
            shed to make room (the caller aborts it, outside any lock).
        """
        peer = str(client_address[0]) if isinstance(client_address, tuple) else ""
        client = counted_form(peer) if peer else str(client_address)
        proxied = bool(peer) and self._is_trusted_proxy(peer)
        counted = bool(peer) and not proxied and not self._exempt(client)
        victim: Slot | None = None
        now = time.monotonic()
        with self._lock:
            refusal = self._per_address_refusal_locked(client) if counted else None
            if refusal is None and self._active >= self.max_connections:
                victim = self._stalest_pending_locked()
                if victim is None or self._active >= self.max_connections + EVICTION_SLACK:
                    refusal = self._full_refusal_locked()
                else:
                    victim.evicted = True
                    self._counts["evicted"] += 1
            if refusal is not None:
                self._counts[refusal.counter] += 1
                answered = self._answering < ANSWER_PLACES and self._answers.allow()
                if answered:
                    self._answering += 1
                    self._counts["refusals_answered"] += 1
                    self._slots[sock] = Slot(client, False, now, refusal=refusal)
            else:
                self._slots[sock] = Slot(client, counted, now, proxied=proxied)
                self._active += 1
                if counted:
                    self._per_address[client] = self._per_address.get(client, 0) + 1
        if refusal is not None:
            self._log.log(
                logger, logging.WARNING, "refused a connection from %s (%s): %s",
                client, "answered 503" if answered else "closed", refusal.reason,
            )
            return answered, None
        if victim is not None:
            logger.debug("shedding a connection still in its handshake to admit %s", client)
            return True, victim.link
        return True, None

    def _per_address_refusal_locked(self, client: str) -> Refusal | None:
        limit = self.max_connections_per_address
        if limit is None or self._per_address.get(client, 0) < limit:
            return None
        return Refusal(
            "refused_per_address",
            f"too many connections from your address ({limit}); try again later",
            f"it already has {limit} connections, the most one address may have "
            f"(raise {self._lifted_by['max_connections_per_address']})",
        )

    def _full_refusal_locked(self) -> Refusal:
        lifted = self._lifted_by["max_connections"]
        reason = f"{self._active} connections are open, the most allowed (raise {lifted})"
        return Refusal("refused_full", "server busy: too many connections; try again later",
                       reason)

    def _anonymous_refusal_locked(self) -> Refusal | None:
        if self._anonymous < self.max_connections - self.reserved_connections:
            return None
        lifted = self._lifted_by["max_connections"]
        reason = (f"{self._anonymous} connections without the credential are open; the last "
                  f"{self.reserved_connections} places are kept for clients with it "
                  f"(raise {lifted})")
        return Refusal("refused_full", "server busy: too many connections; try again later",
                       reason)

    def _stalest_pending_locked(self) -> Slot | None:
        """The registered connection that has waited longest for its request, if any."""
        stalest: Slot | None = None
        for slot in self._slots.values():
            if slot.pending and not slot.evicted and slot.refusal is None and (
                slot.link is not None and (stalest is None or slot.accepted < stalest.accepted)
            ):
                stalest = slot
        return stalest

    def _exempt(self, client: str) -> bool:
        return self._exempt_loopback and is_loopback(client)

    # -- Handler threads -----------------------------------------------------------------------

    def attach(self, sock: Any, link: Link) -> float:
        """Its handler thread registered ``sock`` as ``link``; returns its accept time."""
        with self._lock:
            slot = self._slots.get(sock)
            if slot is None:
                return time.monotonic()
            slot.link = link
            return slot.accepted

    def slot(self, sock: Any) -> Slot | None:
        """The record of ``sock`` (None once its thread has finished, or never admitted)."""
        with self._lock:
            return self._slots.get(sock)

    def request_read(
        self,
        sock: Any,
        authenticated: Callable[[], bool],
        carried: Callable[[], str | None],
    ) -> Slot | None:
        """The request head of ``sock`` is in; it may now use the reserved places.

        A connection from a trusted proxy (not counted at accept) now counts against the
        address of the client it carries (``carried()``, e.g. from ``X-Forwarded-For``).

        Returns:
            Its record, or None (not admitted here).

        Raises:
            HttpError: 503, the socket was refused at accept, or the client a trusted proxy
                carries already holds ``max_connections_per_address``.
        """
        slot = self.slot(sock)
        if slot is None:
            return None
        if slot.refusal is not None:
            raise _answer(slot.refusal)
        is_authenticated = authenticated()
        client = carried() if slot.proxied else None
        client = counted_form(client) if client else None
        with self._lock:
            if self._slots.get(sock) is not slot:
                return None
            slot.pending = False
            refusal: Refusal | None = None
            if is_authenticated:
                if slot.anonymous:  # a later request on the socket, now with the credential
                    slot.anonymous = False
                    self._anonymous -= 1
                slot.authenticated = True
            elif not slot.anonymous:
                refusal = self._anonymous_refusal_locked()
                if refusal is None:
                    slot.anonymous = True
                    self._anonymous += 1
            if refusal is None and client is not None:
                slot.client = client
                if not self._exempt(client):
                    refusal = self._per_address_refusal_locked(client)
                    if refusal is None:
                        slot.counted = True
                        self._per_address[client] = self._per_address.get(client, 0) + 1
            if refusal is None:
                return slot
            self._counts[refusal.counter] += 1
        self._log.log(logger, logging.WARNING, "refused a request from %s (answered 503): %s",
                      logs.printable(slot.client), refusal.reason)
        raise _answer(refusal)

    def done(self, sock: Any) -> None:
        """The handler thread of ``sock`` finished (or never started): forget it."""
        with self._lock:
            slot = self._slots.pop(sock, None)
            if slot is None:
                return
            if slot.refusal is not None:
                self._answering -= 1
                return
            self._active -= 1
            if slot.anonymous:
                self._anonymous -= 1
            if slot.counted:
                left = self._per_address.pop(slot.client, 1) - 1
                if left > 0:
                    self._per_address[slot.client] = left

    def stats(self) -> dict[str, int]:
        """Open connections, those without the credential, refusals (cap, per address; how
        many were answered with 503) and connections shed (stalest handshake)."""
        with self._lock:
            return {"open": self._active, "anonymous": self._anonymous, **self._counts}


def _answer(refusal: Refusal) -> HttpError:
    return HttpError(503, refusal.body, {"Retry-After": str(RETRY_AFTER)})
