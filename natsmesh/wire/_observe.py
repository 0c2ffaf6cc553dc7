"""The observation subjects and payloads, and their checks against hostile input (pure).

==================================================  ===========================================
subject                                             what
==================================================  ===========================================
``<prefix>._ctl.observe.interest``                  an observer asks for summaries (empty)
``<prefix>._ctl.observe.metrics.<name>.<id>``       a caller's summary (msgpack, :func:`summary`)
``<prefix>._ctl.observe.tap.<service>``             someone watches ``service``'s requests
``<prefix>._ctl.observe.samples.<service>.<id>``    instance ``id``'s recent requests (msgpack)
``<prefix>._ctl.observe.errors.<service>.<id>``     instance ``id``'s recent failed requests
==================================================  ===========================================

Who sent a summary is the subject's ``<name>`` token (a service's name, the
gateway's, a client's), never a claim in its body: under an access policy only
that identity may publish there (``natsmesh.security``). ``<id>`` tells apart the
instances or processes of one name. Subjects have six tokens where a caller
publishes, so that no ``_ctl.*.*.*`` deny of a ``*`` caller covers them.
Interest lasts :data:`INTEREST_TTL` seconds; an observer renews it every
:data:`REPORT_EVERY`. Every decoder here refuses what is too large, too deep,
badly typed or badly named with :class:`Rejected`, before anything of it is kept.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Final

import msgpack

from natsmesh.wire._errors import MAX_CAUSE_MESSAGE, Cause, clean_message, parse_causes

REPORT_EVERY: Final = 2.0
INTEREST_TTL: Final = 6.0
TAP_FLUSH_EVERY: Final = 0.5
MAX_SUMMARY: Final = 512 * 1024
MAX_ROWS: Final = 4096
MAX_TAP_BATCH: Final = 64
MAX_TAP_MESSAGE: Final = 64 * 1024
MAX_LABEL: Final = 128
MAX_ERROR_BATCH: Final = 16
MAX_ERROR_MESSAGE: Final = 128 * 1024
_COUNT_MAX: Final = 2**62
_LABEL = re.compile(r"[A-Za-z0-9_\-/:@]*")
_TOKEN = re.compile(r"[A-Za-z0-9_\-:@]")
_IDENTITY = re.compile(r"[A-Za-z0-9_\-:@]{1,128}")
VERSION: Final = 1


#: Upper bounds (ms) of the latency histogram's buckets; a last, implicit one is +Inf.
BUCKETS_MS: Final = (0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0)
_N_BUCKETS: Final = len(BUCKETS_MS) + 1

#: The outcomes a call can have: ``ok``, or the kind of error it raised.
OUTCOMES: Final = (
    "ok",
    "no_responders",
    "deadline",
    "overloaded",
    "invalid_request",
    "unknown_endpoint",
    "client_error",
    "server_error",
    "invalid_reply",
    "lost",
    "denied",
    "other",
)

_OUTCOMES: Final = frozenset(OUTCOMES)

#: A series as a summary carries it: service, endpoint, subset, outcome, count, sum_ms, buckets.
Row = tuple[str, str, str, str, int, float, list[int]]


class Rejected(ValueError):
    """A payload or subject that is not what this protocol sends."""


def metrics_interest(prefix: str) -> str:
    return f"{prefix}._ctl.observe.interest"


def metrics_subject(prefix: str, name: str, instance: str) -> str:
    return f"{prefix}._ctl.observe.metrics.{name}.{instance}"


def metrics_wildcard(prefix: str) -> str:
    return f"{prefix}._ctl.observe.metrics.*.*"


def tap_interest(prefix: str, service: str) -> str:
    return f"{prefix}._ctl.observe.tap.{service}"


def tap_subject(prefix: str, service: str, instance: str) -> str:
    return f"{prefix}._ctl.observe.samples.{service}.{instance}"


def tap_wildcard(prefix: str) -> str:
    return f"{prefix}._ctl.observe.samples.*.*"


def errors_subject(prefix: str, service: str, instance: str) -> str:
    return f"{prefix}._ctl.observe.errors.{service}.{instance}"


def errors_wildcard(prefix: str) -> str:
    return f"{prefix}._ctl.observe.errors.*.*"


def observed_wildcards(prefix: str) -> list[str]:
    """What an observer reads: every summary, tap sample and failed request."""
    return [metrics_wildcard(prefix), tap_wildcard(prefix), errors_wildcard(prefix)]


def identity_token(name: str) -> str:
    """A name as one subject token: characters that could split or widen a subject
    (``.``, ``*``, ``>``, whitespace) become ``_``.
    """
    return "".join(c if _TOKEN.fullmatch(c) else "_" for c in name[:MAX_LABEL]) or "_"


def reporter_subject(prefix: str, client_name: str, epoch: int) -> str:
    """Where a Mesh client named ``client_name`` reports: a service instance's client
    (``name/id``) under its service's name and its id; any other under its name and
    its meter's epoch.
    """
    name, _, instance = client_name.partition("/")
    return metrics_subject(
        prefix, identity_token(name), identity_token(instance) if instance else f"{epoch:x}"
    )


def sender_of(subject: str, prefix: str) -> str:
    """``name/id`` of a summary's subject; raises Rejected for any other subject."""
    head = f"{prefix}._ctl.observe.metrics."
    rest = subject[len(head) :] if subject.startswith(head) else ""
    name, _, instance = rest.partition(".")
    if _IDENTITY.fullmatch(name) is None or _IDENTITY.fullmatch(instance) is None:
        raise Rejected(f"not a summary subject: {subject[:200]!r}")
    return f"{name}/{instance}"


