"""The seam to JetStream KV: the control plane's one bucket of tables.

Only this module knows nats-py's KV API and its exceptions. Values are bytes;
revisions are the bucket's sequence numbers (they only grow). Writes can be
conditional (compare-and-swap on the key's last revision), which is how two
controllers never overwrite each other.

The bucket allows direct gets and republishes every write (and deletion) of a
key to ``<prefix>._ctl.table.<key>``: callers follow those subjects and read a
key with one direct get (:func:`read_direct`), so a caller needs no JetStream
consumer and no stream grant, only a publish grant per key it may read. Only the
controller opens the bucket through :class:`Tables` (it alone has those grants).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Final

import anyio
import anyio.abc

from natsmesh.transport._link import Link
from natsmesh.transport._nats import KeyValue, KeyValueConfig, Msg, RePublish, errors, js_errors
from natsmesh.wire._control import BUCKET, KV_STREAM, direct_get_subject, table_subject

log = logging.getLogger("natsmesh.kv")

__all__ = ["Conflict", "Entry", "Tables", "Unavailable", "entry_of", "read_direct"]


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
    errors.TimeoutError,
    errors.NoRespondersError,
    js_errors.ServiceUnavailableError,
    js_errors.NoStreamResponseError,
    errors.ConnectionClosedError,
)


class Tables:
    """The ``natsmesh`` KV bucket."""

    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv

    @classmethod
    async def open(
        cls, link: Link, *, create: bool = False, replicas: int = 1, prefix: str = "mesh"
    ) -> Tables:
        """Open the bucket; raises Unavailable.

        With ``create`` the bucket is created, or its stream's config brought up to
        date (direct gets allowed, writes republished under ``prefix``): a bucket
        made by an older controller gets the subjects callers now follow.
        """
        js = link.nats.jetstream(timeout=2.0)
        republish = RePublish(src=f"$KV.{BUCKET}.>", dest=table_subject(prefix, ">"))
        try:
            if not create:
                return cls(await js.key_value(BUCKET))
            config = KeyValueConfig(
                bucket=BUCKET,
                history=5,
                replicas=replicas,
                description="natsmesh registry and route tables",
                direct=True,
                republish=republish,
            )
            try:
                return cls(await js.create_key_value(config))
            except js_errors.BadRequestError:
                pass  # exists with another config (an older controller's): update it
            info = await js.stream_info(KV_STREAM)
            if not info.config.allow_direct or info.config.republish != republish:
                log.info("updating bucket %s: direct gets, republish to %s", BUCKET, republish.dest)
                info.config.allow_direct = True
                info.config.republish = republish
                await js.update_stream(info.config)
            return cls(await js.key_value(BUCKET))
        except (js_errors.NotFoundError, *_TRANSIENT) as exc:
            raise Unavailable(f"KV bucket {BUCKET!r}: {exc!r}") from None
        except js_errors.APIError as exc:
            raise Unavailable(f"KV bucket {BUCKET!r}: {exc}") from None

    async def get(self, key: str) -> Entry | None:
        """The key's current entry, or None when it does not exist (or was deleted)."""
        try:
            entry = await self._kv.get(key)
        except (js_errors.KeyNotFoundError, js_errors.KeyDeletedError):
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
        except (js_errors.KeyWrongLastSequenceError, js_errors.BadRequestError) as exc:
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
        except js_errors.NoKeysError:
            return []
        except (*_TRANSIENT, js_errors.APIError) as exc:
            # APIError: e.g. the stream's consumer limit reached (listing keys takes one).
            raise Unavailable(repr(exc)) from None
        return sorted(k for k in found if k.startswith(prefix))

    @contextlib.asynccontextmanager
    async def watch(self, pattern: str) -> AsyncIterator[asyncio.Queue[Entry]]:
        """Updates of keys matching ``pattern`` (a KV key or wildcard), current values first."""
        queue: asyncio.Queue[Entry] = asyncio.Queue()
        try:
            watcher = await self._kv.watch(pattern)
        except (*_TRANSIENT, js_errors.APIError) as exc:
            # APIError: e.g. the stream's consumer limit reached (a watch takes one).
            raise Unavailable(repr(exc)) from None

        async def pump(*, task_status: anyio.abc.TaskStatus[anyio.CancelScope]) -> None:
            with anyio.CancelScope() as scope:
                task_status.started(scope)
                try:
                    async for update in watcher:
                        if update is None:
                            continue  # the "caught up" marker
                        deleted = update.operation in ("DEL", "PURGE")
                        value = None if deleted else update.value
                        queue.put_nowait(Entry(update.key, value, update.revision or 0))
                except Exception:  # logged, not raised: that would cancel the watch's user
                    log.warning("the watch of %s stopped", pattern, exc_info=True)

        try:
            async with anyio.create_task_group() as tg:
                # Stopped through its own scope, not the group's (see _tasks.Nesting).
                pumping: anyio.CancelScope = await tg.start(pump)
                try:
                    yield queue
                finally:
                    pumping.cancel()
        finally:
            try:
                await watcher.stop()  # type: ignore[no-untyped-call]
            except Exception as exc:  # its consumer may be gone with the connection
                log.debug("stopping a watch: %r", exc)


_OPERATION: Final = "KV-Operation"
_SEQUENCE: Final = "Nats-Sequence"
_SUBJECT: Final = "Nats-Subject"
_KEY_PREFIX: Final = f"$KV.{BUCKET}."


def entry_of(msg: Msg) -> Entry | None:
    """The entry a direct get's reply or a republished write carries; None if it is no entry.

    The key comes from the stream subject the server stamped (``Nats-Subject``), the
    revision from ``Nats-Sequence``; a ``KV-Operation`` of DEL or PURGE is a deletion.
    """
    headers = msg.headers or {}
    subject, sequence = headers.get(_SUBJECT, ""), headers.get(_SEQUENCE, "")
    if not subject.startswith(_KEY_PREFIX) or not sequence.isdigit() or len(sequence) > 20:
        return None
    deleted = headers.get(_OPERATION) in ("DEL", "PURGE")
    return Entry(subject[len(_KEY_PREFIX) :], None if deleted else msg.data, int(sequence))


async def read_direct(link: Link, key: str, *, timeout: float = 2.0) -> Entry | None:
    """``key``'s current entry by one direct get (no consumer); None if it never existed.

    Raises Unavailable: no bucket (no responders), no answer, or an unexpected status.
    A deleted key comes back as an entry without a value (its revision still counts).
    """
    try:
        msg = await link.nats.request(direct_get_subject(key), b"", timeout=timeout)
    except (errors.TimeoutError, errors.NoRespondersError) as exc:
        raise Unavailable(f"direct get of {key}: {exc!r}") from None
    status = (msg.headers or {}).get("Status")
    if status == "404":
        return None
    entry = entry_of(msg)
    if status or entry is None or entry.key != key:
        raise Unavailable(f"direct get of {key}: unexpected reply (status {status or 'none'})")
    return entry
