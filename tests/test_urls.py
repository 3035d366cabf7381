"""Where camstream listens and the URLs it names: the command listens on 127.0.0.1 only unless
told otherwise (checked on the socket itself); listening on every interface, the start line
lists this machine's addresses, not 127.0.0.1; ``Streamer.url`` stays the one URL that works
from here.

The start-line test runs the ``camstream`` command in a network namespace of its own with a
veth pair (one end in the namespace, ``10.77.<n>.2`` and ``fd00:77:<n>::2``; the other here,
``10.77.<n>.1``), so the machine's addresses are known exactly, and connects to the URL it
printed from outside the namespace. It needs root and ``ip`` (iproute2); it skips without them.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest
from conftest import TIMEOUT, stop_process, wait_until
from helpers import next_text, read_line
from websockets.sync.client import connect

from camstream import Streamer
from camstream.interfaces import interface_addresses, is_wildcard

ROOT = Path(__file__).resolve().parent.parent


def _ip_addr() -> list[tuple[str, str, str]]:
    """(interface, family, address) of every address ``ip -o addr`` lists."""
    out = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True, check=True).stdout
    rows = []
    for line in out.splitlines():
        fields = line.split()
        rows.append((fields[1], fields[2], fields[3].split("/")[0]))
    return rows


def _listening_addresses(port: int) -> set[str]:
    """Local addresses with a LISTEN socket on ``port``, read from /proc/net/tcp{,6}."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            address, port_hex = fields[1].rsplit(":", 1)
            if int(port_hex, 16) == port and fields[3] == "0A":  # 0A: TCP_LISTEN
                found.add(address)
    return found


def test_the_command_listens_on_loopback_only_by_default() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "camstream", "--source", "test", "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        line = read_line(process.stdout)
        assert line, "the command printed no start-up line"
        match = re.search(r"ws://[^ ]+:(\d+)/", line)
        assert match, line
        port = int(match.group(1))
        assert wait_until(lambda: bool(_listening_addresses(port)))
        # 0100007F is 127.0.0.1 in /proc's little-endian hex; 0.0.0.0 would be 00000000.
        assert _listening_addresses(port) == {"0100007F"}, _listening_addresses(port)
    finally:
        stop_process(process)


@pytest.mark.skipif(shutil.which("ip") is None, reason="needs iproute2's ip")
def test_interface_addresses_are_what_ip_lists_without_loopback() -> None:
    listed = _ip_addr()
    ours = interface_addresses(ipv4=True, ipv6=True)
    everything = {address for _, _, address in listed}
    for address in ours:
        ip = ipaddress.ip_address(address)
        assert address in everything, (address, listed)
        assert not ip.is_loopback and not ip.is_link_local
    first_ipv4 = {}  # SIOCGIFADDR gives an interface's first IPv4 address
    for name, family, address in listed:
        if family == "inet" and not ipaddress.ip_address(address).is_loopback:
            first_ipv4.setdefault(name, address)
    assert set(first_ipv4.values()) <= set(ours), (first_ipv4, ours)


@pytest.mark.parametrize("host", ["", "0.0.0.0", "::"])
def test_wildcard_hosts(host: str) -> None:
    assert is_wildcard(host)
    assert not is_wildcard("127.0.0.1") and not is_wildcard("192.168.1.20")


def test_url_is_for_this_machine_and_urls_for_the_others() -> None:
    """Not started: nothing is bound, the properties only read the options."""
    everywhere = Streamer("push", host="0.0.0.0", port=8765)
    assert everywhere.url == "ws://127.0.0.1:8765/"
    found = interface_addresses()
    expected = [f"ws://{a}:8765/" for a in found] or ["ws://127.0.0.1:8765/"]
    assert everywhere.urls == expected
    assert all("127.0.0.1" not in url for url in everywhere.urls) or not found
    assert Streamer("push", host="::", port=8765).url == "ws://[::1]:8765/"
    one = Streamer("push", host="127.0.0.1", port=9000)
    assert one.url == "ws://127.0.0.1:9000/" and one.urls == [one.url]


@contextlib.contextmanager
def namespace_with_veth() -> Iterator[tuple[str, str, str, str]]:
    """A network namespace joined to this one by a veth pair; yields (namespace, address in
    it, its IPv6 address, our end's address). Everything is removed at the end."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 to make a network namespace")
    n = os.getpid() % 200 + 20
    ns, inside, outside = f"csfront{n}", f"csfi{n}", f"csfo{n}"
    ipv4_in, ipv4_out, ipv6_in = f"10.77.{n}.2", f"10.77.{n}.1", f"fd00:77:{n}::2"

    def ip(*args: str, netns: bool = False) -> None:
        prefix = ["ip", "netns", "exec", ns] if netns else []
        subprocess.run([*prefix, "ip", *args], check=True, capture_output=True)

    subprocess.run(["ip", "netns", "add", ns], check=True, capture_output=True)
    try:
        ip("link", "add", outside, "type", "veth", "peer", "name", inside)
        ip("link", "set", inside, "netns", ns)
        ip("addr", "add", f"{ipv4_out}/24", "dev", outside)
        ip("link", "set", outside, "up")
        ip("link", "set", "lo", "up", netns=True)
        ip("addr", "add", f"{ipv4_in}/24", "dev", inside, netns=True)
        ip("addr", "add", f"{ipv6_in}/64", "dev", inside, "nodad", netns=True)
        ip("link", "set", inside, "up", netns=True)
        yield ns, ipv4_in, ipv6_in, ipv4_out
    finally:
        # Deleting the namespace deletes the veth end in it, and with it the pair.
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run(["ip", "link", "del", outside], capture_output=True)


@pytest.mark.parametrize("host", ["0.0.0.0", "::"])
def test_start_line_on_every_interface_lists_the_machines_addresses(host: str) -> None:
    with namespace_with_veth() as (ns, ipv4, ipv6, _):
        process = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-m", "camstream", "--source", "test",
             "--width", "160", "--height", "120", "--host", host, "--port", "0",
             "--token", "s3cret", "--log-level", "WARNING"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        try:
            line = read_line(process.stdout)
            urls = re.findall(r"ws://\S+?:\d+/", line)
            port = urls[0].rsplit(":", 1)[1].rstrip("/") if urls else "?"
            expected = [f"ws://{ipv4}:{port}/"]
            if host == "::":  # dual-stack: the IPv6 address first, then the IPv4 one
                expected = [f"ws://[{ipv6}]:{port}/", *expected]
            assert urls == expected, line
            assert "127.0.0.1" not in line and "::1" not in line, line
            # The printed URL works from another machine (here: the other end of the veth).
            with connect(f"{expected[-1]}?token=s3cret", open_timeout=TIMEOUT) as ws:
                assert next_text(ws, "metadata")["width"] == 160
            process.send_signal(signal.SIGTERM)
            assert process.wait(TIMEOUT) == 0
        finally:
            stop_process(process)
