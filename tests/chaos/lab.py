"""One scenario's world: NATS topologies from deploy/, natsmesh processes, the CLI, teardown.

A :class:`Lab` owns a directory (logs, stores, route files) and every process the
scenario starts, by role ("nats-1", "catalog-2", "controller-a", "gateway"); leaving
it kills them all by pid, and removes any network namespaces it made. The mesh
runs as users run it: ``natsmesh serve``, ``natsmesh controller``, ``natsmesh
gateway`` processes, route changes through ``natsmesh routes apply``, convergence
read from ``natsmesh status --json``.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import anyio
import nats
from waits import eventually

from chaos.netns import Network
from chaos.procs import BIN, Proc, clean_env
from chaos.servers import NatsNode, routes_env, urls

NATSMESH = str(BIN / "natsmesh")
#: What ``natsmesh status`` asks the controller (its control subject).
STATUS_SUBJECT = "mesh._ctl.status.show"


async def _ask_all(nc: nats.NATS, subject: str, wait: float = 0.15) -> list[list[dict[str, Any]]]:
    """The rows of every controller that answers a status request within ``wait`` seconds."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    views: list[list[dict[str, Any]]] = []
    try:
        await nc.publish(subject, b"", reply=inbox)
        deadline = time.monotonic() + wait
        while (left := deadline - time.monotonic()) > 0:
            try:
                msg = await sub.next_msg(timeout=left)
            except Exception:  # nats-py's timeout: nobody else answers
                break
            with contextlib.suppress(ValueError, KeyError):
                views.append(json.loads(msg.data)["rows"])
    finally:
        await sub.unsubscribe()
    return views


def _synced(rows: list[dict[str, Any]], service: str) -> set[str]:
    return {r["client"] for r in rows if r["service"] == service and r["state"] == "SYNCED"}


@dataclass(frozen=True)
class Done:
    """A finished CLI command."""

    code: int
    out: str
    err: str
    seconds: float


