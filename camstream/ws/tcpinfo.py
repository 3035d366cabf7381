"""Linux ``TCP_INFO`` of one socket: round-trip time, delivery rate, bytes acknowledged.

:func:`read_tcp_info` asks the kernel for ``struct tcp_info`` (``getsockopt(IPPROTO_TCP,
TCP_INFO)``) and returns the fields adaptive delivery uses as a :class:`TcpInfo`. The struct
grew over the years; the kernel returns as many bytes as it knows, so a field beyond what this
kernel returned is None rather than a wrong number. Where there is no ``TCP_INFO`` at all (not
Linux) :func:`read_tcp_info` returns None. Works on the plain TCP socket under TLS too
(:attr:`~camstream.ws.link.Link.sock` is always that socket). Reading it costs one system
call (about a microsecond) and takes no lock.

Field layout (``include/uapi/linux/tcp.h``; byte offsets, little or big endian as the host):
``tcpi_snd_mss`` 16, ``tcpi_unacked`` 24, ``tcpi_sacked`` 28, ``tcpi_last_data_sent`` 44,
``tcpi_last_ack_recv`` 56, ``tcpi_rtt`` 68, ``tcpi_rttvar`` 72, ``tcpi_snd_cwnd`` 80,
``tcpi_total_retrans`` 100 (Linux 2.6), ``tcpi_pacing_rate`` 104, ``tcpi_bytes_acked`` 120
(4.1), ``tcpi_notsent_bytes`` 144, ``tcpi_min_rtt`` 148 (4.6), ``tcpi_delivery_rate`` 160
(4.9), ``tcpi_busy_time`` 168, ``tcpi_rwnd_limited`` 176, ``tcpi_sndbuf_limited`` 184 (4.10),
``tcpi_delivered`` 192 (4.18), ``tcpi_bytes_sent`` 200, ``tcpi_bytes_retrans`` 208 (4.19),
``tcpi_snd_wnd`` 228 (5.19);
``tcpi_delivery_rate_app_limited`` is a bit of byte 7 (4.9).
"""

from __future__ import annotations

import socket
import struct
import sys
from typing import NamedTuple

__all__ = ["TcpInfo", "read_tcp_info", "peer_has_closed", "TCP_INFO_SUPPORTED"]

_TCP_INFO: int | None = getattr(socket, "TCP_INFO", None) if sys.platform.startswith(
    "linux"
) else None  # macOS has a TCP_INFO constant with another struct behind it

TCP_INFO_SUPPORTED = _TCP_INFO is not None
"""Whether this platform has Linux's ``TCP_INFO`` (else :func:`read_tcp_info` returns None)."""

_ASK_BYTES = 512  # more than any kernel's struct tcp_info; the kernel says how much it filled
_ORDER = "<" if sys.byteorder == "little" else ">"
# The bit-field byte 7 holds tcpi_delivery_rate_app_limited:1 first: the lowest bit on a
# little-endian ABI, the highest on a big-endian one.
_APP_LIMITED_BIT = 0x01 if sys.byteorder == "little" else 0x80

# (name, offset, struct format, scale to seconds) of each field read, in TcpInfo's order; a
# field is read only if the kernel's struct reaches its end.
_FIELDS: tuple[tuple[str, int, str, float | None], ...] = (
    ("snd_mss", 16, "I", None),
    ("unacked", 24, "I", None),
    ("sacked", 28, "I", None),
    ("last_data_sent", 44, "I", 1e-3),
    ("last_ack_recv", 56, "I", 1e-3),
    ("rtt", 68, "I", 1e-6),
    ("rttvar", 72, "I", 1e-6),
    ("snd_cwnd", 80, "I", None),
    ("total_retrans", 100, "I", None),
    ("pacing_rate", 104, "Q", None),
    ("bytes_acked", 120, "Q", None),
    ("notsent_bytes", 144, "I", None),
    ("min_rtt", 148, "I", 1e-6),
    ("delivery_rate", 160, "Q", None),
    ("busy_time", 168, "Q", 1e-6),
    ("rwnd_limited", 176, "Q", 1e-6),
    ("sndbuf_limited", 184, "Q", 1e-6),
    ("delivered", 192, "I", None),
    ("bytes_sent", 200, "Q", None),
    ("bytes_retrans", 208, "Q", None),
    ("snd_wnd", 228, "I", None),
)
_ONE = tuple((offset, struct.Struct(_ORDER + code)) for _, offset, code, _ in _FIELDS)
_SCALED = tuple((i, scale) for i, (*_, scale) in enumerate(_FIELDS) if scale is not None)
_PACING = next(i for i, field in enumerate(_FIELDS) if field[0] == "pacing_rate")


def _whole_layout() -> struct.Struct:
    """One struct for every field at once (the kernel's struct is at least this long since
    Linux 5.19): a single unpack instead of one per field."""
    layout, end = _ORDER, 0
    for _, offset, code, _ in _FIELDS:
        layout += f"{offset - end}x{code}" if offset > end else code
        end = offset + struct.calcsize(code)
    return struct.Struct(layout)


_WHOLE = _whole_layout()
_DELIVERY_RATE_END = 168  # the app-limited bit came with tcpi_delivery_rate (Linux 4.9)
_NO_RATE = (1 << 64) - 1  # ~0ULL: "no rate" (pacing_rate when the socket has none)


