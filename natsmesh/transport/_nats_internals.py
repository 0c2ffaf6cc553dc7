"""Every place natsmesh reaches past nats-py's public API, behind one version guard.

nats-py's public calls cost more than the rest of a mesh call on the hot path, and
report some outcomes only where nothing can hear them. What this module does
instead, each only on a nats-py in :data:`TESTED_NATS_PY` (and not with
``NATSMESH_NO_INTERNALS=1`` in the environment), each with nats-py's public path as
the fallback (the README's table "Private internals we rely on" lists them):

- :class:`FrameWriter` writes PUB/HPUB frames straight into the connection's
  outgoing buffer (``_pending``, ``_pending_data_size``, ``_max_pending_size``,
  ``_flush_queue``, ``_flusher_task``, ``_status``); fallback ``publish()``.
- :func:`hand_over` replaces a subscription's pending queue (``_pending_queue``,
  ``_pending_size``, ``_wait_for_msgs_task``) by a hand-over to plain code;
  fallback: the subscription's callback, as nats-py runs it.
- :func:`fast_header_parse` gives a connection a faster ``_parse_header_lines`` and
  a ``_process_headers`` that remembers short blocks; fallback: nats-py's own.
- :func:`listen_refusals` hears the server refuse a publish, which nats-py reports
  only to the connection's error callback, as text: on a connection natsmesh made,
  through the ``error_cb`` it passed (public); on one a user passed in, by wrapping
  its ``_error_cb``, the user's callback still called after. Fallback: nothing is
  heard, and a refused request waits out its timeout.
- :func:`server_zone` reads the server's cluster name from ``_server_info``;
  fallback "" (no zone: every instance counts as local).

Only the modules of :mod:`natsmesh.transport` import ``nats`` (an import-linter
contract); above them natsmesh holds a :class:`~natsmesh.transport._link.Link`.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.metadata
import logging
import os
import re
import weakref
from collections.abc import Awaitable, Callable
from typing import Final

from natsmesh.transport._nats import NATS, Msg, Subscription, client_module

__all__ = [
    "TESTED_NATS_PY",
    "CachedHeaders",
    "FrameWriter",
    "fast_header_parse",
    "hand_over",
    "header_lines",
    "internals_allowed",
    "listen_refusals",
    "refusal_error_cb",
    "server_zone",
]

log = logging.getLogger("natsmesh")

#: nats-py versions (prefixes) whose internals this module was written and tested against.
TESTED_NATS_PY: Final = ("2.16.",)
#: Set to 1 to use nats-py's public paths only, whatever its version.
NO_INTERNALS_ENV: Final = "NATSMESH_NO_INTERNALS"


@functools.cache
def _nats_py() -> str:
    try:
        return importlib.metadata.version("nats-py")
    except importlib.metadata.PackageNotFoundError:
        return ""


def internals_allowed(version: str | None = None) -> bool:
    """Whether the installed nats-py (or ``version``) is one this module was tested with."""
    if os.environ.get(NO_INTERNALS_ENV, "") not in ("", "0"):
        return False
    return (_nats_py() if version is None else version).startswith(TESTED_NATS_PY)


# -- the outgoing buffer -------------------------------------------------------------------


class FrameWriter:
    """Writes the frames nats-py's ``publish()`` would write, straight into its buffer.

    ``publish()`` spends more on a few headers (a regular expression and four buffer
    copies per header) than the rest of a mesh call does. :meth:`frame` answers None
    for whatever needs nats-py's own checks or rewriting (not plainly connected, too
    large, a subject with whitespace, a header name that is no token, a value it would
    strip): that goes through ``publish()``. Build with :meth:`for_connection`.
    """

    # nats-py's rules: a header name is a token, and a subject holds no whitespace
    # (CR/LF would start a new protocol line).
    _HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
    _BAD_SUBJECT = re.compile(r"\s")
    BUFFER: Final = (
        "_pending",
        "_pending_data_size",
        "_max_pending_size",
        "_flush_queue",
        "_flusher_task",
        "_status",
    )
    _CHECKED = 4096  # subjects and header names remembered as checked

    def __init__(self, nc: NATS) -> None:
        self._nc = nc
        self._subjects: set[str] = set()
        self._names: set[str] = set()

    @classmethod
    def for_connection(cls, nc: NATS) -> FrameWriter | None:
        """A writer for ``nc``, or None where only ``publish()`` may write."""
        if not internals_allowed() or not all(hasattr(nc, a) for a in cls.BUFFER):
            return None
        return cls(nc)

    @classmethod
    def safe_reply_prefix(cls, prefix: str) -> bool:
        """Whether reply subjects under ``prefix`` may be written unchecked."""
        return not cls._BAD_SUBJECT.search(prefix)

    def write_nowait(
        self, frame: bytes, payload_size: int, loop: asyncio.AbstractEventLoop | None
    ) -> bool:
        """What ``publish()`` does with its frame: count, queue, wake the flusher.

        False when that needs a wait: then the caller awaits :meth:`finish`. (Not a
        coroutine itself: on the hot path one per message costs more than the write.)
        """
        nc = self._nc
        nc.stats["out_msgs"] += 1
        nc.stats["out_bytes"] += payload_size
        nc._pending.append(frame)
        nc._pending_data_size += len(frame)
        if 0 < nc._max_pending_size < nc._pending_data_size:
            return False
        if nc._flush_queue is not None and nc._flush_queue.empty():
            flusher = nc._flusher_task
            if loop is None or flusher is None or flusher.done():
                return False
            # What _flush_pending() does then, minus two coroutines and the loop
            # lookup of asyncio.Future() (a getpid() system call on 3.11).
            nc._flush_queue.put_nowait(loop.create_future())
        return True

    async def finish(self, loop: asyncio.AbstractEventLoop | None) -> None:
        """The rest of a write that :meth:`write_nowait` could not finish."""
        nc = self._nc
        if 0 < nc._max_pending_size < nc._pending_data_size:
            await nc._flush_pending(force_flush=True)
        if nc._flush_queue is not None and nc._flush_queue.empty():
            flusher = nc._flusher_task
            if loop is not None and flusher is not None and not flusher.done():
                nc._flush_queue.put_nowait(loop.create_future())
            else:
                await nc._flush_pending()

    def frame(
        self, subject: str, reply: str, payload: bytes, headers: dict[str, str] | None
    ) -> bytes | None:
        """The PUB or HPUB frame ``publish()`` would write; None where only it may write.

        ``reply`` is written unchecked: empty, or under a prefix :meth:`safe_reply_prefix`
        accepted.
        """
        nc = self._nc
        if nc._status != NATS.CONNECTED or len(payload) > nc.max_payload:
            return None
        if subject not in self._subjects:
            if not subject or self._BAD_SUBJECT.search(subject):
                return None
            if len(self._subjects) < self._CHECKED:
                self._subjects.add(subject)
        if headers is None:  # an empty dict still makes an HPUB, as in publish()
            return b"%s%s\r\n" % (f"PUB {subject} {reply} {len(payload)}\r\n".encode(), payload)
        lines = ["NATS/1.0\r\n"]
        for name, value in headers.items():
            if name not in self._names:
                if not self._HEADER_NAME.fullmatch(name):
                    return None
                if len(self._names) < self._CHECKED:
                    self._names.add(name)
            # publish() strips a value and turns CR/LF into spaces: such values go there.
            if value.strip() != value or "\r" in value or "\n" in value:
                return None
            lines.append(f"{name}: {value}\r\n")
        lines.append("\r\n")
        head = "".join(lines).encode()
        size = len(head)
        return b"%s%s%s\r\n" % (
            f"HPUB {subject} {reply} {size} {size + len(payload)}\r\n".encode(),
            head,
            payload,
        )


# -- a subscription's pending queue --------------------------------------------------------


class _HandOver:
    """Stands in for a subscription's pending queue: every message goes on at once.

    nats-py's reader puts each message in the queue (``put_nowait``) after adding its
    size to the subscription's pending bytes; a task per subscription then takes it
    out and awaits the callback. Here the reader's ``put_nowait`` hands the message
    to ``deliver`` (plain code, never raising), in the reader's own step.
    """

    __slots__ = ("_deliver", "_sub")

    def __init__(self, sub: Subscription, deliver: Callable[[Msg], None]) -> None:
        self._sub = sub
        self._deliver = deliver

    def put_nowait(self, msg: Msg) -> None:
        self._sub._pending_size -= len(msg.data)
        try:
            self._deliver(msg)
        except Exception:  # never into nats-py's reader, which would drop the connection
            log.exception("delivering a message failed")

    # What nats-py asks a subscription's queue elsewhere (pending counts, drain).
    def qsize(self) -> int:
        return 0

    def empty(self) -> bool:
        return True

    def task_done(self) -> None:
        pass

    async def join(self) -> None:
        return None


def hand_over(sub: Subscription, deliver: Callable[[Msg], None]) -> bool:
    """Deliver ``sub``'s messages to ``deliver`` as nats-py reads them, instead of its callback.

    Only on a subscription with nothing pending (a new one) and a tested nats-py;
    returns False (the callback goes on) otherwise.
    """
    if not internals_allowed():
        return False
    queue = getattr(sub, "_pending_queue", None)
    task = getattr(sub, "_wait_for_msgs_task", None)
    if not isinstance(queue, asyncio.Queue) or not queue.empty() or task is None:
        return False
    if not hasattr(sub, "_pending_size"):
        return False
    sub._pending_queue = _HandOver(sub, deliver)  # type: ignore[assignment]
    task.cancel()  # it waits on the old queue, which nothing fills any more
    return True


# -- header parsing ------------------------------------------------------------------------

# What bytes.strip() strips (str.strip() strips more: \x1c-\x1f too), and what
# str.isspace() calls whitespace: nats-py's parse uses both.
_STRIP: Final = " \t\n\r\x0b\x0c"
_SPACE: Final = re.compile(r"\s").search


def header_lines(raw: bytes) -> dict[str, str]:
    """nats-py's ``_parse_header_lines(raw)``, faster where ``raw`` is ASCII (the usual case).

    nats-py decodes each name as ASCII and each value as UTF-8 (with replacement), and
    skips lines without a colon and names with whitespace inside; for an ASCII block
    one decode of the whole block gives the same strings.
    """
    if not raw.isascii():
        return NATS._parse_header_lines(raw)
    out: dict[str, str] = {}
    for line in raw.decode("ascii").split("\r\n"):
        name, sep, value = line.partition(":")
        if sep:
            key = name.strip(_STRIP)
            if not _SPACE(key):
                out[key] = value.strip(_STRIP)
    return out


_CACHED_BLOCK: Final = 256  # longer blocks are parsed each time: no memory for a hostile sender
_CACHED_BLOCKS: Final = 1024  # the cache starts over when it holds this many


class CachedHeaders:
    """nats-py's ``_process_headers`` (``process``), remembering what it made of each block.

    A mesh's header blocks repeat (one caller, one budget on first tries). Answers are
    copies: callers may change theirs. Only ASCII blocks are kept, which
    :func:`header_lines` parses without raising: none skipped nats-py's error callback.
    """

    __slots__ = ("_process", "seen")

    def __init__(self, process: Callable[[bytes], Awaitable[dict[str, str] | None]]) -> None:
        self._process = process
        self.seen: dict[bytes, dict[str, str]] = {}

    async def __call__(self, headers: bytes) -> dict[str, str] | None:
        if not headers:
            return None
        known = self.seen.get(headers)
        if known is not None:
            return known.copy()
        parsed = await self._process(headers)
        if parsed is not None and len(headers) < _CACHED_BLOCK and headers.isascii():
            if len(self.seen) >= _CACHED_BLOCKS:
                self.seen.clear()
            self.seen[headers] = parsed.copy()
        return parsed


def fast_header_parse(nc: NATS) -> bool:
    """Make ``nc`` parse message headers with :func:`header_lines`, and remember each
    short block's parse (see :class:`CachedHeaders`); whether it does.
    """
    if internals_allowed() and callable(getattr(nc, "_parse_header_lines", None)):
        nc._parse_header_lines = header_lines  # type: ignore[method-assign]
        # With fast_mail_parser installed, nats-py parses with it, not with header_lines.
        if getattr(client_module, "parse_email", None) is None:
            nc._process_headers = CachedHeaders(nc._process_headers)  # type: ignore[method-assign]
        return True
    return False


# -- refused publishes ---------------------------------------------------------------------

#: nats-py lower-cases the server's error line, subject included.
_REFUSED: Final = re.compile(r'permissions violation for publish to "([^"]+)"')
Refused = Callable[[str], None]
_listeners: weakref.WeakKeyDictionary[NATS, set[Refused]] = weakref.WeakKeyDictionary()


def refused_subject(error: BaseException) -> str | None:
    """The (lower-cased) subject of a refused publish that ``error`` reports, if it does."""
    found = _REFUSED.search(str(error))
    return None if found is None else found.group(1)


def _tell(nc: NATS, error: BaseException) -> None:
    listeners = _listeners.get(nc)
    subject = refused_subject(error) if listeners else None
    if subject is not None:
        for listener in list(listeners or ()):
            try:
                listener(subject)
            except Exception:  # one listener's bug must not keep the others uninformed
                log.exception("a refusal listener failed")


def refusal_error_cb(
    nc: NATS, then: Callable[[Exception], Awaitable[None]]
) -> Callable[[Exception], Awaitable[None]]:
    """The ``error_cb`` to connect ``nc`` with: tells refusal listeners, then calls ``then``."""
    _listeners.setdefault(nc, set())

    async def on_error(exc: Exception) -> None:
        _tell(nc, exc)
        await then(exc)

    on_error.natsmesh_refusals = True  # type: ignore[attr-defined]  # see listen_refusals
    return on_error


def listen_refusals(nc: NATS, listener: Refused) -> Callable[[], None] | None:
    """Call ``listener(subject)`` when the server refuses one of ``nc``'s publishes.

    Returns the call that stops listening, or None where refusals cannot be heard (a
    connection natsmesh did not make, on a nats-py this module does not know).
    """
    listeners = _listeners.get(nc)
    if listeners is None:
        current = getattr(nc, "_error_cb", None)
        if getattr(current, "natsmesh_refusals", False):
            listeners = _listeners.setdefault(nc, set())
        elif not internals_allowed() or current is None:
            return None
        else:
            # A connection the user made: their callback is kept, and called after.
            nc._error_cb = refusal_error_cb(nc, current)
            listeners = _listeners[nc]
    listeners.add(listener)
    return functools.partial(listeners.discard, listener)


# -- server info ---------------------------------------------------------------------------


def server_zone(nc: NATS) -> str:
    """The name of the NATS cluster ``nc``'s server belongs to ("" standalone or unknown)."""
    if not internals_allowed():
        return ""
    info = getattr(nc, "_server_info", None) or {}
    cluster = info.get("cluster", "") if isinstance(info, dict) else ""
    return cluster if isinstance(cluster, str) else ""
