"""Network namespaces for a real partition: one namespace per server, joined by a bridge.

Each server gets its own namespace with one veth interface on a bridge in the
runner's namespace, where the clients and services stay: they reach every server
at its own address. A partition adds blackhole routes between the server cut off
and the others, so their packets vanish as on a broken link (no reset, no error:
routes notice by their pings); the clients still reach every server. Healing
deletes the routes.

Names carry the runner's pid (``nmc<pid>-<i>``, ``nmb<pid>``), so that a runner
killed before it could clean up is cleaned up by the next one.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field


class Unavailable(Exception):
    """Namespaces cannot be made here (not root, no ``ip``, no veth or bridge support)."""


def _ip(*args: str, check: bool = True) -> str:
    ip = shutil.which("ip")
    if ip is None:
        raise Unavailable("network namespaces need the ip command (iproute2)")
    done = subprocess.run([ip, *args], capture_output=True, text=True, timeout=10, check=False)
    if check and done.returncode != 0:
        raise Unavailable(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reap_stale() -> None:
    """Delete the namespaces and bridges of runners that are gone."""
    try:
        names = _ip("netns", "list", check=False)
        links = _ip("-o", "link", "show", check=False)
    except (OSError, subprocess.SubprocessError):
        return
    for match in re.finditer(r"^nmc(\d+)-\d+", names, re.MULTILINE):
        if not _alive(int(match.group(1))):
            _ip("netns", "del", match.group(0), check=False)
    for match in re.finditer(r"^\d+: (nm[bv](\d+)(h\d+)?)[:@]", links, re.MULTILINE):
        if not _alive(int(match.group(2))):
            _ip("link", "del", match.group(1), check=False)


@dataclass
class Network:
    """A bridge and ``count`` namespaces with one address each (``hosts``)."""

    count: int
    tag: int = field(default_factory=os.getpid)
    namespaces: list[str] = field(default_factory=list)
    hosts: list[str] = field(default_factory=list)
    _cuts: list[tuple[str, str]] = field(default_factory=list)

    @property
    def bridge(self) -> str:
        return f"nmb{self.tag}"

    def create(self) -> None:
        """Make everything, or raise Unavailable (and leave nothing behind)."""
        if os.geteuid() != 0:
            raise Unavailable("network namespaces need root")
        reap_stale()
        # A /24 of 10.0.0.0/8 picked by the pid: two runners at once get two subnets.
        net = f"10.{200 + self.tag // 256 % 50}.{self.tag % 256}"
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
            _ip("addr", "add", f"{net}.1/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
            for i in range(1, self.count + 1):
                ns, host_if, ns_if = (
                    f"nmc{self.tag}-{i}",
                    f"nmv{self.tag}h{i}",
                    f"nmv{self.tag}n{i}",
                )
                _ip("netns", "add", ns)
                self.namespaces.append(ns)
                _ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if)
                _ip("link", "set", host_if, "master", self.bridge, "up")
                _ip("link", "set", ns_if, "netns", ns)
                address = f"{net}.{10 + i}"
                _ip("-n", ns, "addr", "add", f"{address}/24", "dev", ns_if)
                _ip("-n", ns, "link", "set", ns_if, "up")
                _ip("-n", ns, "link", "set", "lo", "up")
                self.hosts.append(address)
        except BaseException:
            self.destroy()
            raise

    def cut(self, index: int, others: Sequence[int]) -> None:
        """Partition server ``index`` (0-based) from ``others``: their packets are dropped."""
        for other in others:
            for ns, peer in ((index, other), (other, index)):
                namespace, address = self.namespaces[ns], self.hosts[peer]
                _ip("-n", namespace, "route", "add", "blackhole", f"{address}/32")
                self._cuts.append((namespace, address))

    def heal(self) -> None:
        while self._cuts:
            namespace, address = self._cuts.pop()
            _ip("-n", namespace, "route", "del", "blackhole", f"{address}/32", check=False)

    def destroy(self) -> None:
        # A veth pair goes with either end; the namespace's end is not always destroyed
        # with the namespace (its cleanup is the kernel's, later), so the host's end here.
        for i in range(1, len(self.namespaces) + 1):
            _ip("link", "del", f"nmv{self.tag}h{i}", check=False)
        for ns in self.namespaces:
            _ip("netns", "del", ns, check=False)
        self.namespaces.clear()
        _ip("link", "del", self.bridge, check=False)
