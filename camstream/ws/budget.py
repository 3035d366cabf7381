"""What clients may send: each connection's budget, and one shared by each client address.

A connection's own budget (:class:`ConnectionBudget`, from its :class:`~camstream.ws.limits.
Limits`) closes it with 1008 once spent. The budget of an address (:class:`AddressBudget`) is
shared by all of that address's connections and is never a reason to close: its readers take
turns (each waits until what it read is paid for), so a client that opens many connections
only slows itself, and a neighbour behind the same NAT is slowed, not closed. I/O-free.
"""

from __future__ import annotations

import dataclasses
import threading

from ..ratelimit import RateLimiter, SharedBucket
from .frames import OP_CLOSE, OP_CONT
from .limits import FRAME_COST, Limits

__all__ = [
    "TOO_MANY_MESSAGES",
    "TOO_MUCH_DATA",
    "AddressBudget",
    "AddressBudgets",
    "AddressRates",
    "ConnectionBudget",
    "frame_cost",
]

TOO_MANY_MESSAGES = "too many messages"  # the reasons of the 1008 Close
TOO_MUCH_DATA = "too much data"


def frame_cost(payload_length: int) -> int:
    """What a client frame with ``payload_length`` bytes costs the byte budgets: its size on the
    wire (header, mask, payload), at least :data:`FRAME_COST`."""
    header = 2 if payload_length < 126 else 4 if payload_length < 65536 else 10
    return max(FRAME_COST, header + 4 + payload_length)


@dataclasses.dataclass(frozen=True)
class AddressRates:
    """What all connections of one client address may send together (None: no limit)."""

    message_rate: float | None = None  # messages a second
    message_burst: float = 0.0
    byte_rate: float | None = None  # bytes a second
    byte_burst: float = 0.0


class AddressBudget:
    """The budget one client address's connections share; thread-safe."""

    def __init__(self, rates: AddressRates) -> None:
        self._messages = (
            None if rates.message_rate is None
            else SharedBucket(rates.message_rate, rates.message_burst)
        )
        self._bytes = (
            None if rates.byte_rate is None else SharedBucket(rates.byte_rate, rates.byte_burst)
        )

    def reserve(self, messages: int, size: int) -> float:
        """Take ``messages`` and ``size`` bytes; return the seconds the reader should wait."""
        wait = 0.0
        if self._messages is not None and messages:
            wait = self._messages.reserve(messages)
        if self._bytes is not None:
            wait = max(wait, self._bytes.reserve(size))
        return wait


class AddressBudgets:
    """One :class:`AddressBudget` for each address that has connections; thread-safe.

    :meth:`acquire` when a connection of an address opens, :meth:`release` when it ends; the
    budget is forgotten with the address's last connection (a client that reconnects gets a
    full budget again, which its connections' own budgets and the connection limits bound).
    """

    def __init__(self, rates: AddressRates) -> None:
        self.rates = rates
        self._lock = threading.Lock()
        self._budgets: dict[str, tuple[AddressBudget, int]] = {}

    @property
    def enabled(self) -> bool:
        """Whether addresses have budgets at all."""
        return self.rates.message_rate is not None or self.rates.byte_rate is not None

    def acquire(self, address: str) -> AddressBudget | None:
        """The budget of ``address``, for one more connection (None: no address budgets)."""
        if not self.enabled:
            return None
        with self._lock:
            budget, users = self._budgets.get(address, (None, 0))
            if budget is None:
                budget = AddressBudget(self.rates)
            self._budgets[address] = (budget, users + 1)
        return budget

    def release(self, address: str) -> None:
        """One connection of ``address`` ended."""
        with self._lock:
            budget, users = self._budgets.pop(address, (None, 0))
            if budget is not None and users > 1:
                self._budgets[address] = (budget, users - 1)

    def __len__(self) -> int:
        with self._lock:
            return len(self._budgets)


class ConnectionBudget:
    """What one connection's client may still send; used by its reader thread only.

    Args:
        limits: The connection's own budget (``message_rate``, ``byte_rate``, ...).
        shared: Its address's budget, or None.
    """

    def __init__(self, limits: Limits, shared: AddressBudget | None) -> None:
        self._messages = (
            None if limits.message_rate is None
            else RateLimiter(limits.message_rate, limits.message_burst)
        )
        self._bytes = (
            None if limits.byte_rate is None else RateLimiter(limits.byte_rate, limits.byte_burst)
        )
        self._shared = shared

    def charge(self, opcode: int, payload_length: int) -> tuple[str | None, float]:
        """Charge one frame that arrived.

        A data frame that starts a message (text or binary) and each ping and pong cost one
        message; continuation frames cost none (the number of fragments of a message is capped
        by :class:`~camstream.ws.frames.MessageAssembler`); every frame but Close costs its
        :func:`frame_cost` in bytes.

        Returns:
            ``(refusal, wait)``: ``refusal`` is None or the reason to close with 1008 (this
            connection's budget is spent); ``wait`` is how long the reader should wait for its
            address's turn before it acts on the frame.
        """
        if opcode == OP_CLOSE:
            return None, 0.0
        messages = 0 if opcode == OP_CONT else 1
        size = frame_cost(payload_length)
        if messages and self._messages is not None and not self._messages.allow(messages):
            return TOO_MANY_MESSAGES, 0.0
        if self._bytes is not None and not self._bytes.allow(size):
            return TOO_MUCH_DATA, 0.0
        if self._shared is None:
            return None, 0.0
        return None, self._shared.reserve(messages, size)
