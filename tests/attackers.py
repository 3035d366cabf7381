"""Hostile clients for the hardening tests and measurements (issue #11), over real sockets.

Run as a script so attackers do not share the server's GIL::

    python tests/attackers.py ping PORT SECONDS CLIENTS
    python tests/attackers.py hold PORT SECONDS SOCKETS FIRST_ADDRESS [MODE [PER_ADDRESS]]

``ping``: CLIENTS connections (from 127.0.10.1, 127.0.10.2, ...) each send WebSocket pings as
fast as the socket takes them (and read the pongs), reconnecting when closed; prints
``closes_1008=N connections=M``.
``hold``: SOCKETS connections from consecutive source addresses starting at FIRST_ADDRESS
(127.0.0.2, 127.0.0.3, ...; PER_ADDRESS from each, default 1) that dribble a request
one byte at a time (MODE ``dribble``) or complete a WebSocket handshake and then idle (``idle``),
reopening every socket the server closes; prints ``held=N refused=M`` every second and ends
after SECONDS. Every loop is bounded by SECONDS; every socket is closed.
"""

from __future__ import annotations

import ipaddress
import socket
import sys
import threading
import time

from wsraw import OP_PING, build_frame, upgrade_request

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


def main(argv: list[str]) -> int:
    if argv[0] == "ping":
        counts = ping_flood(int(argv[1]), float(argv[2]), int(argv[3]))
        print(" ".join(f"{k}={v}" for k, v in counts.items()), flush=True)
    elif argv[0] == "hold":
        mode = argv[5] if len(argv) > 5 else "dribble"
        hold(int(argv[1]), float(argv[2]), int(argv[3]), argv[4], mode,
             int(argv[6]) if len(argv) > 6 else 1)
    else:
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
