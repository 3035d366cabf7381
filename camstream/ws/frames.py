"""RFC 6455 framing without I/O: opcodes, frame headers, Close payloads, fragment assembly.

Nothing here touches a socket: :func:`read_frame` reads through a callable it is given, and
:class:`MessageAssembler` joins fragments. The reading and writing itself happens in
:mod:`camstream.ws.handler` and :mod:`camstream.ws.connection`.
"""

from __future__ import annotations

import base64
import hashlib
import struct
from collections.abc import Callable

__all__ = [
    "CONTROL_OPCODES",
    "DATA_OPCODES",
    "MAX_FRAGMENTS",
    "MessageAssembler",
    "OP_BINARY",
    "OP_CLOSE",
    "OP_CONT",
    "OP_PING",
    "OP_PONG",
    "OP_TEXT",
    "ProtocolError",
    "accept_key",
    "close_payload",
    "frame_header",
    "parse_close",
    "read_frame",
    "unmask",
    "valid_close_code",
]

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
DATA_OPCODES = frozenset({OP_CONT, OP_TEXT, OP_BINARY})
CONTROL_OPCODES = frozenset({OP_CLOSE, OP_PING, OP_PONG})
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 section 1.3
MAX_FRAGMENTS = 1024  # a client message may come in at most this many frames


class ProtocolError(Exception):
    """The peer broke RFC 6455; the connection is failed with Close ``code``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code, self.reason = code, reason


def valid_close_code(code: int, *, sending: bool) -> bool:
    """Return whether ``code`` may appear in a Close frame (RFC 6455 7.4, IANA registry)."""
    if sending:
        return code in (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1013) or (
            3000 <= code <= 4999
        )
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


def frame_header(opcode: int, length: int) -> bytes:
    """Build an unmasked, unfragmented server frame header (FIN set, RSV clear)."""
    if length < 126:
        return struct.pack("!BB", 0x80 | opcode, length)
    if length < 65536:
        return struct.pack("!BBH", 0x80 | opcode, 126, length)
    return struct.pack("!BBQ", 0x80 | opcode, 127, length)


def close_payload(code: int, reason: str | bytes) -> bytes:
    """Encode a Close payload; ``reason`` is cut to 123 bytes on a UTF-8 character boundary."""
    if isinstance(reason, (bytes, bytearray)):
        reason = bytes(reason).decode("utf-8", "replace")
    raw = reason.encode("utf-8")[:123].decode("utf-8", "ignore").encode("utf-8")
    return struct.pack("!H", code) + raw


def unmask(payload: bytes, mask: bytes) -> bytes:
    """XOR ``payload`` with the 4-byte ``mask`` as one big integer (defect #7: ~20x per-byte)."""
    n = len(payload)
    if not n:
        return b""
    key = int.from_bytes(mask * (n // 4) + mask[: n % 4], "big")
    return (int.from_bytes(payload, "big") ^ key).to_bytes(n, "big")


def accept_key(key: str) -> str:
    """The ``Sec-WebSocket-Accept`` value for a client's ``Sec-WebSocket-Key``."""
    return base64.b64encode(hashlib.sha1(key.encode("ascii") + _GUID).digest()).decode()


def read_frame(
    read_exact: Callable[[int], bytes], max_size: int, buffered: int = 0
) -> tuple[bool, int, bytes]:
    """Read one masked client frame through ``read_exact(n)`` (which returns exactly n bytes).

    Returns ``(fin, opcode, unmasked payload)``. The size of a data frame is checked against
    ``max_size`` (with ``buffered`` bytes of earlier fragments) before a payload byte is read
    (defect #6).

    Raises:
        ProtocolError: 1002 for reserved bits, unknown opcodes, unmasked or oversized control
            frames, invalid lengths; 1009 for a message over ``max_size``.
    """
    b1, b2 = read_exact(2)
    fin, opcode, length = bool(b1 & 0x80), b1 & 0x0F, b2 & 0x7F
    if b1 & 0x70:
        raise ProtocolError(1002, "reserved bits must be 0")
    if opcode not in DATA_OPCODES and opcode not in CONTROL_OPCODES:
        raise ProtocolError(1002, f"unknown opcode {opcode:#x}")
    if not b2 & 0x80:
        raise ProtocolError(1002, "client frames must be masked")
    if opcode in CONTROL_OPCODES and (not fin or length > 125):
        raise ProtocolError(1002, "control frames must be final and at most 125 bytes")
    if length == 126:
        (length,) = struct.unpack("!H", read_exact(2))
    elif length == 127:
        (length,) = struct.unpack("!Q", read_exact(8))
        if length >> 63:
            raise ProtocolError(1002, "invalid frame length")
    if opcode in DATA_OPCODES and buffered + length > max_size:
        raise ProtocolError(1009, f"message exceeds {max_size} bytes")
    mask = read_exact(4)
    return fin, opcode, unmask(read_exact(length), mask)


def parse_close(payload: bytes) -> tuple[int, str]:
    """Decode a peer's Close payload into ``(code, reason)``; 1005 for an empty one.

    Raises:
        ProtocolError: 1002 for a 1-byte payload, an invalid code or a reason that is not UTF-8.
    """
    if len(payload) == 1:
        raise ProtocolError(1002, "1-byte Close payload")
    if not payload:
        return 1005, ""
    (code,) = struct.unpack("!H", payload[:2])
    if not valid_close_code(code, sending=False):
        raise ProtocolError(1002, f"invalid close code {code}")
    try:
        return code, payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(1002, "invalid UTF-8 in the close reason") from None


class MessageAssembler:
    """Joins data frames into messages (RFC 6455 section 5.4); one per connection, one thread."""

    def __init__(self) -> None:
        self._opcode: int | None = None
        self._chunks: list[bytes] = []
        self._size = 0

    @property
    def buffered(self) -> int:
        """Payload bytes of the message being assembled so far."""
        return self._size

    def feed(self, fin: bool, opcode: int, payload: bytes) -> tuple[int, bytes] | None:
        """Take one data frame; return ``(OP_TEXT or OP_BINARY, message)`` once it is complete.

        Raises:
            ProtocolError: 1002 for a stray or missing continuation, 1009 for a message in more
                than :data:`MAX_FRAGMENTS` frames.
        """
        if opcode == OP_CONT:
            if self._opcode is None:
                raise ProtocolError(1002, "continuation frame without a message to continue")
            opcode = self._opcode
        elif self._opcode is not None:
            raise ProtocolError(1002, "new message inside a fragmented message")
        if not fin:
            if len(self._chunks) >= MAX_FRAGMENTS:  # empty fragments cost memory too
                raise ProtocolError(1009, f"message in more than {MAX_FRAGMENTS} fragments")
            self._opcode = opcode
            self._chunks.append(payload)
            self._size += len(payload)
            return None
        if self._chunks:
            payload = b"".join((*self._chunks, payload))
            self._opcode, self._chunks, self._size = None, [], 0
        return opcode, payload
