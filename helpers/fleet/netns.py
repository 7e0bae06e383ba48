"""Network namespaces as separate hosts (root only): one per instance, each joined to this machine
by a veth pair in a private range (``10.231.X.0/30``: this machine ``.1``, the namespace ``.2``),
created and removed by this code, even when a step fails. The instances bind to their namespace's
address; nginx and PostgreSQL stay on this machine and are reached over its side of each pair.

Namespaces left by a process that was killed are removed by the next run (their names carry the
pid of the process that made them).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import weakref
from dataclasses import dataclass

from helpers.fleet.fleet import Host
from helpers.run import process_alive

IP_TIMEOUT_S = 10.0
RANGE = "10.231"
_NAME = re.compile(r"^fleet-(\d+)-\d+$")


def unavailable() -> str | None:
    """Why namespaces cannot be made here (one line), or ``None``."""
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add)"
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is missing: apt-get install iproute2"
    return None


def _ip(*args: str, netns: str = "") -> str:
    command = ["ip", "netns", "exec", netns, "ip", *args] if netns else ["ip", *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=IP_TIMEOUT_S)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)}: {done.stderr.strip()}")
    return done.stdout


@dataclass
class Link:
    """One namespace and its veth pair."""

    netns: str
    outside: str  # this machine's end of the pair
    gateway: str  # its address
    address: str  # the namespace's address


class Namespaces:
    """``count`` namespaces, each a ``Host`` for the fleet; ``remove()`` (or the end of a ``with``
    block, or garbage collection) deletes them."""

    def __init__(self, count: int = 3) -> None:
        self.count = count
        self.links: list[Link] = []
        self._finalizer = weakref.finalize(self, _remove, self.links)

    def create(self) -> Namespaces:
        """Make the namespaces and their links; on a failure, remove what was made, then raise."""
        if reason := unavailable():
            raise RuntimeError(reason)
        remove_stale()
        block = _free_block(self.count)
        try:
            for k in range(self.count):
                self._make(k, block + k)
        except BaseException:
            self.remove()
            raise
        return self

    def hosts(self) -> list[Host]:
        return [Host(link.address, link.gateway, link.netns) for link in self.links]

    def remove(self) -> None:
        self._finalizer()

    def __enter__(self) -> Namespaces:
        return self.create()

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def _make(self, k: int, octet: int) -> None:
        pid = os.getpid()
        link = Link(f"fleet-{pid}-{k}", f"fh{pid}k{k}", f"{RANGE}.{octet}.1", f"{RANGE}.{octet}.2")
        inside = f"fn{pid}k{k}"
        _ip("netns", "add", link.netns)
        self.links.append(link)  # from here on, remove() deletes it
        _ip("link", "add", link.outside, "type", "veth", "peer", "name", inside)
        _ip("link", "set", inside, "netns", link.netns)
        _ip("addr", "add", f"{link.gateway}/30", "dev", link.outside)
        _ip("link", "set", link.outside, "up")
        _ip("addr", "add", f"{link.address}/30", "dev", inside, netns=link.netns)
        _ip("link", "set", inside, "up", netns=link.netns)
        _ip("link", "set", "lo", "up", netns=link.netns)  # the runtime and model: loopback


def _free_block(count: int) -> int:
    """The first third octet from which ``count`` blocks of ``10.231.X.0/30`` are all unused."""
    used = {int(m) for m in re.findall(rf"inet {re.escape(RANGE)}\.(\d+)\.", _ip("-o", "addr"))}
    for start in range(1, 250 - count):
        if not used & set(range(start, start + count)):
            return start
    raise RuntimeError(f"no free block of {count} in {RANGE}.0.0/16")


def _remove(links: list[Link]) -> None:
    """Delete each namespace (its end of the pair goes with it) and this machine's end."""
    for link in links:
        with contextlib.suppress(Exception):
            _ip("netns", "delete", link.netns)
        with contextlib.suppress(Exception):
            _ip("link", "delete", link.outside)
    links.clear()


def remove_stale() -> list[str]:
    """Delete namespaces made by processes that are gone; return their names."""
    removed = []
    with contextlib.suppress(Exception):
        for line in _ip("netns", "list").splitlines():
            name = line.split()[0] if line.split() else ""
            match = _NAME.match(name)
            if match and not process_alive(int(match.group(1))):
                k = name.rsplit("-", 1)[1]
                _remove([Link(name, f"fh{match.group(1)}k{k}", "", "")])
                removed.append(name)
    return removed
