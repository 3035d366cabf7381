"""The deployment of docs/scaling.md, for real: origin -> 2 relays -> nginx -> 40 viewers.

Everything runs as it would in production, on 127.0.0.1 ports: camstream processes started with
``python -m camstream`` (the origin streams the test pattern at 320x240; each relay re-serves
the origin's /stream.mjpg with ``--trusted-proxy 127.0.0.2`` and a token), and Debian's nginx
(a non-daemon process with the shipped deploy/nginx/camstream.conf, only its addresses, name,
certificate and log path rewritten; ``proxy_bind 127.0.0.2`` so the relays can tell nginx from
a test client on 127.0.0.1). Viewers are raw sockets: WebSocket and MJPEG, plain and TLS.
Also here: ``systemd-analyze verify`` of the unit files and ``camstream --check-config``.
Tests of the module run in order on one topology; the last ones kill a relay and the origin.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest
from conftest import SLACK, TIMEOUT, stop_process, wait_until
from helpers import cpu_seconds
from wsraw import OP_BINARY, OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, RawClient

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
TOKEN = "relay-s3cret"
PROXY_ADDRESS = "127.0.0.2"  # nginx talks to the relays from here (proxy_bind)
N_VIEWERS = 40
MIN_FPS = 29.0 / SLACK  # the deployment guide's figure, at the default TIMEOUT
WINDOW_S = 4.0
RECONNECT_S = 2.0 * SLACK


def find_nginx() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None
    )


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def camstream_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "CAMSTREAM_TOKEN"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def run_camstream(log: Path, *args: str, token: str | None = None) -> subprocess.Popen:
    env = camstream_env()
    if token:
        env["CAMSTREAM_TOKEN"] = token  # as the unit files pass it: not on the command line
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "camstream", "--log-level", "WARNING", *args],
            env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )


def http_get(port: int, target: str, headers: dict[str, str] | None = None,
             context: ssl.SSLContext | None = None) -> tuple[int, bytes]:
    """One GET over a raw socket (TLS with SNI ``localhost`` if ``context``)."""
    with RawClient(port, timeout=TIMEOUT) as client:
        if context is not None:
            client.sock = context.wrap_socket(client.sock, server_hostname="localhost")
        lines = [f"GET {target} HTTP/1.1", f"Host: localhost:{port}", "Connection: close"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        client.send(("\r\n".join(lines) + "\r\n\r\n").encode())
        status, _, body = client.read_http()
        return status, body


def healthy(port: int) -> bool:
    try:
        return http_get(port, "/healthz")[0] == 200
    except OSError:
        return False


def stats(port: int) -> dict:
    status, body = http_get(port, "/stats.json", {"Authorization": f"Bearer {TOKEN}"})
    assert status == 200, (status, body)
    return json.loads(body)


def viewer_addresses(info: dict) -> list[str]:
    return [c["address"] for c in info["clients"]] + [
        s["address"] for s in info["http"]["mjpeg_streams"]
    ]


def viewer_count(info: dict) -> int:
    return info["client_count"] + info["http"]["mjpeg_active"]


# Viewers


@dataclass
class Viewer:
    """One viewer that watches through nginx and reconnects when it is closed, like an app."""

    port: int
    kind: str  # "ws" or "mjpeg"
    context: ssl.SSLContext | None
    frames: list[float] = field(default_factory=list)  # monotonic arrival times
    events: list[tuple[float, str]] = field(default_factory=list)
    closes: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)
    client: RawClient | None = None

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                self._watch()
            except (OSError, EOFError, ssl.SSLError, ValueError, AssertionError) as exc:
                if self.stopping.is_set():
                    return
                self.errors.append(repr(exc))
            self.closes.append(time.monotonic())
            self.stopping.wait(0.05)  # then reconnect

    def stop(self) -> None:
        self.stopping.set()
        client = self.client
        if client is not None:
            with _ignored():
                client.sock.shutdown(socket.SHUT_RDWR)

    def _connect(self) -> RawClient:
        client = RawClient(self.port, timeout=TIMEOUT)
        if self.context is not None:
            client.sock = self.context.wrap_socket(client.sock, server_hostname="localhost")
        self.client = client
        return client

    def _watch(self) -> None:
        with self._connect() as client:
            if self.kind == "ws":
                client.handshake(f"/?max_bytes=0&token={TOKEN}",
                                 extra={"Host": f"localhost:{self.port}"})
                self._read_ws(client)
            else:  # HTTP/1.0 to nginx: the stream comes unchunked, as the relay writes it
                client.send(f"GET /stream.mjpg?token={TOKEN} HTTP/1.0\r\n"
                            f"Host: localhost:{self.port}\r\n\r\n".encode())
                status, headers, _ = client.read_http()
                assert status == 200, status
                assert headers["content-type"].startswith("multipart/x-mixed-replace")
                self._read_mjpeg(client)

    def _read_ws(self, client: RawClient) -> None:
        while not self.stopping.is_set():
            _, opcode, payload = client.recv_frame()
            if opcode == OP_BINARY:
                assert payload[:2] == b"\xff\xd8", "not a JPEG"
                self.frames.append(time.monotonic())
            elif opcode == OP_TEXT:
                self.events.append((time.monotonic(), json.loads(payload)["type"]))
            elif opcode == OP_PING:
                client.send_frame(OP_PONG, payload)
            elif opcode == OP_CLOSE:
                return

    def _read_mjpeg(self, client: RawClient) -> None:
        while not self.stopping.is_set():
            while b"\r\n\r\n" not in client.buf:
                chunk = client.sock.recv(65536)
                if not chunk:
                    return
                client.buf += chunk
            head, client.buf = client.buf.split(b"\r\n\r\n", 1)
            length = re.search(rb"Content-Length: (\d+)", head)
            assert length is not None, head
            jpeg = client.read_exact(int(length.group(1)) + 2)  # the part ends with CRLF
            assert jpeg[:2] == b"\xff\xd8", "not a JPEG"
            self.frames.append(time.monotonic())

    def frames_between(self, start: float, end: float) -> int:
        return sum(1 for t in list(self.frames) if start <= t < end)

    def event_types(self) -> list[str]:
        return [kind for _, kind in list(self.events)]


class _ignored:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return True


# The topology


@dataclass
class Topology:
    tmp: Path
    origin_port: int
    relay_ports: list[int]
    http_port: int
    tls_port: int
    context: ssl.SSLContext
    origin: subprocess.Popen
    relays: list[subprocess.Popen]
    nginx: subprocess.Popen
    viewers: list[Viewer] = field(default_factory=list)
    threads: list[threading.Thread] = field(default_factory=list)

    def start_origin(self) -> subprocess.Popen:
        self.origin = run_camstream(
            self.tmp / "origin.log", "--source", "test", "--width", "320", "--height", "240",
            "--fps", "30", "--port", str(self.origin_port),
        )
        return self.origin

    def log(self, name: str) -> str:
        path = self.tmp / name
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""


def make_certificate(folder: Path) -> tuple[Path, Path]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl command not found (apt-get install openssl)")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"]
        + ["-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost"]
        + ["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )
    return cert, key


def replace_line(text: str, old: str, new: str) -> str:
    """Replace the one line whose content is ``old`` (the shipped file must still have it)."""
    pattern = re.compile(rf"^([ \t]*){re.escape(old)}[ \t]*$", re.MULTILINE)
    result, n = pattern.subn(lambda m: m.group(1) + new, text)
    assert n == 1, f"deploy/nginx/camstream.conf: expected one line {old!r}, found {n}"
    return result


def nginx_config(tmp: Path, http_port: int, tls_port: int, relay_ports: list[int],
                 cert: Path, key: Path) -> Path:
    """The shipped site file with this machine's ports, name and paths; a main file around it."""
    site = (DEPLOY / "nginx" / "camstream.conf").read_text()
    for old, new in [
        ("listen 443 ssl default_server;", f"listen 127.0.0.1:{tls_port} ssl default_server;"),
        ("listen 80 default_server;", f"listen 127.0.0.1:{http_port} default_server;"),
        ("listen 443 ssl;", f"listen 127.0.0.1:{tls_port} ssl;"),
        ("listen 80;", f"listen 127.0.0.1:{http_port};"),
        ("server_name camera.example.com;", "server_name localhost;"),
        ("ssl_certificate     /etc/ssl/camstream/fullchain.pem;", f"ssl_certificate {cert};"),
        ("ssl_certificate_key /etc/ssl/camstream/privkey.pem;", f"ssl_certificate_key {key};"),
        ("access_log /var/log/nginx/camstream.access.log camstream;",
         f"access_log {tmp}/access.log camstream;"),
        ("server 127.0.0.1:8801 max_fails=1 fail_timeout=5s;",
         f"server 127.0.0.1:{relay_ports[0]} max_fails=1 fail_timeout=5s;"),
        ("server 127.0.0.1:8802 max_fails=1 fail_timeout=5s;",
         f"server 127.0.0.1:{relay_ports[1]} max_fails=1 fail_timeout=5s;"),
    ]:
        site = replace_line(site, old, new)
    (tmp / "camstream.conf").write_text(site)
    main = tmp / "nginx.conf"
    main.write_text(f"""
daemon off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    proxy_bind {PROXY_ADDRESS};
    include {tmp}/camstream.conf;
}}
""")
    return main


