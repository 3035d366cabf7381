"""A tiny raw-socket WebSocket client for transport tests.

A real client speaking bytes over a real socket, so tests can send exactly the (mal)formed
handshakes and frames RFC 6455 talks about and see exactly what the server answers.
"""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import struct

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
# conftest.TIMEOUT, read here too: attackers.py imports this module outside pytest.
TIMEOUT = float(os.environ.get("CAMSTREAM_TEST_TIMEOUT", "5"))


def accept_key(key: str) -> str:
    return base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()


def upgrade_request(
    path: str = "/",
    *,
    key: str | None = None,
    extra: dict[str, str] | None = None,
    method: str = "GET",
    version: str = "HTTP/1.1",
    drop: tuple[str, ...] = (),
) -> bytes:
    """Build a WebSocket upgrade request; ``extra`` adds/overrides headers, ``drop`` removes."""
    headers = {
        "Host": "localhost",
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": key or base64.b64encode(os.urandom(16)).decode(),
        "Sec-WebSocket-Version": "13",
    }
    headers.update(extra or {})
    lines = [f"{method} {path} {version}"]
    lines += [f"{k}: {v}" for k, v in headers.items() if k not in drop]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def build_frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv: int = 0,
    mask: bytes | None = b"\x11\x22\x33\x44",
    length: int | None = None,
) -> bytes:
    """Build a client frame. ``mask=None`` sends it unmasked; ``length`` lies about the size."""
    n = len(payload) if length is None else length
    b1 = (0x80 if fin else 0) | (rsv << 4) | opcode
    mbit = 0x80 if mask is not None else 0
    if n < 126:
        head = struct.pack("!BB", b1, mbit | n)
    elif n < 65536:
        head = struct.pack("!BBH", b1, mbit | 126, n)
    else:
        head = struct.pack("!BBQ", b1, mbit | 127, n)
    if mask is None:
        return head + payload
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + body


class RawClient:
    """A blocking WebSocket client over a plain TCP socket (or an already-wrapped one)."""

    def __init__(
        self, port: int, host: str = "127.0.0.1", timeout: float = TIMEOUT, source: str = ""
    ) -> None:
        """Connect to ``host:port``; from the local address ``source`` if one is given."""
        self.sock = socket.create_connection(
            (host, port), timeout=timeout, source_address=(source, 0) if source else None
        )
        self.buf = b""

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawClient:  # noqa: PYI034 - Python 3.9 has no typing.Self
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # HTTP

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_http(self) -> tuple[int, dict[str, str], bytes]:
        """Read one response head (and a Content-Length body); returns status, headers, body."""
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(f"EOF before the response head: {self.buf!r}")
            self.buf += chunk
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        body = b""
        if "content-length" in headers:
            body = self.read_exact(int(headers["content-length"]))
        return status, headers, body

    def handshake(self, path: str = "/", **kwargs: object) -> dict[str, str]:
        """Upgrade; asserts a 101 with the right accept key and returns the response headers."""
        key = base64.b64encode(os.urandom(16)).decode()
        self.send(upgrade_request(path, key=key, **kwargs))  # type: ignore[arg-type]
        status, headers, _ = self.read_http()
        assert status == 101, status
        assert headers["sec-websocket-accept"] == accept_key(key)
        return headers

    # Frames

    def read_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(max(65536, n - len(self.buf)))
            if not chunk:
                raise EOFError("EOF")
            self.buf += chunk
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def recv_frame(self) -> tuple[bool, int, bytes]:
        """Read one server frame; asserts it is unmasked with RSV clear."""
        b1, b2 = self.read_exact(2)
        assert not b2 & 0x80, "server frames must not be masked"
        assert not b1 & 0x70, "RSV bits set"
        n = b2 & 0x7F
        if n == 126:
            (n,) = struct.unpack("!H", self.read_exact(2))
        elif n == 127:
            (n,) = struct.unpack("!Q", self.read_exact(8))
        return bool(b1 & 0x80), b1 & 0x0F, self.read_exact(n)

    def send_frame(self, opcode: int, payload: bytes = b"", **kwargs: object) -> None:
        self.send(build_frame(opcode, payload, **kwargs))  # type: ignore[arg-type]

    def recv_close(self) -> tuple[int | None, bytes]:
        """Read frames until a Close; return its code (None if empty) and reason bytes."""
        for _ in range(10000):
            _, opcode, payload = self.recv_frame()
            if opcode == OP_CLOSE:
                if not payload:
                    return None, b""
                return struct.unpack("!H", payload[:2])[0], payload[2:]
        raise AssertionError("no Close frame")

    def expect_eof(self) -> bool:
        """Return True if the server closes the TCP connection (before the socket timeout)."""
        try:
            while True:
                if not self.sock.recv(65536):
                    return True
        except ConnectionResetError:
            return True
        except OSError:
            return False
