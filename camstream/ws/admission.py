"""Admission bookkeeping: what each accepted socket counts against, and how addresses count.

I/O-free; used by :class:`~camstream.ws.server.WebSocketServer` under its registry lock.
"""

from __future__ import annotations

import dataclasses
import ipaddress

from .link import Link

__all__ = ["Slot", "counted_form"]


@dataclasses.dataclass(eq=False)
class Slot:
    """Admission bookkeeping of one accepted socket, from accept until its thread has finished.

    Created by :meth:`WebSocketServer.verify_request` in the accepting thread; the fields change
    under the server's registry lock.
    """

    address: str | None  # what it counts against (None: exempt, for now): counted_address()
    accepted: float  # time.monotonic() at accept
    link: Link | None = None  # set once its handler thread has registered it
    pending: bool = True  # the request has not been read yet: the eviction candidates
    authenticated: bool = False  # the request carried the credential (app.authenticated)
    evicted: bool = False


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