class TcpInfo(NamedTuple):
    """One reading of a socket's ``TCP_INFO`` (None: this kernel does not report the field).

    Units: seconds for times, bytes/s for rates, bytes for sizes (``unacked``, ``snd_cwnd``:
    segments of ``snd_mss`` bytes). Cumulative counters (``bytes_acked``, ``bytes_sent``,
    ``bytes_retrans``, ``delivered``, ``total_retrans``) only grow over the connection's life.
    """

    snd_mss: int | None = None
    """Sender's maximum segment size, bytes."""
    unacked: int | None = None
    """Segments sent and not yet acknowledged."""
    sacked: int | None = None
    """Of those, segments the peer has selectively acknowledged (received beyond a hole)."""
    last_data_sent: float | None = None
    """Seconds since data was last sent (the kernel's clock ticks: 1-10 ms steps)."""
    last_ack_recv: float | None = None
    """Seconds since an acknowledgement last arrived (same steps)."""
    rtt: float | None = None
    """Smoothed round-trip time, s (``tcpi_rtt``)."""
    rttvar: float | None = None
    """Round-trip time variation, s."""
    snd_cwnd: int | None = None
    """Congestion window, segments."""
    total_retrans: int | None = None
    """Segments retransmitted so far."""
    pacing_rate: int | None = None
    """The kernel's pacing rate, bytes/s (None if unset)."""
    bytes_acked: int | None = None
    """Bytes the peer acknowledged so far."""
    notsent_bytes: int | None = None
    """Bytes in the send queue not yet sent once (not in flight)."""
    min_rtt: float | None = None
    """Lowest round-trip time seen (windowed by the kernel), s."""
    delivery_rate: int | None = None
    """The kernel's newest delivery rate sample, bytes/s (see :attr:`delivery_rate_app_limited`;
    the kernel keeps the last sample that was not app-limited, or a higher app-limited one)."""
    busy_time: float | None = None
    """Seconds so far during which the socket had data unacknowledged (sent or queued) and
    was neither of the two below: ``tcpi_busy_time``, counted in the kernel's clock ticks
    (1-10 ms), so only sums over many busy periods are exact to better than a tick."""
    rwnd_limited: float | None = None
    """Seconds so far during which the peer's receive window held the sending back (not in
    :attr:`busy_time`)."""
    sndbuf_limited: float | None = None
    """Seconds so far during which the send buffer held the sending back (not in
    :attr:`busy_time`)."""
    delivered: int | None = None
    """Segments delivered so far (counts up by one or more with every new rate sample)."""
    bytes_sent: int | None = None
    """Bytes sent so far, retransmissions included."""
    bytes_retrans: int | None = None
    """Bytes retransmitted so far."""
    snd_wnd: int | None = None
    """The peer's receive window as it last advertised it (scaled), bytes: how much it takes
    beyond what it acknowledged (Linux 5.19)."""
    delivery_rate_app_limited: bool | None = None
    """Whether :attr:`delivery_rate` was measured while the application, not the network,
    limited the sending: then it is only a lower bound of what the path carries."""


def _decode(raw: bytes) -> TcpInfo:
    """The :class:`TcpInfo` of the ``raw`` struct bytes the kernel returned (any length)."""
    size = len(raw)
    values: list[float | int | bool | None]
    if size >= _WHOLE.size:
        values = list(_WHOLE.unpack_from(raw))
    else:
        values = [
            one.unpack_from(raw, offset)[0] if offset + one.size <= size else None
            for offset, one in _ONE
        ]
    for i, scale in _SCALED:
        count = values[i]
        if count is not None:
            values[i] = count * scale
    if values[_PACING] == _NO_RATE:
        values[_PACING] = None
    values.append(bool(raw[7] & _APP_LIMITED_BIT) if size >= _DELIVERY_RATE_END else None)
    return TcpInfo(*values)  # type: ignore[arg-type]  # (a tuple: ~1 us, a dataclass ~6)


def read_tcp_info(sock: socket.socket) -> TcpInfo | None:
    """Read ``sock``'s ``TCP_INFO`` now; any thread, no lock, never raises.

    Returns:
        The reading, or None where the platform has no ``TCP_INFO``, ``sock`` is closed or not
        a TCP socket, or the kernel returned less than the oldest fields used here.
    """
    if _TCP_INFO is None:
        return None
    try:
        raw = socket.socket.getsockopt(sock, socket.IPPROTO_TCP, _TCP_INFO, _ASK_BYTES)
    except (OSError, ValueError, TypeError):
        return None
    if len(raw) < 104:  # not even tcpi_rtt..tcpi_total_retrans: not a struct we know
        return None
    return _decode(raw)


_TCP_CLOSE = 7  # tcpi_state (byte 0), include/net/tcp_states.h: reset, or closed for good


def peer_has_closed(sock: socket.socket) -> bool | None:
    """Whether the connection of ``sock`` is gone: its ``tcpi_state`` is ``CLOSE`` (the peer
    reset it, as a reader that closes with bytes unread does, or answered a write after its
    close with a reset). A peer that only shut down its sending side (``CLOSE_WAIT``) may still
    read: that is not gone. None where there is no ``TCP_INFO``; any thread, never raises.
    """
    if _TCP_INFO is None:
        return None
    try:
        raw = socket.socket.getsockopt(sock, socket.IPPROTO_TCP, _TCP_INFO, 8)
    except (OSError, ValueError, TypeError):
        return True  # closed under us (a closed fd): gone either way
    if not raw:
        return None
    return raw[0] == _TCP_CLOSE