class Lab:
    def __init__(self, home: Path, *, long: bool = False) -> None:
        self.home = home
        self.logs = home / "logs"
        self.long = long
        self.roles: dict[str, Proc] = {}  # the current process of each role
        self._started: list[Proc] = []  # every process ever started, restarts included
        self.nodes: dict[str, NatsNode] = {}
        self.network: Network | None = None
        self._rss_before: dict[str, int] = {}
        self.steady = 0.0  # when the warm-up ended (time.monotonic())
        self.status_answers = 0  # the most controllers that answered one status request
        self._files = 0

    async def __aenter__(self) -> Self:
        self.logs.mkdir(parents=True, exist_ok=True)
        self._begin = time.monotonic()
        return self

    def phase(self, what: str) -> None:
        """Say where the scenario is (the runner's log, shown when a test fails)."""
        print(f"{time.monotonic() - self._begin:7.2f} s  {what}", file=sys.stderr, flush=True)

    async def __aexit__(
        self, et: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        # Synchronous, so that no cancellation can cut it short. Clients and services
        # first, so that the servers do not log their departures as faults; SIGKILL: the
        # figures are taken, nothing needs a drain.
        servers = {id(n.proc) for n in self.nodes.values()}
        for proc in sorted(self._started, key=lambda p: id(p) in servers):
            proc.signal(signal.SIGCONT)
            proc.kill()
        if self.network is not None:
            self.network.destroy()

    # -- NATS ------------------------------------------------------------------------------

    async def start_node(self, node: NatsNode) -> NatsNode:
        """Start (or restart) ``node`` and wait for its ready line."""
        self.nodes[node.name] = node
        for attempt in range(3):
            proc = node.start(self.logs)
            self.roles[node.name] = proc
            self._started.append(proc)
            try:
                await node.wait_ready()
                return node
            except RuntimeError:
                if "address already in use" not in proc.tail() or attempt == 2:
                    raise
                # Another process took a port between our probe and the server's bind.
                node.ports.clear()
                node.__post_init__()
        raise AssertionError("unreachable")

    async def wait_healthy(self, nodes: Iterable[NatsNode], within: float = 60.0) -> None:
        """Until every server's /healthz is 200 (routes up, JetStream current)."""
        deadline = time.monotonic() + within
        for node in nodes:
            try:
                left = max(0.0, deadline - time.monotonic())
                await eventually(node.healthy, within=left, every=0.1, what=f"{node.name} /healthz")
            except TimeoutError as exc:
                tail = self.roles[node.name].tail()
                raise TimeoutError(f"{node.name} not healthy:\n{tail}") from exc

    def make_nodes(
        self,
        zone: str,
        count: int,
        *,
        conf: str = "cluster.conf",
        prefix: str = "nats",
        netns: Network | None = None,
    ) -> list[NatsNode]:
        """``count`` servers of one cluster (not started), their routes set."""
        nodes = []
        for i in range(1, count + 1):
            node = NatsNode(f"{prefix}-{i}", conf, zone, self.home / f"{prefix}-{i}")
            if netns is not None:  # a namespace of its own: the usual ports, no races
                node.host, node.netns = netns.hosts[i - 1], netns.namespaces[i - 1]
                node.ports.update(client=4222, cluster=6222, monitor=8222, gateway=7222, leaf=7422)
            nodes.append(node)
        for node in nodes:
            node.extra_env["NATSMESH_ROUTES"] = routes_env(nodes)
        return nodes

    async def cluster(
        self, zone: str, count: int = 3, *, netns: Network | None = None
    ) -> list[NatsNode]:
        """``count`` servers of one cluster (deploy/cluster.conf), started and healthy."""
        nodes = self.make_nodes(zone, count, netns=netns)
        await self.start_all(nodes)
        return nodes

    async def start_all(self, nodes: list[NatsNode]) -> None:
        for node in nodes:
            await self.start_node(node)
        await self.wait_healthy(nodes)
        self.phase(f"healthy: {', '.join(n.name for n in nodes)}")

    async def restart(self, node: NatsNode) -> float:
        """Start a stopped server again (same ports, same store); seconds until healthy."""
        started = time.monotonic()
        await self.start_node(node)
        await self.wait_healthy([node])
        return time.monotonic() - started

    # -- natsmesh processes ----------------------------------------------------------------

    def _mesh(
        self, role: str, args: list[str], servers: str, ready: str, env: Mapping[str, str]
    ) -> Proc:
        old = self.roles.get(role)
        name = role if old is None else f"{role}.{int(time.monotonic() * 1000) % 100000}"
        proc = Proc(
            name,
            [NATSMESH, *args],
            env=clean_env({"NATS_URL": servers, **env}),
            log_dir=self.logs,
            ready=ready,
        )
        self.roles[role] = proc
        self._started.append(proc)
        return proc

    async def serve(
        self, role: str, target: str, servers: str, *, env: Mapping[str, str] | None = None
    ) -> Proc:
        """``natsmesh serve MODULE:ATTR``: one instance in its own process, subscribed."""
        proc = self._mesh(role, ["serve", target], servers, r"^natsmesh serve: ", env or {})
        await proc.wait_ready()
        self.phase(f"serving: {role} (pid {proc.pid})")
        return proc

    async def controller(self, role: str, servers: str, *, replicas: int = 3) -> Proc:
        args = ["controller", "--replicas", str(replicas)]
        proc = self._mesh(role, args, servers, r"natsmesh controller (\S+) running", {})
        await proc.wait_ready()
        self.phase(f"running: {role} (pid {proc.pid})")
        return proc

    async def gateway(self, role: str, servers: str) -> tuple[Proc, str]:
        """``natsmesh gateway`` on a free port; the process and its URL."""
        args = ["gateway", "--port", "0"]
        proc = self._mesh(role, args, servers, r"natsmesh gateway: (http://\S+)", {})
        match = await proc.wait_ready()
        return proc, match.group(1)

    async def cli(self, *args: str, servers: str, timeout: float = 30.0) -> Done:
        """One ``natsmesh`` command to its end."""
        started = time.monotonic()
        with anyio.fail_after(timeout):
            done = await anyio.run_process(
                [NATSMESH, *args], env=clean_env({"NATS_URL": servers}), check=False
            )
        return Done(
            done.returncode,
            done.stdout.decode(),
            done.stderr.decode(),
            time.monotonic() - started,
        )

    def route_file(self, text: str) -> Path:
        self._files += 1
        path = self.home / f"routes-{self._files}.toml"
        path.write_text(text)
        return path

    async def apply(self, text: str, servers: str) -> Done:
        """``natsmesh routes apply`` of ``text`` (once; see :meth:`apply_until_ok`).

        With ``--allow-empty``: scenarios apply before their instances start, and during a
        fault the registry may miss an instance for a moment; what they measure is the
        apply's convergence, not the empty-subset check (tests/test_route_apply.py has that).
        """
        path = str(self.route_file(text))
        return await self.cli("routes", "apply", path, "--allow-empty", servers=servers)

    async def apply_until_ok(
        self, text: str, servers: str, *, within: float = 60.0
    ) -> tuple[Done, list[Done]]:
        """Apply until the controller says ok: the success and the failed attempts before it."""
        failures: list[Done] = []

        async def applied() -> Done | None:
            done = await self.apply(text, servers)
            if done.code == 0:
                return done
            failures.append(done)
            return None

        try:
            done = await eventually(applied, within=within, every=0.2, what="routes apply")
        except TimeoutError as exc:
            raise TimeoutError(f"routes apply kept failing: {failures[-1].err.strip()}") from exc
        self.phase(f"applied: {done.out.strip()}")
        return done, failures

    async def status(self, servers: str) -> list[dict[str, Any]]:
        """``natsmesh status --json``: every client's applied revisions, by the controller."""
        done = await self.cli("status", "--json", servers=servers)
        if done.code != 0:
            return []
        rows: list[dict[str, Any]] = json.loads(done.out)["rows"]
        return rows

    async def converge(
        self,
        service: str,
        clients: Iterable[str],
        servers: str,
        *,
        since: float,
        within: float = 60.0,
    ) -> float:
        """Seconds from ``since`` until every named client shows ``service`` SYNCED.

        SYNCED against the controller's latest revisions, which include the change
        just applied: the request ``natsmesh status`` makes, polled (a process per poll
        would cost more CPU than the scenario).
        """
        wanted = set(clients)

        async def synced() -> bool:
            views = await _ask_all(nc, STATUS_SUBJECT)
            # More than one answer: two controllers both think they lead (each
            # subscribes to the request subjects while it holds the lease).
            self.status_answers = max(self.status_answers, len(views))
            return bool(views) and wanted <= _synced(views[0], service)

        nc = await nats.connect(servers=servers.split(","), name="chaos-status")
        try:
            left = max(0.0, since + within - time.monotonic())
            await eventually(synced, within=left, what=f"{sorted(wanted)} SYNCED on {service}")
            seconds = time.monotonic() - since
        finally:
            await nc.close()
        self.phase(f"converged: {sorted(wanted)} on {service} in {seconds:.2f} s")
        return seconds

    # -- memory ----------------------------------------------------------------------------

    def rss(self) -> dict[str, int]:
        """Resident memory of every running process, by role."""
        found = {role: proc.rss() for role, proc in self.roles.items()}
        return {role: value for role, value in found.items() if value is not None}

    async def rss_mean(self, seconds: float = 5.0) -> dict[str, int]:
        """Resident memory by role, the mean of one sample a second for ``seconds``.

        A Go or Python heap breathes by a few MiB between collections: one sample of a
        25 MiB nats-server can be 10 % off its level.
        """
        samples: list[dict[str, int]] = []
        deadline = time.monotonic() + seconds
        while True:
            samples.append(self.rss())
            if time.monotonic() >= deadline:
                break
            await anyio.sleep(1.0)  # the sampling period: time must pass between samples
        roles = set.intersection(*(set(s) for s in samples))
        return {r: sum(s[r] for s in samples) // len(samples) for r in roles}

    def mark_rss(self) -> None:
        """The warm-up is over: take the "before" memory figures, start counting calls."""
        self._rss_before = self.rss()
        self.steady = time.monotonic()

    def rss_figures(self) -> dict[str, tuple[int, int]]:
        """(before, after) by role, for the roles running at both times."""
        after = self.rss()
        return {r: (b, after[r]) for r, b in self._rss_before.items() if r in after}

    def servers_of(self, names: Iterable[str]) -> str:
        return urls([self.nodes[n] for n in names])
