"""Who is really on the other end: the client behind a trusted reverse proxy. No I/O.

A connection from a TCP peer listed in ``trusted_proxies`` (nginx, HAProxy on the same host or
network) carries the client's address, scheme and host in headers the proxy set:
``X-Forwarded-For`` / ``X-Forwarded-Proto`` / ``X-Forwarded-Host``, or the standard
``Forwarded`` (RFC 7239). From any other peer those headers are ignored: anyone can send them.

Rules (:func:`resolve`):

- The address is the **rightmost untrusted** entry of the chain ``X-Forwarded-For + [peer]``:
  each trusted proxy appends the address it saw, so entries left of the first untrusted one
  were written by the client and prove nothing. If every entry is a trusted proxy, the leftmost
  is taken. An entry that is not an IP address stops the walk: the last trusted hop is used.
- Scheme and host come from the rightmost value (the one our own proxy wrote). Only ``http`` /
  ``https`` (``ws`` / ``wss`` map to them) and a plain ``host[:port]`` are taken; anything else
  falls back to what the connection itself says.
- The ``X-Forwarded-*`` family is used if any of its headers is present, else ``Forwarded``;
  the two are never mixed (a proxy that sets one may pass the other through from the client).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence, Union

from ..errors import ConfigError

__all__ = ["ClientView", "Network", "is_trusted", "parse_trusted_proxies", "resolve"]

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
_Address = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

_MAX_ENTRIES = 64  # longer chains are cut to their rightmost entries (a flood costs nothing)
_MAX_HEADER = 4096  # characters of a forwarding header looked at
_HOST = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252})|\[[0-9A-Fa-f:.]{2,45}\])(?::\d{1,5})?")
_SCHEMES = {"http": "http", "https": "https", "ws": "http", "wss": "https"}
_FORWARDED_PAIR = re.compile(r'\s*([A-Za-z]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;,"\s]*)\s*')


@dataclass(frozen=True)
class ClientView:
    """The client of one request as camstream should see it.

    Attributes:
        address: the client's IP address (the TCP peer's unless a trusted proxy said otherwise).
        scheme: ``"https"`` if the client's own connection is encrypted, else ``"http"``.
        host: the host (and port) the client asked for, lower-cased; ``""`` if none was sent.
            A forwarded host is used only if it is a plain ``host[:port]``.
        via_proxy: True if the TCP peer is a trusted proxy (the fields above come from it).
    """

    address: str
    scheme: str
    host: str
    via_proxy: bool = False

    @property
    def secure(self) -> bool:
        return self.scheme == "https"


def parse_trusted_proxies(values: Iterable[str] | str | None) -> tuple[Network, ...]:
    """The networks of ``--trusted-proxy`` / ``Streamer(trusted_proxies=...)``.

    Args:
        values: addresses or CIDR networks (``"127.0.0.1"``, ``"10.0.0.0/8"``, ``"::1"``);
            a single string is one value. ``None``: no proxy is trusted.

    Raises:
        ConfigError: a value is not an address or network (host bits set count as an error).
    """
    if values is None:
        return ()
    if isinstance(values, str):
        values = [values]
    networks = []
    for value in values:
        if not isinstance(value, str):
            raise ConfigError(f"trusted proxy must be an address or CIDR string, not {value!r}")
        try:
            networks.append(ipaddress.ip_network(value.strip(), strict=True))
        except ValueError as exc:
            raise ConfigError(
                f"trusted proxy {value!r} is not an IP address or network "
                f"(e.g. 127.0.0.1, 10.0.0.0/8, ::1): {exc}"
            ) from None
    return tuple(networks)


def is_trusted(address: str, trusted: Sequence[Network]) -> bool:
    """Whether ``address`` (a TCP peer) lies in one of the ``trusted`` networks."""
    ip = _ip(address)
    return ip is not None and _in(ip, trusted)


def resolve(
    peer: str,
    headers: Mapping[str, str],
    trusted: Sequence[Network],
    *,
    tls: bool = False,
) -> ClientView:
    """The client behind ``peer`` for a request with these ``headers``.

    Args:
        peer: the TCP peer's address (``Request.remote_address[0]``).
        headers: the request headers (case-insensitive mapping; repeated headers joined).
        trusted: networks whose peers may speak for their clients.
        tls: whether the connection from ``peer`` is TLS.

    Returns:
        The view of the client; forwarding headers count only if ``peer`` is trusted.
    """
    own_scheme = "https" if tls else "http"
    own_host = headers.get("host", "").strip().lower()  # checked by the Host rule as it is
    if not trusted or not is_trusted(peer, trusted):
        return ClientView(peer, own_scheme, own_host)
    if any(name in headers for name in ("x-forwarded-for", "x-forwarded-proto",
                                        "x-forwarded-host")):
        chain = _split(headers.get("x-forwarded-for", ""))
        scheme = _last(_split(headers.get("x-forwarded-proto", "")))
        host = _last(_split(headers.get("x-forwarded-host", "")))
    else:
        elements = _parse_forwarded(headers.get("forwarded", ""))
        chain = [e.get("for", "") for e in elements]
        last = elements[-1] if elements else {}
        scheme, host = last.get("proto"), last.get("host")
    return ClientView(
        address=_client_address(chain[-_MAX_ENTRIES:], peer, trusted),
        scheme=_SCHEMES.get((scheme or "").lower(), own_scheme),
        host=_clean_host(host or "") or own_host,
        via_proxy=True,
    )


def _client_address(chain: list[str], peer: str, trusted: Sequence[Network]) -> str:
    """The rightmost untrusted address of ``chain + [peer]`` (``peer`` is trusted)."""
    found = peer
    for entry in reversed(chain):
        ip = _ip(_strip_port(entry))
        if ip is None:
            return found  # garbage from the client or an unknown hop: stop at what we know
        found = str(ip)
        if not _in(ip, trusted):
            return found
    return found


def _split(value: str) -> list[str]:
    """The comma-separated items of a header; of a huge one, the whole items at its right end."""
    if len(value) > _MAX_HEADER:
        value = value[-_MAX_HEADER:].partition(",")[2]  # the first item may be cut: drop it
    return [part.strip() for part in value.split(",") if part.strip()]


def _last(values: list[str]) -> str | None:
    return values[-1] if values else None


def _parse_forwarded(value: str) -> list[dict[str, str]]:
    """The elements of a ``Forwarded`` header, each a dict of lower-cased names to values.

    A malformed element ends the list there (what follows cannot be trusted to line up).
    """
    elements: list[dict[str, str]] = []
    text = value if len(value) <= _MAX_HEADER else value[-_MAX_HEADER:].partition(",")[2]
    pos = 0
    while pos < len(text) and len(elements) < _MAX_ENTRIES * 2:
        element: dict[str, str] = {}
        while True:
            match = _FORWARDED_PAIR.match(text, pos)
            if match is None:
                return elements + ([element] if element else [])
            name, raw = match.group(1).lower(), match.group(2)
            if raw.startswith('"'):
                raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
            element.setdefault(name, raw)
            pos = match.end()
            if pos >= len(text) or text[pos] == ",":
                break
            if text[pos] != ";":
                return elements + [element]
            pos += 1
        elements.append(element)
        pos += 1
    return elements


def _strip_port(entry: str) -> str:
    """``1.2.3.4:80`` -> ``1.2.3.4``; ``[::1]:80`` -> ``::1``; a bare IPv6 address unchanged."""
    entry = entry.strip().strip('"')
    if entry.startswith("["):
        return entry[1:].split("]", 1)[0]
    if entry.count(":") == 1:
        return entry.split(":", 1)[0]
    return entry


def _ip(text: str) -> _Address | None:
    try:
        ip = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _in(ip: _Address, networks: Sequence[Network]) -> bool:
    return any(ip.version == net.version and ip in net for net in networks)


def _clean_host(value: str) -> str | None:
    """``value`` lower-cased if it is a plain ``host[:port]``, else None."""
    value = value.strip().lower()
    if not value or len(value) > 260 or _HOST.fullmatch(value) is None:
        return None
    return value
