"""Hostile clients for the hardening tests and measurements (issue #11), over real sockets.

Run as a script so attackers do not share the server's GIL::

    python tests/attackers.py ping PORT SECONDS CLIENTS
    python tests/attackers.py messages KIND PORT SECONDS CONNECTIONS ADDRESSES RATE SIZE
    python tests/attackers.py hold PORT SECONDS SOCKETS FIRST_ADDRESS [MODE [PER_ADDRESS]]

``ping``: CLIENTS connections (from 127.0.10.1, 127.0.10.2, ...) each send WebSocket pings as
fast as the socket takes them (and read the pongs), reconnecting when closed; prints
``closes_1008=N connections=M``.
``messages``: ``messages KIND PORT SECONDS CONNECTIONS ADDRESSES RATE SIZE``: CONNECTIONS
(from ADDRESSES source addresses 127.0.0.2, ...) send ``pause`` and then KIND messages (``pings``
with a long ``t``, ``config`` with unknown keys, or ``churn``: connect and close again) of SIZE
bytes at RATE a second each, reconnecting when closed; prints ``STARTED``, then a JSON line
``{"sent": N, "closes": {code: count}}``.
``hold``: SOCKETS connections from consecutive source addresses starting at FIRST_ADDRESS
(127.0.0.2, 127.0.0.3, ...; PER_ADDRESS from each, default 1) that dribble a request
one byte at a time (MODE ``dribble``) or complete a WebSocket handshake and then idle (``idle``),
reopening every socket the server closes; prints ``held=N refused=M`` every second and ends
after SECONDS. Every loop is bounded by SECONDS; every socket is closed.
"""

from __future__ import annotations

import ipaddress
import json
import selectors
import socket
import sys
import threading
import time
from typing import Any

from wsraw import OP_CLOSE, OP_PING, OP_TEXT, build_frame, upgrade_request

_CLOSE_1008 = b"\x03\xf0too many messages"  # a Close payload as the server sends it


def _connect(port: int, source: str = "127.0.0.1", timeout: float = 2.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                    source_address=(source, 0))


def _handshake(sock: socket.socket, query: str = "") -> bytes:
    """Upgrade ``sock``; return what came after the 101 head (raises OSError if refused)."""
    sock.sendall(upgrade_request("/" + query, extra={"Host": "127.0.0.1"}))
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("closed during the handshake")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 101"):
        raise ConnectionError(head.split(b"\r\n", 1)[0].decode("latin-1"))
    return rest


