"""Real slow links for tests and benchmarks: network namespaces, veth pairs, ``tc tbf``.

A :class:`SlowLinks` is one private test network (a /24 of 198.18.0.0/15, the range set aside
for network benchmarks): a bridge on the host side holding :attr:`SlowLinks.host_address`,
which the server binds, and any number of :class:`Lane`\\ s. A lane is one viewer's link: a
network namespace joined to the bridge by a veth pair, with a ``tbf`` qdisc on the host end's
egress, so what the server sends the viewer (server -> viewer) goes at the lane's rate;
acknowledgements and requests (viewer -> server) are not shaped. :meth:`Lane.set_rate`
changes the rate mid-test; :meth:`Lane.popen` runs a program inside the namespace (``ip netns
exec``), e.g. a viewer that connects to the host address.

Everything gets names no other run uses (the pid and a random token); :meth:`SlowLinks.close`
(and the context manager, also on failure) kills the programs it started, deletes the
namespaces, veth pairs and bridge; and creating a network first removes what runs killed
without cleaning up left behind (their pid is gone). Needs root and ``ip``/``tc``
(iproute2); :func:`unavailable` says why not, and :func:`shaped_links` (what a test's fixture
wraps) then skips with that reason (``CAMSTREAM_REQUIRE_ALL=1`` turns the skip into a
failure).
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
import re
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

__all__ = ["Lane", "NetnsError", "SlowLinks", "shaped_links", "unavailable"]

_PREFIX = "camstream"  # namespace names: camstream-<pid>-<token>-<lane>
_NS_PATTERN = re.compile(rf"^{_PREFIX}-(\d+)-([0-9a-f]{{6}})-\d+$")
_NETWORK = ipaddress.ip_network("198.18.0.0/15")  # RFC 2544: network benchmark testing
_LOCK_FILE = "/tmp/camstream-netns.lock"  # serialises choosing a free /24 between runs
_MAX_LANES = 250
_COMMAND_TIMEOUT = 15.0


class NetnsError(RuntimeError):
    """A namespace, veth pair or qdisc could not be made (the message has ``ip``'s words)."""


def unavailable() -> str | None:
    """Why shaped links cannot be made here, or None if they can (root, Linux, ip and tc)."""
    if not sys.platform.startswith("linux"):
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "network namespaces and tc need root"
    missing = [tool for tool in ("ip", "tc") if shutil.which(tool) is None]
    if missing:
        return f"{' and '.join(missing)} not found: install iproute2"
    return None


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run one iproute2 command; raises :class:`NetnsError` with its stderr if it fails."""
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=_COMMAND_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NetnsError(f"{' '.join(argv)}: {exc}") from exc
    if check and done.returncode != 0:
        raise NetnsError(f"{' '.join(argv)}: {done.stderr.strip() or done.returncode}")
    return done


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_leftovers() -> list[str]:
    """Delete the namespaces, veths and bridges of runs whose process is gone; returns the
    namespaces removed. (A run killed with SIGKILL cannot clean up after itself.)"""
    listed = _run("ip", "netns", "list", check=False).stdout.split()
    removed = []
    tokens = set()
    for name in listed:
        match = _NS_PATTERN.match(name)
        if match and not _pid_alive(int(match.group(1))):
            _run("ip", "netns", "del", name, check=False)
            tokens.add(match.group(2))
            removed.append(name)
    for token in tokens:
        _run("ip", "link", "del", f"cs{token}b", check=False)
    return removed


def _used_subnets() -> set[int]:
    """Third octets (with the /15's second bit) of the 198.18/15 /24s in use on this host."""
    out = _run("ip", "-o", "-4", "addr", "show", check=False).stdout
    used = set()
    for address in re.findall(r"inet (198\.1[89]\.\d+)\.\d+", out):
        _, second, third = address.split(".")[:3]
        used.add((int(second) - 18) * 256 + int(third))
    return used


class Lane:
    """One viewer's link: a namespace behind a veth pair, shaped server -> viewer.

    Made by :meth:`SlowLinks.lane`; closed with the network. Not thread-safe (the test's
    thread).
    """

    def __init__(self, links: SlowLinks, index: int, address: str) -> None:
        self.index = index
        self.namespace = f"{_PREFIX}-{os.getpid()}-{links.token}-{index}"
        self.address = address
        """The viewer's address, inside the namespace."""
        self.host_device = f"cs{links.token}h{index}"
        self.peer_device = f"cs{links.token}p{index}"
        self.rate_mbit: float | None = None
        self._links = links
        self._processes: list[subprocess.Popen[Any]] = []

    def __repr__(self) -> str:
        return f"<Lane {self.namespace} {self.address} {self.rate_mbit} Mbit/s>"

    def set_rate(self, rate_mbit: float | None, *, queue_ms: float | None = None) -> None:
        """Shape server -> viewer to ``rate_mbit`` megabits a second (None: not shaped).

        The tbf bucket holds about 4 ms at the rate (at least two full-size packets), so bursts
        do not pass at line rate; its queue holds ``queue_ms`` of packets (default: the
        network's) beyond which the link drops, as a real bottleneck would. Takes effect at
        once, also mid-stream.
        """
        if rate_mbit is None:
            if self.rate_mbit is not None:
                _run("tc", "qdisc", "del", "dev", self.host_device, "root")
            self.rate_mbit = None
            return
        if rate_mbit <= 0:
            raise ValueError(f"rate must be positive, not {rate_mbit}")
        queue_ms = self._links.queue_ms if queue_ms is None else queue_ms
        bytes_per_s = rate_mbit * 1e6 / 8
        burst = max(int(bytes_per_s * 0.004), 2 * 1514)
        verb = "change" if self.rate_mbit is not None else "add"
        _run(
            "tc", "qdisc", verb, "dev", self.host_device, "root", "tbf",
            "rate", f"{rate_mbit * 1000:.0f}kbit", "burst", str(burst),
            "latency", f"{queue_ms:.0f}ms",
        )
        self.rate_mbit = rate_mbit

    def command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` as a command line that runs it inside this lane's namespace."""
        return ["ip", "netns", "exec", self.namespace, *argv]

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` inside the namespace (``subprocess.Popen`` keyword arguments pass
        through); it is killed and reaped when the network closes, if still running."""
        process = subprocess.Popen(self.command(argv), **kwargs)
        self._processes.append(process)
        return process

    def qdisc_stats(self) -> str:
        """``tc -s qdisc`` of the shaped end (for diagnostics)."""
        return _run("tc", "-s", "qdisc", "show", "dev", self.host_device, check=False).stdout

    def _create(self) -> None:
        links = self._links
        _run("ip", "netns", "add", self.namespace)
        _run("ip", "link", "add", self.host_device, "type", "veth", "peer", "name",
             self.peer_device, "netns", self.namespace)
        _run("ip", "link", "set", self.host_device, "master", links.bridge, "up")
        ns = ("ip", "-n", self.namespace)
        _run(*ns, "addr", "add", f"{self.address}/24", "dev", self.peer_device)
        _run(*ns, "link", "set", self.peer_device, "up")
        _run(*ns, "link", "set", "lo", "up")

    def _close(self) -> None:
        for process in self._processes:
            if process.poll() is None:
                process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(_COMMAND_TIMEOUT)
            for pipe in (process.stdin, process.stdout, process.stderr):
                if pipe is not None:
                    pipe.close()
        self._processes.clear()
        _run("ip", "link", "del", self.host_device, check=False)  # its peer goes with it
        _run("ip", "netns", "del", self.namespace, check=False)


class SlowLinks:
    """A private test network of shaped lanes (see the module docstring).

    Use as a context manager (or call :meth:`close`, idempotent). Creating it raises
    :class:`NetnsError` if the network cannot be made (see :func:`unavailable`).

    Args:
        queue_ms: how much each lane's tbf queues before it drops, in ms of its rate.
    """

    def __init__(self, *, queue_ms: float = 100.0) -> None:
        problem = unavailable()
        if problem is not None:
            raise NetnsError(problem)
        self.queue_ms = queue_ms
        self.token = secrets.token_hex(3)
        self.bridge = f"cs{self.token}b"
        self.lanes: list[Lane] = []
        self._closed = False
        with open(_LOCK_FILE, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            sweep_leftovers()
            used = _used_subnets()
            free = next((n for n in range(1, 512) if n not in used), None)
            if free is None:
                raise NetnsError("no free /24 left in 198.18.0.0/15")
            self._subnet = ipaddress.ip_network(
                (int(_NETWORK.network_address) + free * 256, 24)
            )
            self.host_address = str(self._subnet.network_address + 1)
            """The server's address (binds here); the lanes reach it."""
            try:
                _run("ip", "link", "add", self.bridge, "type", "bridge")
                _run("ip", "addr", "add", f"{self.host_address}/24", "dev", self.bridge)
                _run("ip", "link", "set", self.bridge, "up")
            except NetnsError:
                self.close()
                raise

    def __enter__(self) -> SlowLinks:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def lane(self, rate_mbit: float | None, *, queue_ms: float | None = None) -> Lane:
        """A new lane shaped to ``rate_mbit`` (None: not shaped); see :meth:`Lane.set_rate`."""
        if self._closed:
            raise NetnsError("the network is closed")
        if len(self.lanes) >= _MAX_LANES:
            raise NetnsError(f"at most {_MAX_LANES} lanes in one network")
        index = len(self.lanes)
        lane = Lane(self, index, str(self._subnet.network_address + 2 + index))
        self.lanes.append(lane)  # closed with the rest even if its creation fails halfway
        lane._create()
        lane.set_rate(rate_mbit, queue_ms=queue_ms)
        return lane

    def close(self) -> None:
        """Kill the lanes' programs, delete lanes and bridge. Idempotent; never raises."""
        if self._closed:
            return
        self._closed = True
        for lane in self.lanes:
            lane._close()
        _run("ip", "link", "del", self.bridge, check=False)


@contextlib.contextmanager
def shaped_links(**kwargs: Any) -> Iterator[SlowLinks]:
    """A :class:`SlowLinks` for one test (closed after it, also on failure); skips the test,
    with the reason, where it cannot be made. Tests wrap it in a fixture of their own."""
    problem = unavailable()
    if problem is not None:
        pytest.skip(f"no shaped links: {problem}")
    try:
        links = SlowLinks(**kwargs)
    except NetnsError as exc:
        pytest.skip(f"no shaped links: {exc}")
    with links:
        yield links
