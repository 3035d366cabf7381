"""Server CPU per viewer kind: N WebSocket, wss:// or MJPEG viewers, fan-out on and off.

``bench.py`` measures plain WebSocket viewers with a load generator that stamps and times every
frame. This script answers a narrower question for the other kinds of viewer: what does the
server spend on N of them, with the fan-out fast path (``Streamer(fast_fanout=True)``, the
default) and without it? For each (kind, fan-out) point it starts a ``Streamer("push")`` in
this process, fed 640x480 JPEGs at 30 fps with ``publish_jpeg`` (webcam-like, ~60 KB, so no
encode: only the fan-out is measured), and a drainer subprocess that opens N viewers and reads
everything they get (one thread per viewer for wss, one ``selectors`` loop otherwise). After a
3 s warm-up it reads the server's CPU (this process, the drainer excluded) over a 10 s window,
and the frames each viewer got.

Usage: ``python benchmarks/viewer_kinds.py [--clients 50] [--kinds ws,wss,mjpeg]``; needs the
``openssl`` command for the wss certificate. Prints one line per point and a table.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from camstream import Streamer  # noqa: E402

WARMUP_S, WINDOW_S, FPS = 3.0, 10.0, 30.0

DRAINER = r'''
import selectors, socket, ssl, sys, threading, time
port, n, kind, ca = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
seconds = float(sys.argv[5])
UPGRADE = (b"GET /?max_bytes=0 HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
           b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
           b"Sec-WebSocket-Version: 13\r\n\r\n")
MJPEG = b"GET /stream.mjpg HTTP/1.1\r\nHost: localhost\r\n\r\n"
received = [0] * n
def connect(i):
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    if kind == "wss":
        sock = ssl.create_default_context(cafile=ca).wrap_socket(sock, server_hostname="localhost")
    sock.sendall(MJPEG if kind == "mjpeg" else UPGRADE)
    return sock
socks = [connect(i) for i in range(n)]
print("READY", flush=True)
end = time.monotonic() + seconds
if kind == "wss":  # TLS reads in a thread each (decryption is the client's cost, not measured)
    def drain(i):
        buf = bytearray(1 << 20)
        socks[i].settimeout(0.5)
        while time.monotonic() < end:
            try:
                received[i] += socks[i].recv_into(buf)
            except (socket.timeout, ssl.SSLWantReadError):
                pass
    threads = [threading.Thread(target=drain, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
else:
    selector = selectors.DefaultSelector()
    for i, sock in enumerate(socks):
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ, i)
    buf = bytearray(1 << 20)
    while time.monotonic() < end:
        for key, _ in selector.select(0.5):
            try:
                received[key.data] += key.fileobj.recv_into(buf)
            except BlockingIOError:
                pass
print("BYTES", min(received), max(received), flush=True)
'''


def self_signed_cert(directory: str) -> tuple[str, str]:
    cert, key = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out",
         cert, "-days", "2", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"],
        check=True, capture_output=True,
    )
    return cert, key


def webcam_like_jpegs(count: int = 30) -> list[bytes]:
    """640x480 JPEGs of a noisy gradient with a frame number (~60 KB at quality 80)."""
    rng = np.random.default_rng(1)
    base = rng.integers(0, 40, (480, 640, 3), dtype=np.uint8)
    base += np.linspace(0, 200, 640, dtype=np.uint8)[None, :, None]
    jpegs = []
    for i in range(count):
        image = cv2.putText(base.copy(), str(i), (50, 200), 0, 4, (255, 255, 255), 5)
        jpegs.append(cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 80])[1].tobytes())
    return jpegs


def frames_sent(stats: dict[str, Any]) -> int:
    """Frames sent to the viewers connected now (WebSocket and MJPEG), from ``stats()``."""
    return (sum(c["frames_sent"] for c in stats["clients"])
            + sum(s["frames_sent"] for s in stats["http"]["mjpeg_streams"]))


def cpu_s() -> float:
    times = os.times()
    return times.user + times.system  # this process only (the drainer is a child)


def run_point(kind: str, fast: bool, clients: int, jpegs: list[bytes],
              cert: tuple[str, str]) -> dict[str, Any]:
    tls = {"certfile": cert[0], "keyfile": cert[1]} if kind == "wss" else {}
    streamer = Streamer("push", port=0, fps=FPS, fast_fanout=fast, max_clients=clients + 10,
                        max_connections_per_address=None, **tls).start()
    stop = threading.Event()

    def publish() -> None:
        deadline, i = time.monotonic(), 0
        while not stop.is_set():
            streamer.publish_jpeg(jpegs[i % len(jpegs)])
            i += 1
            deadline += 1 / FPS
            stop.wait(max(deadline - time.monotonic(), 0.0))

    publisher = threading.Thread(target=publish, name="bench-publisher", daemon=True)
    publisher.start()
    drainer = subprocess.Popen(
        [sys.executable, "-c", DRAINER, str(streamer.port), str(clients), kind, cert[0],
         str(WARMUP_S + WINDOW_S + 2)], stdout=subprocess.PIPE, text=True)
    try:
        assert drainer.stdout is not None
        if drainer.stdout.readline().strip() != "READY":
            raise RuntimeError("the drainer did not connect")
        time.sleep(WARMUP_S)  # the warm-up: a fixed part of the measurement, not a wait for state
        stats0, cpu0, t0 = streamer.stats(), cpu_s(), time.monotonic()
        time.sleep(WINDOW_S)  # the measurement window
        stats1, cpu1, t1 = streamer.stats(), cpu_s(), time.monotonic()
        drainer.wait(30)
    finally:
        if drainer.poll() is None:
            drainer.kill()
            drainer.wait(10)
        stop.set()
        publisher.join(5)
        streamer.stop()
    sent = frames_sent(stats1) - frames_sent(stats0)
    return {"kind": kind, "fanout": fast, "clients": clients, "jpeg_bytes": len(jpegs[0]),
            "server_cpu_pct": (cpu1 - cpu0) / (t1 - t0) * 100,
            "fps_per_viewer": sent / clients / (t1 - t0)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--kinds", default="ws,wss,mjpeg")
    args = parser.parse_args()
    jpegs = webcam_like_jpegs()
    rows = []
    with tempfile.TemporaryDirectory() as directory:
        cert = self_signed_cert(directory)
        for kind in args.kinds.split(","):
            for fast in (False, True):
                row = run_point(kind, fast, args.clients, jpegs, cert)
                rows.append(row)
                print(f"{kind} N={args.clients} fan-out {'on' if fast else 'off'}: server CPU "
                      f"{row['server_cpu_pct']:.1f} % of a core, {row['fps_per_viewer']:.2f} fps "
                      f"a viewer", flush=True)
    print(f"\n| viewers ({len(jpegs[0]) // 1000} KB JPEGs, 30 fps) | N | server CPU, fan-out off "
          "| on | fps a viewer, off / on |\n|---|---|---|---|---|")
    for off, on in zip(rows[::2], rows[1::2]):
        print(f"| {off['kind']} | {off['clients']} | {off['server_cpu_pct']:.1f} % "
              f"| {on['server_cpu_pct']:.1f} % | {off['fps_per_viewer']:.2f} / "
              f"{on['fps_per_viewer']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
