"""The controller's view of the KV bucket: every key as last seen, and safe writes.

A watch on the whole bucket keeps :attr:`Store.entries` current, so a write that
would store the value a key already holds costs nothing, and every write is a
compare-and-swap on the key's revision as last seen: two controllers never
overwrite each other's tables, whoever is behind reads the key again and retries.
"""

from __future__ import annotations

import logging

import anyio
from anyio.abc import TaskStatus

from natsmesh.transport._kv import Conflict, Entry, Tables, Unavailable

log = logging.getLogger("natsmesh.controller")


class Store:
    """The bucket's keys as last seen (from the watch and from our own writes)."""

    def __init__(self, tables: Tables) -> None:
        self.tables = tables
        self.entries: dict[str, Entry] = {}

    def revision(self, key: str) -> int:
        entry = self.entries.get(key)
        return 0 if entry is None else entry.revision

    def value(self, key: str) -> bytes | None:
        entry = self.entries.get(key)
        return None if entry is None else entry.value

    async def watch(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Follow every key until cancelled; started once the watch is set up (or failed)."""
        started = False
        while True:
            try:
                async with self.tables.watch(">") as updates:
                    if not started:
                        started = True
                        task_status.started()
                    while True:
                        entry = await updates.get()
                        self.entries[entry.key] = entry
            except Unavailable as exc:
                log.warning("bucket watch failed, retrying: %s", exc)
                if not started:
                    started = True
                    task_status.started()
                await anyio.sleep(1)

    async def write(self, key: str, value: bytes) -> bool:
        """Compare-and-swap ``key`` to ``value`` unless it already holds it; False to retry."""
        current = self.entries.get(key)
        if current is not None and current.value == value:
            return True
        try:
            revision = await self.tables.put(key, value, last=current.revision if current else 0)
        except Conflict:
            # Our view of the bucket is behind (a stalled watch): read the key and retry.
            try:
                fresh = await self.tables.get(key)
            except Unavailable as exc:
                log.warning("re-reading %s after a conflict failed: %s", key, exc)
                return False
            self.entries[key] = fresh or Entry(key, None, 0)
            return False
        except Unavailable as exc:
            log.warning("write of %s failed: %s", key, exc)
            return False
        self.entries[key] = Entry(key, value, revision)
        return True

    async def delete(self, key: str) -> None:
        """Delete ``key`` (raises Unavailable)."""
        entry = self.entries.get(key)
        await self.tables.delete(key)
        self.entries[key] = Entry(key, None, 0 if entry is None else entry.revision)
