"""Adaptive delivery (issue 18) behind nginx: a viewer on a slow link adapts through the proxy.

The deployment of docs/scaling.md in small: Debian's nginx (a non-daemon process with the
shipped deploy/nginx/camstream.conf, only its addresses, name and log path rewritten) listens on
the host side of a private test network (``tests/netns.py``) and proxies to a camstream
``Streamer`` on 127.0.0.1 that trusts it (``trusted_proxies=["127.0.0.1"]``, as the guide's
``--trusted-proxy 127.0.0.1``). Each viewer is a real WebSocket client in its own network
namespace behind ``tc tbf`` at 2 Mbit/s (``test_adaptive.Viewer``), so nginx, not camstream,
writes to the slow link: camstream sees only nginx reading slowly once nginx's buffers are
full, which counts as the link (``ClientView.via_proxy``; see ``camstream.delivery.adapt``).

The tests assert behaviour, not figures: the viewer behind nginx steps down (a ``metadata`` with
a rung below the top and its reason, then smaller frames), every frame whole, in order and
announced; with ``adapt=off`` it gets the camera's own bytes (frames skipped) as before.
A second test, an expected failure, shows a known limit: probes read the rate of the hop to
nginx, not the viewer's link. Figures (fps, latency, on and off) are in docs/scaling.md.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import TIMEOUT, stop_process, wait_until
from netns import SlowLinks, shaped_links
from test_adaptive import (
    Viewer,
    check_stream,
    client_of_stats,
    frames_to,
    linux_only,
    serving,
    sha,
    viewers_running,
    webcam_jpegs,
)
from test_deploy import DEPLOY, find_nginx, replace_line

RATE_MBIT = 2.0  # 720p frames of ~120 KB at 30 fps need ~30 Mbit/s: this carries ~2 fps
PROXY = "127.0.0.1"  # nginx's address as camstream sees it (no proxy_bind)


@pytest.fixture(scope="module")
def jpegs_720p() -> list[bytes]:
    return webcam_jpegs(1280, 720, 89)  # as test_adaptive's: ~120 KB each


@pytest.fixture
def slow_links() -> Iterator[SlowLinks]:
    with shaped_links() as links:
        yield links


@pytest.fixture
def nginx_binary() -> str:
    nginx = find_nginx()
    if nginx is None:
        pytest.skip("nginx not found: apt-get install nginx-light (.ci/run installs it)")
    return nginx


def free_port(host: str) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def nginx_config(tmp: Path, host: str, port: int, upstream_port: int,
                 listen_options: str = "", server_extra: str = "") -> Path:
    """The shipped site file listening on ``host:port`` (plain HTTP only) in front of
    ``127.0.0.1:upstream_port``; ``listen_options`` go on its (first) ``listen`` and
    ``server_extra`` into its ``server {}`` (settings tried against nginx's buffers)."""
    site = (DEPLOY / "nginx" / "camstream.conf").read_text()
    listen = f"listen {host}:{port}"
    for old, new in [
        ("listen 443 ssl default_server;", "# no TLS in this test"),
        ("listen 80 default_server;", f"{listen} default_server {listen_options};"),
        ("listen 443 ssl;", "# no TLS in this test"),
        ("listen 80;", f"{listen};"),
        ("server_name camera.example.com;", f"server_name {host};"),
        ("ssl_certificate     /etc/ssl/camstream/fullchain.pem;", "# no certificate"),
        ("ssl_certificate_key /etc/ssl/camstream/privkey.pem;", "# no key"),
        ("access_log /var/log/nginx/camstream.access.log camstream;",
         f"access_log {tmp}/access.log camstream; {server_extra}"),
        ("server 127.0.0.1:8801 max_fails=1 fail_timeout=5s;",
         f"server 127.0.0.1:{upstream_port};"),
        ("server 127.0.0.1:8802 max_fails=1 fail_timeout=5s;", "# one upstream"),
    ]:
        site = replace_line(site, old, new)
    (tmp / "camstream.conf").write_text(site)
    main = tmp / "nginx.conf"
    temp_paths = "\n".join(
        f"    {kind}_temp_path {tmp}/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    main.write_text(
        f"daemon off;\nworker_processes 1;\npid {tmp}/nginx.pid;\nerror_log {tmp}/error.log warn;\n"
        f"events {{ worker_connections 64; }}\n"
        f"http {{\n{temp_paths}\n    include {tmp}/camstream.conf;\n}}\n"
    )
    return main


@contextlib.contextmanager
def nginx_in_front(nginx: str, tmp: Path, host: str, upstream_port: int,
                   **settings: str) -> Iterator[int]:
    """nginx on ``host`` (a free port: yielded) proxying to ``upstream_port``; stopped after."""
    os.chmod(tmp, 0o755)  # nginx workers run as nobody when the test runs as root
    port = free_port(host)
    config = nginx_config(tmp, host, port, upstream_port, **settings)
    with open(tmp / "nginx.out", "wb") as out:
        process = subprocess.Popen(
            [nginx, "-p", str(tmp), "-c", str(config), "-e", str(tmp / "error.log")],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )

    def listening() -> bool:
        with contextlib.suppress(OSError), socket.create_connection((host, port), 0.5):
            return True
        return process.poll() is not None

    try:
        assert wait_until(listening, TIMEOUT, 0.05) and process.poll() is None, (
            (tmp / "nginx.out").read_text() + (tmp / "error.log").read_text()
        )
        yield port
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(TIMEOUT)
        stop_process(process)


@linux_only
def test_a_viewer_behind_nginx_on_a_slow_link_adapts(
    slow_links: SlowLinks, jpegs_720p: list[bytes], nginx_binary: str, tmp_path: Path
) -> None:
    """Two viewers at 2 Mbit/s, both through nginx: the adaptive one steps down (by its
    backlog or the link's rate: nginx reading slowly is the link) to smaller frames, every frame
    whole, in order, announced; the one with ``adapt=off`` gets the camera's own bytes, frames
    skipped. camstream knows both by their own addresses (X-Forwarded-For from nginx)."""
    host = slow_links.host_address
    lane, off_lane = slow_links.lane(RATE_MBIT), slow_links.lane(RATE_MBIT)
    published = {sha(j) for j in jpegs_720p}
    with serving(PROXY, jpegs_720p, trusted_proxies=[PROXY]) as streamer, \
            nginx_in_front(nginx_binary, tmp_path, host, streamer.port) as port:
        url = f"ws://{host}:{port}/?max_bytes=0&frame_info=1"
        viewer = Viewer.websocket(lane, url)
        off = Viewer.websocket(off_lane, url + "&adapt=off")
        with viewers_running([viewer, off]):
            # Unadapted, 2 Mbit/s carries ~2 of these frames a second: 60 in time only adapted.
            assert wait_until(
                lambda: frames_to(streamer, lane.address) >= 60
                and frames_to(streamer, off_lane.address) >= 5,
                4 * TIMEOUT,
            ), (streamer.stats()["clients"], lane.qdisc_stats())
            stats = streamer.stats()
            viewer.finish()
            off.finish()
    adapted = client_of_stats(stats, lane.address)  # XFF believed: the viewer's own address
    assert adapted["adapt"] is True and adapted["rung"] > 0, adapted
    sizes = check_stream(viewer)
    changes = [(m["rung"], m["adapt_reason"]) for m in viewer.metadata[1:]]
    assert changes and changes[0][0] > 0 and changes[0][1] in ("backlog", "link"), changes
    # Most frames are smaller pictures (a probe may reach a 1280-wide rung below the top a while).
    assert sum(w < 1280 for w, _ in sizes) > len(sizes) / 2, sizes
    last = [b[1] for b in viewer.binaries[-30:]]
    assert max(last) < min(len(j) for j in jpegs_720p), last  # smaller than any camera frame
    # Adaptation off: one metadata, the camera's own bytes, frames skipped as before.
    check_stream(off)
    assert [m["adapt"] for m in off.metadata] == [False]
    assert off.binaries and all(b[2] in published for b in off.binaries)
    assert client_of_stats(stats, off_lane.address)["frames_skipped"] > 0


@linux_only
def test_probes_behind_nginx_go_by_the_viewers_link_not_the_proxy_hop(
    slow_links: SlowLinks, jpegs_720p: list[bytes], nginx_binary: str, tmp_path: Path
) -> None:
    """A viewer behind nginx at 2 Mbit/s that stepped down does not probe up by the rate of
    the hop from camstream to nginx (hundreds of Mbit/s while nginx's buffers have room, which
    made it climb to the top rung every second or two): behind a proxy it probes blind, at
    most one probe per ``up_dwell_s`` (2 s behind a proxy), backing off when probes fail."""
    host = slow_links.host_address
    lane = slow_links.lane(RATE_MBIT)
    with serving(PROXY, jpegs_720p, trusted_proxies=[PROXY]) as streamer, \
            nginx_in_front(nginx_binary, tmp_path, host, streamer.port) as port:
        viewer = Viewer.websocket(lane, f"ws://{host}:{port}/?max_bytes=0&frame_info=1")
        began = time.monotonic()
        with viewers_running([viewer]):
            assert wait_until(lambda: frames_to(streamer, lane.address) >= 150, 4 * TIMEOUT), (
                streamer.stats()["clients"]
            )
            viewer.finish()
        elapsed = time.monotonic() - began
    check_stream(viewer)
    changes = [(m["rung"], m["adapt_reason"]) for m in viewer.metadata]
    probes = [rung for rung, reason in changes if reason == "probe"]
    assert changes[1][0] > 0, changes  # stepped down
    # At most one probe per 2 s of the viewer's life (the proxy's up_dwell_s); the hop's rate
    # made it one every 0.5 s, up to the top rung.
    assert len(probes) <= elapsed / 2.0 + 1, (elapsed, changes)
    assert 1 not in probes and 0 not in probes, changes  # never up to 1280 on 2 Mbit/s
