"""The seam to JetStream KV: the control plane's one bucket of tables.

Only this module knows nats-py's KV API and its exceptions. Values are bytes;
revisions are the bucket's sequence numbers (they only grow). Writes can be
conditional (compare-and-swap on the key's last revision), which is how two
controllers never overwrite each other.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import nats.errors
import nats.js.errors
from nats.js.kv import KeyValue

from natsmesh.transport._tasks import stop
from natsmesh.transport._transport import NATS
from natsmesh.wire._control import BUCKET

log = logging.getLogger("natsmesh.kv")

__all__ = ["Conflict", "Entry", "Tables", "Unavailable"]


class Conflict(Exception):
    """A conditional write lost: the key changed since the revision it was based on."""


class Unavailable(Exception):
    """JetStream or the bucket cannot be reached (no JetStream, no bucket, no quorum)."""


@dataclass(frozen=True, slots=True)
class Entry:
    key: str
    value: bytes | None  # None: deleted
    revision: int


_TRANSIENT = (
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.js.errors.ServiceUnavailableError,
    nats.js.errors.NoStreamResponseError,
    nats.errors.ConnectionClosedError,
)


class Tables:
    """The ``natsmesh`` KV bucket."""

    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv

    @classmethod
    async def open(cls, nc: NATS, *, create: bool = False, replicas: int = 1) -> Tables:
        """Open the bucket (creating it when ``create``); raises Unavailable."""
        js = nc.jetstream(timeout=2.0)
        try:
            if create:
                kv = await js.create_key_value(
                    bucket=BUCKET,
                    history=5,
                    replicas=replicas,
                    description="natsmesh registry and route tables",
                )
            else:
                kv = await js.key_value(BUCKET)
        except (nats.js.errors.NotFoundError, *_TRANSIENT) as exc:
            raise Unavailable(f"KV bucket {BUCKET!r}: {exc!r}") from None
        except nats.js.errors.APIError as exc:
            raise Unavailable(f"KV bucket {BUCKET!r}: {exc}") from None
        return cls(kv)

    async def get(self, key: str) -> Entry | None:
        """The key's current entry, or None when it does not exist (or was deleted)."""
        try:
            entry = await self._kv.get(key)
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            return None
        except _TRANSIENT as exc:
            raise Unavailable(repr(exc)) from None
        return Entry(key, entry.value, entry.revision or 0)

    async def put(self, key: str, value: bytes, *, last: int | None = None) -> int:
        """Write; with ``last`` only if the key is still at that revision (0: must not exist).

        Returns the new revision. Raises Conflict or Unavailable.
        """
        try:
            if last is None:
                return await self._kv.put(key, value)
            if last == 0:
                return await self._kv.create(key, value)
            return await self._kv.update(key, value, last=last)
        except (nats.js.errors.KeyWrongLastSequenceError, nats.js.errors.BadRequestError) as exc:
            raise Conflict(f"{key}: {exc}") from None
        except _TRANSIENT as exc:
            raise Unavailable(repr(exc)) from None

    async def delete(self, key: str) -> None:
        try:
            await self._kv.delete(key)
        except _TRANSIENT as exc:
            raise Unavailable(repr(exc)) from None

    async def keys(self, prefix: str) -> list[str]:
        # nats-py's own filters match substrings, and warn: filter here instead.
        try:
            found = await self._kv.keys()
        except nats.js.errors.NoKeysError:
            return []
        except _TRANSIENT as exc:
            raise Unavailable(repr(exc)) from None
        return sorted(k for k in found if k.startswith(prefix))

    @contextlib.asynccontextmanager
    async def watch(self, pattern: str) -> AsyncIterator[asyncio.Queue[Entry]]:
        """Updates of keys matching ``pattern`` (a KV key or wildcard), current values first."""
        queue: asyncio.Queue[Entry] = asyncio.Queue()
        try:
            watcher = await self._kv.watch(pattern)
        except _TRANSIENT as exc:
            raise Unavailable(repr(exc)) from None

        async def pump() -> None:
            async for update in watcher:
                if update is None:
                    continue  # the "caught up" marker
                deleted = update.operation in ("DEL", "PURGE")
                queue.put_nowait(
                    Entry(update.key, None if deleted else update.value, update.revision or 0)
                )

        task = asyncio.get_running_loop().create_task(pump())
        try:
            yield queue
        finally:
            await stop([task])
            with contextlib.suppress(Exception):
                await watcher.stop()  # type: ignore[no-untyped-call]
