"""Find services through the NATS Services API (``$SRV``), natsmesh or not.

Scatter-gather: one request to ``$SRV.<VERB>[.<name>[.<id>]]``, every instance
answers, and answers are collected until none has arrived for a short while
(or the overall timeout). Answers that are not valid ADR-32 JSON are skipped
and logged, so one broken service cannot hide the others.
"""

from __future__ import annotations

import logging
from typing import TypeVar

import anyio
import pydantic

from natsmesh.transport._link import Link
from natsmesh.transport._transport import NO_RESPONDERS, STATUS, NoReply, NoResponse
from natsmesh.wire import _micro
from natsmesh.wire._subjects import srv_request_subject

log = logging.getLogger("natsmesh.discovery")

M = TypeVar("M", bound=pydantic.BaseModel)

_MODELS: dict[str, type[pydantic.BaseModel]] = {
    "PING": _micro.Ping,
    "INFO": _micro.Info,
    "STATS": _micro.Stats,
}
_MAX_ANSWER = 4 * 1024 * 1024


async def gather(
    link: Link,
    verb: str,
    model: type[M],
    *,
    name: str | None = None,
    instance_id: str | None = None,
    timeout: float = 1.0,
    stall: float = 0.15,
) -> list[M]:
    """Every valid answer to a ``$SRV`` request, sorted by service name and id."""
    subject = srv_request_subject(verb, name, instance_id)
    inbox = link.new_inbox()
    sub = await link.subscribe(inbox, max_msgs=0)
    answers: list[M] = []
    try:
        await link.publish(subject, b"", reply=inbox)
        with anyio.move_on_after(timeout):
            wait = timeout
            while True:
                try:
                    msg = await sub.next_msg(timeout=wait)
                except TimeoutError:
                    break
                if not msg.data and msg.headers and msg.headers.get(STATUS) == NO_RESPONDERS:
                    break  # nobody subscribes to this $SRV subject
                wait = stall
                parsed = _parse(model, msg.data)
                if parsed is not None:
                    answers.append(parsed)
    finally:
        # Shielded: a gather that is cancelled (or fails) still removes its inbox.
        with anyio.CancelScope(shield=True):
            try:
                await sub.unsubscribe()
            except Exception as exc:  # a closed connection took it already
                log.debug("unsubscribing the $SRV inbox: %s", exc)
    answers.sort(key=lambda a: (getattr(a, "name", ""), getattr(a, "id", "")))
    return answers


async def first_info(link: Link, name: str, *, timeout: float = 0.5) -> _micro.Info | None:
    """The INFO of one instance of ``name``, or None when none answers."""
    subject = srv_request_subject("INFO", name)
    try:
        msg = await link.request(subject, b"", timeout=timeout)
    except (NoReply, NoResponse):
        return None
    return _parse(_micro.Info, msg.data)


def _parse(model: type[M], data: bytes) -> M | None:
    if len(data) > _MAX_ANSWER:
        log.warning("skipped a $SRV answer of %d bytes", len(data))
        return None
    try:
        return model.model_validate_json(data)
    except pydantic.ValidationError as exc:
        log.warning("skipped an invalid $SRV answer: %s", exc.errors(include_input=False)[:1])
        return None
