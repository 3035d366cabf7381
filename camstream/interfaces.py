"""This machine's own network addresses, for the URLs of a server listening on all interfaces.

A server bound to ``0.0.0.0`` (or ``::``) is reached from other machines at the addresses of
this machine's interfaces, never at ``127.0.0.1``. :func:`interface_addresses` lists them
without contacting anything (no DNS, no packet sent):

- **Linux**: every interface that is up and not loopback (``socket.if_nameindex``), its IPv4
  address read with the ``SIOCGIFADDR`` ioctl, and its global IPv6 addresses from
  ``/proc/net/if_inet6`` (link-local, temporary, deprecated and tentative ones left out: they
  cannot go in a URL or do not last).
- **Elsewhere**: the addresses the system gives for its own host name
  (``getaddrinfo(gethostname())``, answered from the system's own configuration).

Loopback (``127.0.0.0/8``, ``::1``) and link-local addresses are never listed. Errors (an
interface without an address, no ``/proc``) leave that address out; the result may be empty.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
import sys

__all__ = ["interface_addresses", "is_wildcard"]

_SIOCGIFFLAGS = 0x8913
_SIOCGIFADDR = 0x8915
_IFF_UP = 0x1
_IFF_LOOPBACK = 0x8
# /proc/net/if_inet6 flags of addresses that cannot be given out: temporary (privacy)
# addresses, tentative (duplicate detection running), failed and deprecated ones.
_UNUSABLE_IPV6_FLAGS = 0x01 | 0x08 | 0x20 | 0x40


def is_wildcard(host: str) -> bool:
    """Whether ``host`` means "every interface" (``""``, ``0.0.0.0``, ``::``)."""
    return host in ("", "0.0.0.0", "::", "[::]")


def interface_addresses(ipv4: bool = True, ipv6: bool = False) -> list[str]:
    """This machine's usable addresses (see the module docstring), IPv6 ones first.

    Args:
        ipv4, ipv6: which families to list.

    Returns:
        Addresses as text, in interface order, without duplicates; possibly empty.
    """
    if sys.platform.startswith("linux"):
        found = (_linux_ipv6() if ipv6 else []) + (_linux_ipv4() if ipv4 else [])
    else:
        found = _from_host_name(ipv4, ipv6)
    usable = []
    for text in found:
        try:
            ip = ipaddress.ip_address(text)
        except ValueError:
            continue
        if not (ip.is_loopback or ip.is_link_local or ip.is_unspecified) and text not in usable:
            usable.append(text)
    return usable


def _linux_ipv4() -> list[str]:
    import fcntl  # POSIX only

    addresses = []
    try:
        names = socket.if_nameindex()
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # for the ioctls; sends nothing
    except OSError:
        return []
    with probe:
        for _, name in names:
            request = struct.pack("256s", name.encode()[:15])
            try:
                flags = struct.unpack_from("H", fcntl.ioctl(probe, _SIOCGIFFLAGS, request), 16)[0]
                if not flags & _IFF_UP or flags & _IFF_LOOPBACK:
                    continue
                answer = fcntl.ioctl(probe, _SIOCGIFADDR, request)
            except OSError:  # no IPv4 address on it, or it went away
                continue
            addresses.append(socket.inet_ntoa(answer[20:24]))
    return addresses


def _linux_ipv6() -> list[str]:
    try:
        with open("/proc/net/if_inet6", encoding="ascii") as table:
            lines = table.read().splitlines()
    except OSError:  # no IPv6, or no /proc
        return []
    addresses = []
    for line in lines:
        fields = line.split()
        if len(fields) != 6 or fields[3] != "00":  # scope 00: global
            continue
        try:
            if int(fields[4], 16) & _UNUSABLE_IPV6_FLAGS:
                continue
            addresses.append(str(ipaddress.IPv6Address(bytes.fromhex(fields[0]))))
        except ValueError:
            continue
    return addresses


def _from_host_name(ipv4: bool, ipv6: bool) -> list[str]:
    families = [f for f, wanted in ((socket.AF_INET6, ipv6), (socket.AF_INET, ipv4)) if wanted]
    addresses = []
    for family in families:
        try:
            infos = socket.getaddrinfo(socket.gethostname(), None, family, socket.SOCK_STREAM)
        except (OSError, UnicodeError):
            continue
        addresses += [str(info[4][0]).split("%", 1)[0] for info in infos]
    return addresses