def errors_sender(subject: str, prefix: str) -> tuple[str, str]:
    """(service, id) of a failures subject; raises Rejected for any other subject."""
    head = f"{prefix}._ctl.observe.errors."
    rest = subject[len(head) :] if subject.startswith(head) else ""
    service, _, instance = rest.partition(".")
    if _IDENTITY.fullmatch(service) is None or _IDENTITY.fullmatch(instance) is None:
        raise Rejected(f"not a failures subject: {subject[:200]!r}")
    return service, instance


def caller_of(identity: str) -> str:
    """The caller label of ``name/id``: ``name``."""
    return identity.split("/", 1)[0] or identity


# -- summaries ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Summary:
    """One caller's counters, as it reported them."""

    epoch: int
    zone: str
    rows: tuple[Row, ...]


def summary(epoch: int, zone: str, rows: list[Row]) -> bytes:
    """A caller's summary, as published."""
    return msgpack.packb({"v": VERSION, "e": epoch, "z": zone, "r": rows})


def _unpack(data: bytes, limit: int, *, max_array: int, max_str: int = MAX_LABEL * 2) -> Any:
    if len(data) > limit:
        raise Rejected(f"{len(data)} bytes, more than {limit}")
    try:
        return msgpack.unpackb(
            data,
            max_str_len=max_str,
            max_bin_len=0,
            max_array_len=max_array,
            max_map_len=8,
            max_ext_len=0,
            strict_map_key=True,
            raw=False,
        )
    except Exception as exc:  # msgpack raises a handful of classes for bad input
        raise Rejected(f"not msgpack: {type(exc).__name__}") from None


def _label(value: Any, *, empty: bool = False) -> str:
    if not isinstance(value, str) or len(value) > MAX_LABEL or _LABEL.fullmatch(value) is None:
        raise Rejected("a label that is not a short name")
    if not value and not empty:
        raise Rejected("an empty label")
    return value


def _count(value: Any) -> int:
    if type(value) is not int or not 0 <= value <= _COUNT_MAX:
        raise Rejected("a count that is not a non-negative integer")
    return value


def _row(value: Any) -> Row:
    if not isinstance(value, list) or len(value) != 7:
        raise Rejected("a row that is not a list of 7")
    service, endpoint, subset, outcome, count, total, buckets = value
    if outcome not in _OUTCOMES:
        raise Rejected("an unknown outcome")
    if not isinstance(total, float | int) or isinstance(total, bool):
        raise Rejected("a latency sum that is not a number")
    if not math.isfinite(total) or total < 0:
        raise Rejected("a latency sum that is not finite and positive")
    if not isinstance(buckets, list) or len(buckets) != _N_BUCKETS:
        raise Rejected("buckets of the wrong length")
    counts = [_count(b) for b in buckets]
    n = _count(count)
    if sum(counts) != n:
        raise Rejected("buckets that do not add up to the count")
    return (
        _label(service),
        _label(endpoint),
        _label(subset, empty=True),
        outcome,
        n,
        float(total),
        counts,
    )


def parse_summary(data: bytes) -> Summary:
    """A summary from the wire; raises Rejected."""
    value = _unpack(data, MAX_SUMMARY, max_array=MAX_ROWS)
    if not isinstance(value, dict) or value.get("v") != VERSION:
        raise Rejected("not a version 1 summary")
    epoch, zone, rows = value.get("e"), value.get("z", ""), value.get("r")
    if not isinstance(rows, list):
        raise Rejected("no rows")
    return Summary(_count(epoch), _label(zone, empty=True), tuple(_row(r) for r in rows))


