"""The request path of one instance: decode → handle → reply, with budgets and a limit.

All of it runs in the subscription callback; a handler that waits (on I/O, a
nested call, a worker thread) continues in a task of its own::

    budget spent? → drop (counted)          in-flight at the limit? → 503 overloaded
    decode (bounded) → validate → handler (abandoned when the budget ends) → encode → reply

The tasks of handlers that wait are the requests themselves, not background
work: :meth:`Dispatcher.running` owns them (with the sweeper that abandons those
whose budget ends, in a task group of its own) and cancels what is left when it
closes.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import time
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from typing import Any, Final

import anyio
import anyio.to_thread
import pydantic

from natsmesh.client._client import Mesh
from natsmesh.observe._hooks import ServeObserver
from natsmesh.services._context import Context
from natsmesh.services._describe import EndpointState
from natsmesh.services._error_replies import ErrorReplies, validation_details
from natsmesh.services._spec import EndpointSpec
from natsmesh.transport import _eager
from natsmesh.transport._deadlines import Deadlines
from natsmesh.transport._transport import Msg, Requester
from natsmesh.wire import _codec, _headers
from natsmesh.wire._codec import Codec, DecodeError, Limits
from natsmesh.wire._errors import CallError, DeadlineExceeded, ErrorKind, ServiceError

log = logging.getLogger("natsmesh.service")

#: Budget for requests that arrive without one (plain ``nats req``, other languages).
DEFAULT_BUDGET: Final = 60.0
# Successful msgpack replies carry no headers at all: the caller knows its codec,
# and a header block costs a parse on every reply.
_JSON_REPLY_HEADERS: Final = {_codec.CONTENT_TYPE: _codec.JSON_TYPE}
_NO_HEADERS: Final[dict[str, str]] = {}
# How long the requests still running at close get to end once cancelled.
_CANCEL_GRACE: Final = 5.0


class Dispatcher:
    """Decodes, runs and answers the requests of one instance's endpoints."""

    def __init__(
        self,
        replies: Requester,
        errors: ErrorReplies,
        *,
        service: str,
        limits: Limits,
        max_concurrency: int,
        mesh: Mesh | None,
        observer: ServeObserver,
    ) -> None:
        self._service = service
        # Whether this instance runs under a compiled access policy: the caller a
        # request's subject names is then vouched for by the server (Context.caller).
        self.secured = False
        # The tap while someone watches, and a span per request with the otel extra.
        self._observer = observer
        self._limits = limits
        self._max_concurrency = max_concurrency
        # Replies go out through a Requester's publish(), which writes the frame
        # nats-py would, for a fraction of its cost.
        self._replies = replies
        self._errors = errors
        self._mesh = mesh
        # Looked up once: on 3.11 get_running_loop() is a getpid() system call.
        self._loop: asyncio.AbstractEventLoop | None = None
        # Requests being handled, by a per-dispatcher number (cheaper to look up from
        # inside the task than asyncio.current_task()).
        self._running: dict[int, asyncio.Task[None]] = {}
        # Error replies that had to wait (see _soon): kept, so none is collected meanwhile.
        self._callbacks: set[asyncio.Task[None]] = set()
        self._request_ids = itertools.count()
        # Handlers still running when their budget ends are cancelled: the caller
        # has stopped waiting, so the work is abandoned (at most one tick late).
        self._expired: set[int] = set()
        self._deadlines: Deadlines[int] = Deadlines(self._abandon, tick=0.02)
        self.in_flight = 0
        self._idle = anyio.Event()
        self._closing = False

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Take requests inside the block; on leaving, cancel those still running."""
        self._loop = asyncio.get_running_loop()
        try:
            async with self._deadlines.running():
                yield
        finally:
            self._closing = True
            await self._cancel_running()

    async def finish(self, timeout: float) -> None:
        """Wait (up to ``timeout``) for the requests in flight, then cancel those still running."""
        self._closing = True
        with anyio.move_on_after(timeout) as scope:
            if self.in_flight:
                await self._idle.wait()
        if scope.cancelled_caught:
            log.warning("%s: %d requests still running after drain", self._service, self.in_flight)
        await self._cancel_running()

    async def _cancel_running(self) -> None:
        tasks = [t for t in (*self._running.values(), *self._callbacks) if not t.done()]
        for task in tasks:
            task.cancel()
        if not tasks:
            return
        # Shielded: the owner may be closing because it was cancelled itself, and
        # these tasks must still be gone (or reported) before it returns.
        with anyio.CancelScope(shield=True), anyio.move_on_after(_CANCEL_GRACE):
            await asyncio.wait(tasks)
        left = [t for t in tasks if not t.done()]
        if left:
            log.warning("%s: %d requests ignored their cancellation", self._service, len(left))

    def _abandon(self, rid: int) -> None:
        task = self._running.get(rid)
        if task is not None:
            self._expired.add(rid)
            task.cancel()

    def on_request(self, ep: EndpointState, msg: Msg) -> None:
        """Take one request (called as nats-py reads the message: nothing here waits)."""
        received = time.monotonic()
        ep.num_requests += 1
        headers = msg.headers
        budget = None
        codec = Codec.MSGPACK
        try:
            if headers is None:
                headers = _NO_HEADERS
            else:
                budget = _headers.parse_budget(headers.get(_headers.BUDGET))
                if budget is not None and budget <= 0:
                    ep.dropped += 1  # the caller has given up: any work would be wasted
                    return
                if _headers.ATTEMPT in headers:
                    ep.retried += 1  # a caller's second (or later) try
                content_type = headers.get(_codec.CONTENT_TYPE)
                if content_type is not None:
                    codec = _codec.codec_for(content_type)
            if self.in_flight >= self._max_concurrency:
                ep.shed += 1
                self._soon(
                    self._errors.send(msg, ep, codec, ErrorKind.OVERLOADED, "overloaded, retry")
                )
                return
            argument = self._decode(ep.spec, msg.data, codec)
        except DecodeError as exc:
            self._soon(self._errors.send(msg, ep, codec, exc.kind, exc.reason))
            return
        except pydantic.ValidationError as exc:
            details = validation_details(exc)
            reason = "request failed validation"
            self._soon(self._errors.send(msg, ep, codec, ErrorKind.VALIDATION, reason, details))
            return
        deadline = received + (DEFAULT_BUDGET if budget is None else budget)
        context = None
        if ep.spec.context_param is not None:
            context = Context(
                service=self._service,
                endpoint=ep.spec.name,
                headers=headers,
                deadline=deadline,
                mesh=self._mesh,
                subject=msg.subject,
                secured=self.secured,
            )
        self._start(ep, msg, codec, argument, deadline, context)

    def _start(
        self,
        ep: EndpointState,
        msg: Msg,
        codec: Codec,
        argument: Any,
        deadline: float,
        context: Context | None,
    ) -> None:
        assert self._loop is not None, "requests arrive only while running()"
        self.in_flight += 1
        rid = next(self._request_ids)
        # The handler runs here and now, as the raw subscriber's code would; only one
        # that waits becomes a task (see _eager), owned by this dispatcher: tracked in
        # _running, cancelled when its budget ends, awaited or cancelled on close.
        try:
            task = _eager.start(
                self._handle(rid, ep, msg, codec, argument, deadline, context), self._loop
            )
        except asyncio.CancelledError:
            return  # the handler cancelled itself: as for a task, no reply
        if task is not None:
            self._running[rid] = task
            self._deadlines.add(rid, deadline)

    def _soon(self, reply: Coroutine[Any, Any, None]) -> None:
        """Send an error reply now, or (if it must wait) from a task kept until it is sent."""
        assert self._loop is not None, "requests arrive only while running()"
        task = _eager.start(reply, self._loop)
        if task is not None:
            self._callbacks.add(task)
            task.add_done_callback(self._replied)

    def _replied(self, task: asyncio.Task[None]) -> None:
        self._callbacks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("%s: an error reply was not sent: %s", self._service, task.exception())

    def _decode(self, spec: EndpointSpec, data: bytes, codec: Codec) -> Any:
        request = spec.request
        if request.kind == "bytes":
            if len(data) > self._limits.max_payload:
                raise DecodeError(ErrorKind.TOO_LARGE, "payload too large")
            return data
        value = _codec.decode(data, codec, self._limits)
        if request.adapter is None:
            return None
        # The adapter's own validator: TypeAdapter.validate_python only adds defaults.
        return request.adapter.validator.validate_python(value)

    async def _handle(
        self,
        rid: int,
        ep: EndpointState,
        msg: Msg,
        codec: Codec,
        argument: Any,
        deadline: float,
        context: Context | None,  # only for a handler that asks for it
    ) -> None:
        # One frame, no helper coroutine: this is the request path of every handler.
        start = time.perf_counter_ns()
        spec = ep.spec
        errors = ep.num_errors
        span = self._observer.begin(self._service, spec.name, msg.headers, context)
        try:
            try:
                kwargs: dict[str, Any] = {}
                if spec.request_param is not None:
                    kwargs[spec.request_param] = argument
                if spec.context_param is not None:
                    kwargs[spec.context_param] = context
                if spec.is_async:
                    result = await ep.handler(**kwargs)
                else:
                    result = await anyio.to_thread.run_sync(functools.partial(ep.handler, **kwargs))
            except asyncio.CancelledError:
                if rid not in self._expired:
                    raise
                self._expired.discard(rid)
                self._running[rid].uncancel()
                ep.error(504, "deadline exceeded")  # no reply: the caller has stopped waiting
                return
            payload = _encode(spec, result, codec)
        except ServiceError as exc:
            await self._errors.send(msg, ep, codec, ErrorKind.SERVICE, exc.message, code=exc.code)
        except DeadlineExceeded:
            if time.monotonic() >= deadline:
                ep.error(504, "deadline exceeded")  # as above: nobody is waiting any more
            else:
                await self._errors.send(msg, ep, codec, ErrorKind.DEADLINE, "deadline exceeded")
        except CallError as exc:
            await self._errors.failed_call(msg, ep, codec, exc, context)
        except Exception:
            await self._errors.internal(msg, ep, codec, context)
        else:
            if msg.reply:
                headers = None if codec is Codec.MSGPACK else _JSON_REPLY_HEADERS
                await self._replies.publish(msg.reply, payload, headers)
        finally:
            ep.processing_ns += time.perf_counter_ns() - start
            failed = ep.last_error if ep.num_errors != errors else None
            self._observer.done(ep.spec.name, msg.headers, failed, start, span)
            if self._running.pop(rid, None) is not None:
                self._expired.discard(rid)
                self._deadlines.discard(rid)
            self.in_flight -= 1
            if self._closing and not self.in_flight:
                self._idle.set()


def _encode(spec: EndpointSpec, result: Any, codec: Codec) -> bytes:
    response = spec.response
    if response.kind == "bytes" and isinstance(result, bytes | bytearray):
        return bytes(result)
    if response.kind == "none" or result is None:
        return b""
    assert response.adapter is not None
    if response.model is not None and not isinstance(result, response.model):
        # A dict (or another model) shaped like the response is accepted, as
        # FastAPI does; anything that does not validate is a handler bug (500).
        result = response.adapter.validate_python(result)
    if codec is Codec.JSON:
        return response.adapter.dump_json(result)
    if response.model is not None:
        # The model's own serializer skips the adapter's type dispatch.
        return _codec.encode(result.__pydantic_serializer__.to_python(result, mode="json"), codec)
    return _codec.encode(response.adapter.dump_python(result, mode="json"), codec)
