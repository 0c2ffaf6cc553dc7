"""Leadership among controllers: a lease in the bucket's ``leader`` key.

Every controller listens, so a standby is always ready; only the holder of the
lease writes. Taking or renewing it is a compare-and-swap on the key's revision,
so two controllers never both believe they lead for longer than a lease period;
a controller that dies stops renewing and another takes over within a period.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

import anyio
import pydantic

from natsmesh.transport._kv import Conflict, Tables, Unavailable
from natsmesh.wire._control import LEADER_KEY, Lease

log = logging.getLogger("natsmesh.controller")


class LeaseKeeper:
    """Acquires and renews the lease; calls ``on_change(is_leader)`` when that flips."""

    def __init__(
        self,
        tables: Tables,
        holder: str,
        *,
        period: float,
        on_change: Callable[[bool], Awaitable[None]],
    ) -> None:
        self._tables = tables
        self.holder = holder
        self.period = period
        self._on_change = on_change
        self._revision = 0
        self.is_leader = False

    async def run(self) -> None:
        """Renew every third of a period, until cancelled."""
        while True:
            try:
                await self.step()
            except Unavailable as exc:
                log.info("lease: %s", exc)
            await anyio.sleep(self.period / 3)

    async def step(self) -> None:
        entry = await self._tables.get(LEADER_KEY)
        now = time.time()
        lease = None
        if entry is not None and entry.value is not None:
            try:
                lease = Lease.model_validate_json(entry.value)
            except pydantic.ValidationError:
                log.warning("the leader key holds no valid lease: taking it over")
        if lease is not None and lease.holder != self.holder and lease.expires > now:
            await self._set(False)
            return
        mine = Lease(holder=self.holder, expires=now + self.period).model_dump_json().encode()
        try:
            self._revision = await self._tables.put(
                LEADER_KEY, mine, last=0 if entry is None else entry.revision
            )
        except Conflict:
            await self._set(False)
            return
        await self._set(True)

    async def _set(self, leader: bool) -> None:
        if leader != self.is_leader:
            self.is_leader = leader
            log.info("controller %s is %s", self.holder, "the leader" if leader else "a standby")
            await self._on_change(leader)

    async def hand_over(self) -> None:
        """Give the lease up at once, instead of making a standby wait out the period."""
        if not self.is_leader:
            return
        gone = Lease(holder=self.holder, expires=0).model_dump_json().encode()
        try:
            await self._tables.put(LEADER_KEY, gone, last=self._revision)
        except (Conflict, Unavailable) as exc:
            log.info("lease not handed over (a standby waits it out): %s", exc)
        self.is_leader = False
