"""The observation subjects and payloads, and their checks against hostile input (pure).

=============================================  ==============================================
subject                                        what
=============================================  ==============================================
``<prefix>._ctl.metrics.interest``             an observer asks for summaries (empty body)
``<prefix>._ctl.metrics.<identity>``           a caller's summary (msgpack, :func:`summary`)
``<prefix>._ctl.tap.<service>.interest``       someone watches ``service``'s requests
``<prefix>._ctl.tap.<service>.samples.<id>``   instance ``id``'s recent requests (msgpack)
=============================================  ==============================================

Who sent a summary is the subject's last token, never a claim in its body: under an
access policy only that identity may publish there. Interest lasts
:data:`INTEREST_TTL` seconds; an observer renews it every :data:`REPORT_EVERY`.
Every decoder here refuses what is too large, too deep, badly typed or badly named
with :class:`Rejected`, before anything of it is kept.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Final

import msgpack

from natsmesh.observe._meter import _N_BUCKETS, OUTCOMES, Row

REPORT_EVERY: Final = 2.0
INTEREST_TTL: Final = 6.0
TAP_FLUSH_EVERY: Final = 0.5
MAX_SUMMARY: Final = 512 * 1024
MAX_ROWS: Final = 4096
MAX_TAP_BATCH: Final = 64
MAX_TAP_MESSAGE: Final = 64 * 1024
MAX_LABEL: Final = 128
_COUNT_MAX: Final = 2**62
_LABEL = re.compile(r"[A-Za-z0-9_\-/:@]*")
_RESERVED: Final = "interest"
_IDENTITY = re.compile(r"[A-Za-z0-9_\-/:@]{1,128}")
_OUTCOMES: Final = frozenset(OUTCOMES)
VERSION: Final = 1


class Rejected(ValueError):
    """A payload or subject that is not what this protocol sends."""


def metrics_interest(prefix: str) -> str:
    return f"{prefix}._ctl.metrics.interest"


def metrics_subject(prefix: str, identity: str) -> str:
    return f"{prefix}._ctl.metrics.{identity}"


def metrics_wildcard(prefix: str) -> str:
    return f"{prefix}._ctl.metrics.*"


def tap_interest(prefix: str, service: str) -> str:
    return f"{prefix}._ctl.tap.{service}.interest"


def tap_subject(prefix: str, service: str, instance: str) -> str:
    return f"{prefix}._ctl.tap.{service}.samples.{instance}"


def identity_token(name: str) -> str:
    """A client's name as one subject token: characters that could split or widen a
    subject (``.``, ``*``, ``>``, whitespace) become ``_``; ``interest`` is reserved.
    """
    token = "".join(c if _LABEL.fullmatch(c) else "_" for c in name[:MAX_LABEL]) or "_"
    return token + "_" if token == _RESERVED else token


def sender_of(subject: str, prefix: str) -> str:
    """The identity a summary's subject names; raises Rejected for any other subject."""
    head = f"{prefix}._ctl.metrics."
    token = subject[len(head) :] if subject.startswith(head) else ""
    if token == _RESERVED or _IDENTITY.fullmatch(token) is None:
        raise Rejected(f"not a summary subject: {subject[:200]!r}")
    return token


def caller_of(identity: str) -> str:
    """The caller label of an identity: a service instance's ``name/id`` is ``name``."""
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


def _unpack(data: bytes, limit: int, *, max_array: int) -> Any:
    if len(data) > limit:
        raise Rejected(f"{len(data)} bytes, more than {limit}")
    try:
        return msgpack.unpackb(
            data,
            max_str_len=MAX_LABEL * 2,
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