@pytest.fixture(scope="module")
def topology(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    nginx = find_nginx()
    if nginx is None:
        pytest.skip("nginx not found: apt-get install nginx-light (.ci/run installs it)")
    tmp = tmp_path_factory.mktemp("deploy")
    os.chmod(tmp, 0o755)  # nginx workers run as nobody when the test runs as root
    cert, key = make_certificate(tmp)
    context = ssl.create_default_context(cafile=str(cert))
    origin_port, relay_a, relay_b, http_port, tls_port = free_ports(5)
    processes: list[subprocess.Popen] = []
    topo: Topology | None = None
    try:
        topo = Topology(tmp, origin_port, [relay_a, relay_b], http_port, tls_port, context,
                        origin=None, relays=[], nginx=None)  # type: ignore[arg-type]
        processes.append(topo.start_origin())
        assert wait_until(lambda: healthy(origin_port), 6 * TIMEOUT, 0.1), topo.log("origin.log")
        upstream = f"http://127.0.0.1:{origin_port}/stream.mjpg"
        for i, port in enumerate(topo.relay_ports):
            relay = run_camstream(
                tmp / f"relay{i}.log", "--source", upstream, "--fps", "30", "--port", str(port),
                "--trusted-proxy", PROXY_ADDRESS,
                # Every test viewer is 127.0.0.1 behind nginx: one "client" with 40 connections.
                "--max-connections-per-address", "0", token=TOKEN,
            )
            processes.append(relay)
            topo.relays.append(relay)
        for i, port in enumerate(topo.relay_ports):
            assert wait_until(lambda p=port: healthy(p), 6 * TIMEOUT, 0.1), topo.log(
                f"relay{i}.log"
            )
        config = nginx_config(tmp, http_port, tls_port, topo.relay_ports, cert, key)
        with open(tmp / "nginx.out", "wb") as out:
            topo.nginx = subprocess.Popen(
                [nginx, "-p", str(tmp), "-c", str(config), "-e", str(tmp / "error.log")],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
        processes.append(topo.nginx)
        assert wait_until(lambda: healthy(http_port) or topo.nginx.poll() is not None,
                          TIMEOUT, 0.05) and topo.nginx.poll() is None, (
            topo.log("nginx.out") + topo.log("error.log")
        )
        # 40 viewers: half WebSocket, half MJPEG; every fourth of each over TLS.
        for i in range(N_VIEWERS):
            tls = i % 4 == 0 or i % 4 == 1
            viewer = Viewer(tls_port if tls else http_port, "ws" if i % 2 == 0 else "mjpeg",
                            context if tls else None)
            thread = threading.Thread(target=viewer.run, name=f"deploy-viewer-{i}", daemon=True)
            topo.viewers.append(viewer)
            topo.threads.append(thread)
            thread.start()
        assert wait_until(lambda: all(len(v.frames) >= 5 for v in topo.viewers), 4 * TIMEOUT,
                          0.05), [len(v.frames) for v in topo.viewers]
        yield topo
    finally:
        if topo is not None:
            for viewer in topo.viewers:
                viewer.stop()
            for thread in topo.threads:
                thread.join(TIMEOUT)
            assert not any(t.is_alive() for t in topo.threads), "viewer threads still running"
            processes = [topo.origin, *topo.relays, topo.nginx, *processes]
        for process in {id(p): p for p in processes if p is not None}.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                with _ignored():
                    process.wait(TIMEOUT)
            stop_process(process)


def test_40_viewers_through_nginx_each_get_29_fps(topology: Topology) -> None:
    processes = {"origin": topology.origin, "relay A": topology.relays[0],
                 "relay B": topology.relays[1]}
    cpu_before = {name: cpu_seconds(p.pid) for name, p in processes.items()}
    start = time.monotonic()
    origin_before = stats(topology.origin_port)
    time.sleep(WINDOW_S)  # the measurement window itself; nothing to wait for
    end = time.monotonic()
    cpu = {name: f"{(cpu_seconds(p.pid) - cpu_before[name]) / (end - start):.0%}"
           for name, p in processes.items()}
    rates = [v.frames_between(start, end) / WINDOW_S for v in topology.viewers]
    print(f"fps per viewer: min {min(rates):.2f}, mean {sum(rates) / len(rates):.2f}; "
          f"CPU (one core = 100 %): {cpu}")
    slow = [(i, v.kind, v.context is not None, round(r, 1))
            for i, (v, r) in enumerate(zip(topology.viewers, rates)) if r < MIN_FPS]
    assert not slow, f"viewers under {MIN_FPS} fps (index, kind, tls, fps): {slow}"
    assert all(not v.closes for v in topology.viewers), [v.errors for v in topology.viewers]
    # The origin serves the two relays only, however many viewers there are.
    for info in (origin_before, stats(topology.origin_port)):
        assert viewer_count(info) == 2, info
    # Both relays carry viewers (least_conn), and they are all of them.
    counts = [viewer_count(stats(p)) for p in topology.relay_ports]
    assert sum(counts) == N_VIEWERS and min(counts) >= N_VIEWERS // 4, counts


def test_relays_do_not_encode_for_native_viewers(topology: Topology) -> None:
    before = [stats(p) for p in topology.relay_ports]
    # Thirty new frames through each relay to its viewers.
    assert wait_until(lambda: all(
        stats(p)["frames_captured"] >= b["frames_captured"] + 30
        for p, b in zip(topology.relay_ports, before)
    ), 3 * TIMEOUT)
    after = [stats(p) for p in topology.relay_ports]
    encoded = [a["frames_encoded"] - b["frames_encoded"] for a, b in zip(after, before)]
    decoded = [a["decodes"] - b["decodes"] for a, b in zip(after, before)]
    assert encoded == [0, 0] and decoded == [0, 0], (encoded, decoded)


def test_relays_see_the_viewers_address_not_nginx_s(topology: Topology) -> None:
    """X-Forwarded-For from nginx (127.0.0.2, trusted) names the viewer (127.0.0.1)."""
    for port in topology.relay_ports:
        addresses = viewer_addresses(stats(port))
        assert addresses and set(addresses) == {"127.0.0.1"}, addresses


def test_access_rules_hold_through_the_proxy(topology: Topology) -> None:
    http, tls, ctx = topology.http_port, topology.tls_port, topology.context
    # Token: required through nginx, in the query or as a Bearer header.
    assert http_get(http, "/stream.mjpg")[0] == 401
    assert http_get(tls, "/snapshot.jpg?token=wrong", context=ctx)[0] == 401
    status, body = http_get(tls, "/snapshot.jpg", {"Authorization": f"Bearer {TOKEN}"}, ctx)
    assert status == 200 and body[:2] == b"\xff\xd8"
    assert ws_close(http, "/") == (1008, b"token required")
    # Origin: the page nginx serves (https://localhost:<tls port>) is same-origin for the relay,
    # thanks to X-Forwarded-Host; another site is not.
    own = {"Origin": f"https://localhost:{tls}"}
    assert ws_first_message(tls, f"/?token={TOKEN}", own, ctx)["type"] == "metadata"
    evil = {"Origin": "https://evil.example"}
    assert ws_close(tls, f"/?token={TOKEN}", evil, ctx) == (1008, b"origin not allowed")
    assert http_get(http, f"/snapshot.jpg?token={TOKEN}", evil)[0] == 403
    # Host: nginx answers only for its server_name (DNS rebinding stops at the door).
    with RawClient(http, timeout=TIMEOUT) as client:
        client.send(b"GET /healthz HTTP/1.0\r\nHost: evil.example\r\n\r\n")
        assert client.expect_eof()
    unverified = ssl.create_default_context()
    unverified.check_hostname, unverified.verify_mode = False, ssl.CERT_NONE
    with RawClient(tls, timeout=TIMEOUT) as client:
        with pytest.raises(ssl.SSLError, match="UNRECOGNIZED_NAME"):  # not even a certificate
            unverified.wrap_socket(client.sock, server_hostname="evil.example")
    # /healthz needs no token through nginx either.
    assert http_get(http, "/healthz") == (200, b"ok\n")


def test_forged_forwarding_headers_gain_nothing(topology: Topology) -> None:
    forged = {"X-Forwarded-For": "6.6.6.6", "X-Forwarded-Host": f"localhost:{topology.tls_port}",
              "X-Forwarded-Proto": "https", "Forwarded": "for=6.6.6.6"}
    relay = topology.relay_ports[0]
    # Through nginx: the forged entry is left of what nginx appends, so it is not believed.
    with ws_open(topology.http_port, f"/?token={TOKEN}", forged) as client:
        assert next_message(client)["type"] == "metadata"
        for port in topology.relay_ports:
            assert "6.6.6.6" not in viewer_addresses(stats(port))
    # Straight to a relay (from 127.0.0.1, not the trusted 127.0.0.2): headers ignored, so the
    # forged host does not make a foreign page same-origin ...
    origin = {"Origin": f"https://localhost:{topology.tls_port}"}
    assert ws_close(relay, f"/?token={TOKEN}", {**forged, **origin}) == (
        1008, b"origin not allowed"
    )
    # ... the token is still required ...
    assert http_get(relay, "/snapshot.jpg", forged)[0] == 401
    # ... and the relay counts the real address.
    with ws_open(relay, f"/?token={TOKEN}", forged) as client:
        assert next_message(client)["type"] == "metadata"
        assert "6.6.6.6" not in viewer_addresses(stats(relay))


def test_killing_a_relay_moves_its_viewers_to_the_other_within_2s(topology: Topology) -> None:
    victim_port, survivor_port = topology.relay_ports
    victim = topology.relays[0]
    on_victim = viewer_count(stats(victim_port))
    closes_before = [len(v.closes) for v in topology.viewers]
    victim.kill()
    killed_at = time.monotonic()
    victim.wait(TIMEOUT)
    moved = lambda: viewer_count(stats(survivor_port)) == N_VIEWERS  # noqa: E731
    assert wait_until(moved, 2 * TIMEOUT, 0.05), viewer_count(stats(survivor_port))
    affected = [i for i, v in enumerate(topology.viewers) if len(v.closes) > closes_before[i]]
    assert len(affected) == on_victim, (len(affected), on_victim)
    viewers = topology.viewers
    assert wait_until(lambda: all(
        viewers[i].frames and viewers[i].frames[-1] > viewers[i].closes[-1] for i in affected
    ), 2 * TIMEOUT, 0.05)
    gaps = []
    for i in affected:
        viewer = topology.viewers[i]
        closed = viewer.closes[closes_before[i]]
        assert closed - killed_at < 1.0 * SLACK, "the viewer was not closed at once"
        first = next(t for t in viewer.frames if t > closed)
        gaps.append(round(first - closed, 2))
    print(f"relay killed: {len(gaps)} viewers moved; close to first frame again: "
          f"max {max(gaps)} s, all {sorted(gaps)}")
    assert max(gaps) <= RECONNECT_S, f"seconds from close to first frame again: {gaps}"


def test_restarting_the_origin_reports_lost_then_restored_to_every_viewer(
    topology: Topology,
) -> None:
    ws_viewers = [v for v in topology.viewers if v.kind == "ws"]
    events_before = [len(v.events) for v in ws_viewers]
    old = topology.origin
    old.send_signal(signal.SIGTERM)
    old.wait(TIMEOUT)
    stop_process(old)
    stopped_at = time.monotonic()
    topology.start_origin()
    assert wait_until(lambda: healthy(topology.origin_port), 6 * TIMEOUT, 0.1), topology.log(
        "origin.log"
    )

    def lost_then_restored(viewer: Viewer, before: int) -> bool:
        kinds = viewer.event_types()[before:]
        return "camera_lost" in kinds and "camera_restored" in kinds[kinds.index("camera_lost"):]

    assert wait_until(
        lambda: all(lost_then_restored(v, n) for v, n in zip(ws_viewers, events_before)),
        6 * TIMEOUT, 0.1,
    ), [v.event_types()[n:] for v, n in zip(ws_viewers, events_before)]
    resumed_after = time.monotonic()
    print(f"origin restarted: every WebSocket viewer got camera_lost then camera_restored "
          f"{resumed_after - stopped_at:.2f} s after the stop")
    # Frames flow again to every viewer, WebSocket and MJPEG alike, through the same connection
    # or a new one.
    assert wait_until(
        lambda: all(v.frames_between(resumed_after, float("inf")) >= 10 for v in topology.viewers),
        2 * TIMEOUT, 0.05,
    ), [v.frames_between(resumed_after, float("inf")) for v in topology.viewers]
    assert all(v.frames_between(stopped_at, float("inf")) for v in topology.viewers)


# WebSocket helpers for single requests


def ws_open(port: int, path: str, headers: dict[str, str] | None = None,
            context: ssl.SSLContext | None = None) -> RawClient:
    client = RawClient(port, timeout=TIMEOUT)
    if context is not None:
        client.sock = context.wrap_socket(client.sock, server_hostname="localhost")
    client.handshake(path, extra={"Host": f"localhost:{port}", **(headers or {})})
    return client


def next_message(client: RawClient) -> dict:
    for _ in range(1000):
        _, opcode, payload = client.recv_frame()
        if opcode == OP_TEXT:
            return json.loads(payload)
    raise AssertionError("no text message")


def ws_first_message(port: int, path: str, headers: dict[str, str] | None = None,
                     context: ssl.SSLContext | None = None) -> dict:
    with ws_open(port, path, headers, context) as client:
        return next_message(client)


def ws_close(port: int, path: str, headers: dict[str, str] | None = None,
             context: ssl.SSLContext | None = None) -> tuple[int | None, bytes]:
    with ws_open(port, path, headers, context) as client:
        return client.recv_close()


# systemd units and --check-config (no topology needed)


UNITS = ["camstream.service", "camstream-relay@.service"]


def unit_settings(name: str) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in (DEPLOY / "systemd" / name).read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


@pytest.mark.parametrize("name", UNITS)
def test_unit_files_have_the_hardening_the_docs_promise(name: str) -> None:
    s = unit_settings(name)
    for key, value in [
        ("Restart", "on-failure"), ("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"),
        ("PrivateTmp", "yes"), ("ProtectHome", "yes"), ("DynamicUser", "yes"),
        ("KillSignal", "SIGTERM"), ("CapabilityBoundingSet", ""),
    ]:
        assert s.get(key) == [value], (key, s.get(key))
    assert s["User"][0].startswith("camstream")
    assert "--check-config" in s["ExecStartPre"][0]
    if name == "camstream.service":
        assert s["SupplementaryGroups"] == ["video"]
        assert s["DeviceAllow"] == ["char-video4linux rw"]
    else:
        assert s["PrivateDevices"] == ["yes"]
        assert "--trusted-proxy 127.0.0.1" in s["ExecStart"][0]


def test_systemd_analyze_verify_accepts_the_unit_files(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not found: apt-get install systemd (.ci/run installs it)")
    # verify insists the ExecStart binary exists: point the units at a stand-in executable.
    binary = tmp_path / "camstream"
    binary.write_text("#!/bin/sh\nexit 0\n")
    binary.chmod(0o755)
    for name in UNITS:
        text = (DEPLOY / "systemd" / name).read_text()
        assert "/opt/camstream/bin/camstream" in text
        (tmp_path / name).write_text(text.replace("/opt/camstream/bin/camstream", str(binary)))
    shutil.copy(tmp_path / "camstream-relay@.service", tmp_path / "camstream-relay@8801.service")
    names = [str(tmp_path / n) for n in [*UNITS, "camstream-relay@8801.service"]]
    result = subprocess.run([analyze, "verify", *names], capture_output=True, text=True,
                            timeout=60, cwd=tmp_path)
    # verify exits 0 on unknown keys and bad values too; it only warns: no output is the pass.
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), (
        result.stdout + result.stderr
    )


def test_systemd_analyze_verify_would_catch_a_bad_unit(tmp_path: Path) -> None:
    """The check above can fail: a misspelt option makes verify speak."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not found: apt-get install systemd (.ci/run installs it)")
    text = (DEPLOY / "systemd" / "camstream.service").read_text()
    text = text.replace("/opt/camstream/bin/camstream", "/bin/true")
    bad = tmp_path / "bad.service"
    bad.write_text(text.replace("ProtectSystem=strict", "ProtectSystem=strickt"))
    result = subprocess.run([analyze, "verify", str(bad)], capture_output=True, text=True,
                            timeout=60, cwd=tmp_path)
    assert "strickt" in result.stdout + result.stderr


def check_config(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "camstream", "--check-config", *args], env=camstream_env(),
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )


def exec_args(name: str, key: str, instance: str = "8801") -> list[str]:
    """The arguments of a unit's ``key`` line with its default Environment= substituted."""
    s = unit_settings(name)
    line = s[key][0]
    env = dict(re.findall(r'"?(\w+)=([^"]*)"?', " ".join(s.get("Environment", []))))
    line = line.replace("%i", instance)
    line = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: env.get(m.group(1) or m.group(2), ""), line)
    return line.split()[1:]


@pytest.mark.parametrize("name", UNITS)
def test_the_units_own_check_config_line_passes(name: str) -> None:
    args = exec_args(name, "ExecStartPre")
    assert args[0] == "--check-config"
    result = check_config(*args[1:])
    assert (result.returncode, result.stdout.strip()) == (0, "camstream: configuration OK"), (
        result.stderr
    )
    assert exec_args(name, "ExecStart") == args[1:]  # it checks what it will start


@pytest.mark.parametrize("args, words", [
    (["--port", "70000"], "port"),
    (["--quality", "0"], "quality"),
    (["--fps", "nan"], "fps"),
    (["--trusted-proxy", "nginx"], "trusted proxy"),
    (["--trusted-proxy", "10.0.0.1/8"], "trusted proxy"),
    (["--source", "/nonexistent/clip.avi"], "no such readable file"),
    (["--keyfile", "key.pem"], "--keyfile needs --certfile"),
    (["--certfile", "/etc/hostname"], "TLS"),
    (["--port", "x" * 10000], "--port"),
    (["--no-such-option"], "unrecognized"),
    (["--token", ""], "token"),
    (["--max-clients", "-1"], "--max-clients"),  # 0 is "no limit"
    (["--max-bytes", "5"], "--max-bytes"),
    (["--source", "push"], "--source push"),
])
def test_check_config_prints_one_error_line_and_exits_1(args: list[str], words: str) -> None:
    result = check_config("--source", "test", *args)  # a later --source wins
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("camstream: error: "), result.stderr
    assert words in lines[0]


def test_check_config_opens_no_source_and_no_port(tmp_path: Path) -> None:
    """A relay's upstream may be down at boot and the port may still be held: neither matters."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        result = check_config("--source", f"http://127.0.0.1:{free_ports(1)[0]}/stream.mjpg",
                              "--port", str(port))
    assert (result.returncode, result.stdout.strip()) == (0, "camstream: configuration OK")