def ping_flood(port: int, seconds: float, clients: int) -> dict[str, int]:
    """CLIENTS threads pinging as fast as they can for ``seconds``; returns counters."""
    deadline = time.monotonic() + seconds
    counts = {"closes_1008": 0, "connections": 0}
    lock = threading.Lock()
    burst = build_frame(OP_PING, b"x" * 8) * 64

    def reader(sock: socket.socket, seen: list[bytes]) -> None:
        tail = b""
        try:
            while time.monotonic() < deadline:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                tail = (tail + chunk)[-64:]
                if _CLOSE_1008 in tail:
                    seen.append(tail)
                    break
        except OSError:
            pass

    def one_client(source: str) -> None:
        while time.monotonic() < deadline:
            try:
                sock = _connect(port, source)
            except OSError:
                time.sleep(0.05)
                continue
            seen: list[bytes] = []
            thread = threading.Thread(target=reader, args=(sock, seen))
            try:
                _handshake(sock)
                with lock:
                    counts["connections"] += 1
                    if counts["connections"] == 1:
                        print("flooding", flush=True)
                thread.start()
                while time.monotonic() < deadline and not seen:
                    sock.sendall(burst)
            except OSError:
                pass
            finally:
                if thread.ident is not None:
                    thread.join(max(0.0, deadline - time.monotonic()) + 2.0)
                sock.close()
            if seen:
                with lock:
                    counts["closes_1008"] += 1

    # Each from its own address (127.0.10.1, ...), like separate attacking machines.
    base = ipaddress.ip_address("127.0.10.1")
    threads = [threading.Thread(target=one_client, args=(str(base + i),)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 10)
    return counts


def hold(port: int, seconds: float, sockets: int, first: str, mode: str = "dribble",
         per_address: int = 1) -> None:
    """Keep ``sockets`` connections open, ``per_address`` from each source address."""
    deadline = time.monotonic() + seconds
    base = ipaddress.ip_address(first)
    sources = [str(base + i // per_address) for i in range(sockets)]
    held: dict[int, socket.socket] = {}
    progress: dict[int, int] = {}
    refused = 0
    request = upgrade_request("/", extra={"Host": "127.0.0.1"})
    next_report = time.monotonic() + 1.0
    try:
        while time.monotonic() < deadline:
            for i, source in enumerate(sources):
                sock = held.get(i)
                if sock is None:
                    try:
                        sock = _connect(port, source, timeout=0.5)
                        if mode == "idle":
                            _handshake(sock)
                        sock.setblocking(False)
                    except OSError:
                        refused += 1
                        if sock is not None:
                            sock.close()
                        continue
                    held[i], progress[i] = sock, 0
                    continue
                try:  # closed by the server? (EOF or reset)
                    if sock.recv(4096) == b"":
                        raise ConnectionError
                except BlockingIOError:
                    pass
                except OSError:
                    sock.close()
                    del held[i]
                    continue
                if mode == "dribble" and progress[i] < len(request) - 2:
                    try:
                        sock.send(request[progress[i]:progress[i] + 1])
                        progress[i] += 1
                    except OSError:
                        pass
            if time.monotonic() >= next_report:
                print(f"held={len(held)} refused={refused}", flush=True)
                next_report += 1.0
            time.sleep(0.05)
    finally:
        for sock in held.values():
            sock.close()


def message(kind: str, size: int) -> bytes:
    """A ``ping`` with a long ``t``, or a ``config`` of unknown keys, ``size`` bytes long."""
    if kind == "churn":
        return b""
    if kind == "pings":
        head = '{"type": "ping", "t": "'
        return (head + "x" * max(size - len(head) - 2, 0) + '"}').encode()
    keys, text = 0, '{"type": "config"'
    while len(text) + 12 < size:  # 5,000 keys in 64 KB
        text += f', "k{keys}": 0'
        keys += 1
    return (text + "}").encode()


class Attacker:
    """One raw-socket connection that sends ``frame`` every ``period`` seconds."""

    def __init__(self, port: int, source: str, frame: bytes, period: float) -> None:
        self.port, self.source, self.frame, self.period = port, source, frame, period
        self.sock: socket.socket | None = None
        self.out = b""
        self.inbuf = bytearray()
        self.due = 0.0

    def connect(self) -> str | None:
        """Connect and upgrade (blocking, short); None, or why it failed (``503``, ...)."""
        try:
            sock = _connect(self.port, self.source)
        except OSError:
            return "connect"
        try:
            rest = _handshake(sock)
        except OSError as exc:  # ConnectionError("HTTP/1.1 503 Service Unavailable"), a reset
            sock.close()
            words = str(exc).split(" ")
            return words[1] if words[0].startswith("HTTP/") and len(words) > 1 else "1006"
        sock.setblocking(False)
        self.sock, self.inbuf = sock, bytearray(rest)
        self.out = build_frame(OP_TEXT, b'{"type": "pause"}')
        self.due = time.monotonic()
        return None

    def pump(self, now: float) -> int:
        """Queue the next message if due and nothing is pending; write what the socket takes.
        Returns the messages queued."""
        queued = 0
        if not self.out and now >= self.due:
            self.out, queued = self.frame, 1
            self.due = max(self.due + self.period, now - self.period)
        if self.out and self.sock is not None:
            try:
                n = self.sock.send(self.out)
                self.out = self.out[n:]
            except BlockingIOError:
                pass
            except OSError:
                pass
        return queued

    def read(self) -> int | None:
        """Read what arrived; the server's close code once it closed (1006 without a Close)."""
        assert self.sock is not None
        try:
            chunk = self.sock.recv(1 << 20)
        except BlockingIOError:
            return None
        except OSError:
            return 1006
        if not chunk:
            return 1006
        self.inbuf += chunk
        buf = self.inbuf
        while len(buf) >= 2:
            length, head = buf[1] & 0x7F, 2
            if length == 126:
                if len(buf) < 4:
                    break
                length, head = int.from_bytes(buf[2:4], "big"), 4
            elif length == 127:
                if len(buf) < 10:
                    break
                length, head = int.from_bytes(buf[2:10], "big"), 10
            if len(buf) < head + length:
                break
            if buf[0] & 0x0F == OP_CLOSE:
                return int.from_bytes(buf[head:head + 2], "big") if length >= 2 else 1005
            del buf[:head + length]
        return None

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def messages(kind: str, port: int, seconds: float, connections: int, addresses: int,
             rate: float, size: int) -> dict[str, Any]:
    """CONNECTIONS from ADDRESSES sources (127.0.0.2, ...) send KIND messages of SIZE bytes at
    RATE a second each for SECONDS, reconnecting when closed; prints ``STARTED`` once going.
    Returns the messages sent and the closes by code (``503``: refused, ``1006``: no Close)."""
    frame = build_frame(OP_TEXT, message(kind, size))
    attackers = [Attacker(port, f"127.0.0.{2 + i % addresses}", frame, 1.0 / (rate or 1))
                 for i in range(connections)]
    closes: dict[str, int] = {}
    sent = 0
    selector = selectors.DefaultSelector()
    deadline = time.monotonic() + seconds
    retry_at = {id(a): 0.0 for a in attackers}
    print("STARTED", flush=True)
    try:
        while (now := time.monotonic()) < deadline:
            for a in attackers:
                if a.sock is None and now >= retry_at[id(a)]:
                    failure = a.connect()
                    if failure is not None:
                        closes[failure] = closes.get(failure, 0) + 1
                        retry_at[id(a)] = now + 0.1
                    else:
                        selector.register(a.sock, selectors.EVENT_READ, a)  # type: ignore[arg-type]
                if a.sock is not None and kind == "churn":  # connect, close, again
                    selector.unregister(a.sock)
                    a.close()
                    closes["client"] = closes.get("client", 0) + 1
                elif a.sock is not None:
                    sent += a.pump(now)
            for key, _ in selector.select(0.005):
                a = key.data
                code = a.read()
                if code is not None:
                    closes[str(code)] = closes.get(str(code), 0) + 1
                    selector.unregister(a.sock)
                    a.close()
                    retry_at[id(a)] = time.monotonic() + 0.05
    finally:
        for a in attackers:
            a.close()
        selector.close()
    return {"sent": sent, "closes": closes}


def main(argv: list[str]) -> int:
    if argv[0] == "ping":
        counts = ping_flood(int(argv[1]), float(argv[2]), int(argv[3]))
        print(" ".join(f"{k}={v}" for k, v in counts.items()), flush=True)
    elif argv[0] == "messages":
        result = messages(argv[1], int(argv[2]), float(argv[3]), int(argv[4]), int(argv[5]),
                          float(argv[6]), int(argv[7]))
        print(json.dumps(result), flush=True)
    elif argv[0] == "hold":
        mode = argv[5] if len(argv) > 5 else "dribble"
        hold(int(argv[1]), float(argv[2]), int(argv[3]), argv[4], mode,
             int(argv[6]) if len(argv) > 6 else 1)
    else:
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
