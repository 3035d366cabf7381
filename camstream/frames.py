"""RFC 6455 framing without I/O: opcodes, server frame headers, Close payloads, unmasking.

The reading and writing itself happens in :mod:`camstream.transport`.
"""

from __future__ import annotations

import base64
import hashlib
import struct

__all__ = [
    "CONTROL_OPCODES",
    "DATA_OPCODES",
    "OP_BINARY",
    "OP_CLOSE",
    "OP_CONT",
    "OP_PING",
    "OP_PONG",
    "OP_TEXT",
    "accept_key",
    "close_payload",
    "frame_header",
    "unmask",
    "valid_close_code",
]

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
DATA_OPCODES = frozenset({OP_CONT, OP_TEXT, OP_BINARY})
CONTROL_OPCODES = frozenset({OP_CLOSE, OP_PING, OP_PONG})
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 section 1.3


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