# -- tap samples ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sample:
    """One request an instance served: for the tap."""

    endpoint: str
    caller: str
    status: int  # 200, or the error code replied
    latency_ms: float
    trace_id: str
    at: float  # the instance's wall clock, seconds

    def as_json(self, service: str, instance: str) -> dict[str, Any]:
        return {
            "service": service,
            "instance": instance,
            "endpoint": self.endpoint,
            "caller": self.caller,
            "status": self.status,
            "latency_ms": round(self.latency_ms, 3),
            "trace_id": self.trace_id,
            "at": self.at,
        }


def samples(batch: list[tuple[str, str, int, float, str, float]]) -> bytes:
    return msgpack.packb({"v": VERSION, "s": batch})


def parse_samples(data: bytes) -> list[Sample]:
    """A tap batch from the wire; raises Rejected."""
    value = _unpack(data, MAX_TAP_MESSAGE, max_array=MAX_TAP_BATCH)
    if not isinstance(value, dict) or value.get("v") != VERSION:
        raise Rejected("not a version 1 tap batch")
    batch = value.get("s")
    if not isinstance(batch, list):
        raise Rejected("no samples")
    out = []
    for item in batch:
        if not isinstance(item, list) or len(item) != 6:
            raise Rejected("a sample that is not a list of 6")
        endpoint, caller, status, latency, trace_id, at = item
        if type(status) is not int or not 0 <= status < 1000:
            raise Rejected("a status that is not a code")
        for number in (latency, at):
            if not isinstance(number, float | int) or isinstance(number, bool):
                raise Rejected("a time that is not a number")
            if not math.isfinite(number) or number < 0:
                raise Rejected("a time that is not finite and positive")
        trace = _label(trace_id, empty=True)
        out.append(
            Sample(_label(endpoint), _label(caller), status, float(latency), trace, float(at))
        )
    return out


# -- failed requests -----------------------------------------------------------------------

_KIND = re.compile(r"[a-z_]{1,32}")
_TRACE_ID = re.compile(r"[0-9a-f]{32}")


@dataclass(frozen=True, slots=True)
class Failure:
    """One request an instance answered with an error, and the chain below it."""

    seq: int  # the instance's own count: tells a repeat from a new one
    at: float  # the instance's wall clock, seconds
    endpoint: str
    code: int
    kind: str
    message: str  # one printable line (clean_message)
    trace_id: str  # "" when unknown
    causes: tuple[Cause, ...]  # nearest first, bounded as error replies bound them

    def as_wire(self) -> list[Any]:
        return [
            self.seq,
            self.at,
            self.endpoint,
            self.code,
            self.kind,
            self.message,
            self.trace_id,
            [c.as_dict() for c in self.causes],
        ]

    def as_json(self, service: str, instance: str) -> dict[str, Any]:
        return {
            "service": service,
            "instance": instance,
            "at": self.at,
            "endpoint": self.endpoint,
            "code": self.code,
            "kind": self.kind,
            "message": self.message,
            "trace_id": self.trace_id,
            "causes": [c.as_dict() for c in self.causes],
        }


def failures(batch: list[Failure]) -> bytes:
    return msgpack.packb({"v": VERSION, "x": [f.as_wire() for f in batch[-MAX_ERROR_BATCH:]]})


def _failure(item: Any) -> Failure:
    if not isinstance(item, list) or len(item) != 8:
        raise Rejected("a failure that is not a list of 8")
    seq, at, endpoint, code, kind, message, trace_id, causes = item
    if type(code) is not int or not 100 <= code <= 999:
        raise Rejected("a code that is not one")
    if not isinstance(at, float | int) or isinstance(at, bool) or not math.isfinite(at) or at < 0:
        raise Rejected("a time that is not finite and positive")
    if not isinstance(kind, str) or _KIND.fullmatch(kind) is None:
        raise Rejected("a kind that is not one")
    if not isinstance(message, str) or not isinstance(trace_id, str):
        raise Rejected("a message or trace id that is not text")
    if trace_id and _TRACE_ID.fullmatch(trace_id) is None:
        raise Rejected("a trace id that is not one")
    if not isinstance(causes, list):
        raise Rejected("causes that are not a list")
    return Failure(
        _count(seq),
        float(at),
        _label(endpoint),
        code,
        kind,
        clean_message(message, MAX_CAUSE_MESSAGE),
        trace_id,
        parse_causes(causes),
    )


def parse_failures(data: bytes) -> list[Failure]:
    """A batch of failed requests from the wire; raises Rejected."""
    value = _unpack(data, MAX_ERROR_MESSAGE, max_array=MAX_ERROR_BATCH)
    if not isinstance(value, dict) or value.get("v") != VERSION:
        raise Rejected("not a version 1 batch of failures")
    batch = value.get("x")
    if not isinstance(batch, list):
        raise Rejected("no failures")
    return [_failure(item) for item in batch]
