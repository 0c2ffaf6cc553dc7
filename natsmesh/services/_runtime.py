"""Run one instance of a ``@service``: subscribe, decode, validate, dispatch, reply, drain.

The request path, all in the subscription callback; a handler that waits (on
I/O, a nested call, a worker thread) continues in a task of its own::

    budget spent? → drop (counted)          in-flight at the limit? → 503 overloaded
    decode (bounded) → validate → handler (abandoned when the budget ends) → encode → reply

Every endpoint listens on three subjects (see ``_subjects``): the service's
queue group, its subset's queue group, and a plain per-instance subject. The
instance also answers the NATS Services API (``$SRV``) on plain subscriptions.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import os
import time
from collections.abc import Callable, Coroutine
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Final, Self

import anyio
import anyio.to_thread
import pydantic

from natsmesh.client._client import Mesh
from natsmesh.observe._hooks import ServeObserver
from natsmesh.services._context import Context
from natsmesh.services._describe import EndpointState, Instance, announcement, info, ping, stats
from natsmesh.services._error_replies import ErrorReplies, validation_details
from natsmesh.services._membership import QueueMembership
from natsmesh.services._spec import EndpointSpec, ServiceSpec, spec_of
from natsmesh.transport import _eager
from natsmesh.transport._deadlines import Deadlines
from natsmesh.transport._tasks import stop
from natsmesh.transport._transport import (
    NATS,
    Msg,
    Requester,
    Subscription,
    connect,
    new_id,
    server_cluster,
    subscribe_direct,
)
from natsmesh.wire import _codec, _headers, _micro
from natsmesh.wire._codec import Codec, DecodeError, Limits
from natsmesh.wire._control import Announcement, Heartbeat, Leave, instance_subject
from natsmesh.wire._errors import (
    CallError,
    DeadlineExceeded,
    ErrorKind,
    ServiceError,
)
from natsmesh.wire._subjects import Subjects, srv_subjects

log = logging.getLogger("natsmesh.service")

#: Budget for requests that arrive without one (plain ``nats req``, other languages).
DEFAULT_BUDGET: Final = 60.0
# Successful msgpack replies carry no headers at all: the caller knows its codec,
# and a header block costs a parse on every reply.
_JSON_REPLY_HEADERS: Final = {_codec.CONTENT_TYPE: _codec.JSON_TYPE}
_NO_HEADERS: Final[dict[str, str]] = {}


class ServiceRunner:
    """Runs one instance of a ``@service`` class (or instance) on NATS.

    Use as ``async with ServiceRunner(Shop(), nats=url) as runner: ...``; leaving
    the block drains: it stops taking requests, finishes those in flight (up to
    ``drain_timeout``), and leaves. An object that is itself an async context
    manager is entered before the first request and exited after the last.

    ``nats`` is a server URL (default: ``NATS_URL``, then ``nats://127.0.0.1:4222``;
    several servers comma-separated) or a connection the caller owns.
    """

    def __init__(
        self,
        target: object,
        *,
        nats: str | NATS | None = None,
        prefix: str = "mesh",
        instance_id: str | None = None,
        limits: Limits = _codec.DEFAULT_LIMITS,
        max_concurrency: int | None = None,
        drain_timeout: float = 30.0,
        heartbeat: float = 2.0,
        zone: str | None = None,
    ) -> None:
        self.spec: ServiceSpec = spec_of(target)
        self._target = target() if isinstance(target, type) else target
        self._nats = nats
        self._subjects = Subjects(prefix)
        self.id = instance_id or new_id()
        self._limits = limits
        self._max_concurrency = max_concurrency or self.spec.max_concurrency
        self._drain_timeout = drain_timeout
        self._heartbeat = heartbeat
        self._zone = zone if zone is not None else os.environ.get("NATSMESH_ZONE")
        self._nc: NATS | None = None
        # Set on entry. The loop is looked up once: on 3.11 get_running_loop() is a
        # getpid() system call. Replies go out through a Requester's publish(), which
        # writes the frame nats-py would, for a fraction of its cost.
        self._loop: asyncio.AbstractEventLoop
        self._replies: Requester
        self._errors: ErrorReplies
        self._mesh: Mesh | None = None
        self._endpoints: list[EndpointState] = []
        self._request_subs: list[Subscription] = []  # the per-instance ones
        self._queues: QueueMembership | None = None  # the queue-group ones, set on entry
        self._stack = AsyncExitStack()
        # Requests being handled, by a per-runner number (cheaper to look up from
        # inside the task than asyncio.current_task()).
        self._running: dict[int, asyncio.Task[None]] = {}
        # Error replies that had to wait (see _soon): kept, so none is collected meanwhile.
        self._callbacks: set[asyncio.Task[None]] = set()
        self._request_ids = itertools.count()
        # Handlers still running when their budget ends are cancelled: the caller
        # has stopped waiting, so the work is abandoned (at most one tick late).
        self._expired: set[int] = set()
        self._deadlines: Deadlines[int] = Deadlines(self._abandon, tick=0.02)
        self._in_flight = 0
        self._idle = anyio.Event()
        self._draining = False
        self.started = datetime.now(UTC)
        self._observer = ServeObserver()

    # -- lifecycle -----------------------------------------------------------------

    async def __aenter__(self) -> Self:
        stack = self._stack
        self._loop = asyncio.get_running_loop()
        try:
            if isinstance(self._nats, NATS):
                self._nc = self._nats
            else:
                self._nc = await connect(self._nats, name=f"{self.spec.name}/{self.id}")
                stack.push_async_callback(_close, self._nc)
            self._replies = Requester(self._nc)
            self._errors = ErrorReplies(self._replies, service=self.spec.name, instance_id=self.id)
            self._queues = QueueMembership(
                self._nc,
                prefix=self._subjects.prefix,
                service=self.spec.name,
                instance_id=self.id,
                on_change=self._beat,
            )
            self._mesh = await stack.enter_async_context(
                Mesh(
                    self._nc,
                    name=f"{self.spec.name}/{self.id}",
                    prefix=self._subjects.prefix,
                    kind="service",
                    zone=self._zone,
                )
            )
            if hasattr(self._target, "__aenter__"):
                await stack.enter_async_context(self._target)  # type: ignore[arg-type]
            stack.push_async_callback(self._cancel_running)
            await stack.enter_async_context(self._deadlines.running())
            if self._zone is None:
                self._zone = server_cluster(self._nc)
            await self._observer.start(
                self._nc, prefix=self._subjects.prefix, service=self.spec.name, instance=self.id
            )
            stack.push_async_callback(self._observer.stop)
            await self._subscribe_srv()
            await self._subscribe_endpoints()
            await self._queues.listen()
            # The subscriptions are only live once the server has processed them.
            await self._nc.flush()
            await self._publish_control("announce", self.announcement())
            beating = asyncio.get_running_loop().create_task(self._heartbeats())
            stack.callback(beating.cancel)
        except BaseException:
            await stack.aclose()
            raise
        log.info(
            "%s %s (%s) serving as %s", self.spec.name, self.spec.version, self.spec.subset, self.id
        )
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            await self.drain()
        finally:
            await self._stack.aclose()

    async def drain(self) -> None:
        """Stop taking requests and wait (up to ``drain_timeout``) for those in flight."""
        if self._draining:
            return
        self._draining = True
        log.info("%s/%s: draining", self.spec.name, self.id)
        # No ejection ends, and none starts, once draining: the queue groups are left for good.
        queued = await self._queues.close() if self._queues is not None else []
        nc = self._nc
        if nc is not None and nc.is_connected:
            # Leave the registry first: callers that pick instances stop picking this one.
            await self._publish_control("leave", Leave(service=self.spec.name, id=self.id))
        if nc is not None and nc.is_connected:
            # drain() unsubscribes, then waits until the messages already delivered
            # to this client have been dispatched, so none is lost in the switch.
            with anyio.move_on_after(self._drain_timeout):
                for sub in [*queued, *self._request_subs]:
                    await sub.drain()  # type: ignore[no-untyped-call]
        with anyio.move_on_after(self._drain_timeout) as scope:
            if self._in_flight:
                await self._idle.wait()
        if scope.cancelled_caught:
            log.warning(
                "%s: %d requests still running after drain", self.spec.name, self._in_flight
            )
        await self._cancel_running()

    def _abandon(self, rid: int) -> None:
        task = self._running.get(rid)
        if task is not None:
            self._expired.add(rid)
            task.cancel()

    async def _cancel_running(self) -> None:
        await stop([*self._running.values(), *self._callbacks])

    # -- the control plane -------------------------------------------------------------

    def _self(self) -> Instance:
        return Instance(
            spec=self.spec,
            id=self.id,
            subjects=self._subjects,
            zone=self._zone or "",
            started=self.started,
        )

    def announcement(self) -> Announcement:
        """What this instance tells the controller about itself."""
        return announcement(self._self())

    async def _heartbeats(self) -> None:
        while True:
            await anyio.sleep(self._heartbeat)
            with contextlib.suppress(Exception):  # a reconnecting client buffers or drops
                await self._beat()

    async def _beat(self) -> None:
        # Unhealthy while out of the queue groups: callers that pick instances skip it too.
        healthy = self._queues is None or self._queues.healthy
        beat = Heartbeat(service=self.spec.name, id=self.id, healthy=healthy)
        await self._publish_control("heartbeat", beat)

    async def _publish_control(self, name: str, message: pydantic.BaseModel) -> None:
        assert self._nc is not None
        subject = instance_subject(self._subjects.prefix, name, self.spec.name)
        await self._nc.publish(subject, message.model_dump_json().encode())

    # -- subscriptions ---------------------------------------------------------------

    async def _subscribe_endpoints(self) -> None:
        assert self._nc is not None
        name, subset, s = self.spec.name, self.spec.subset, self._subjects
        for spec in self.spec.endpoints:
            handler = getattr(self._target, spec.attribute)
            ep = EndpointState(spec, handler, s.endpoint(name, spec.name))
            self._endpoints.append(ep)
            deliver = functools.partial(self._on_request, ep)
            assert self._queues is not None
            await self._queues.join(ep.subject, s.queue_group(name), deliver)
            subset_subject = s.subset(name, subset, spec.name)
            await self._queues.join(subset_subject, s.queue_group(name, subset), deliver)
            own = s.instance(name, self.id, spec.name)
            self._request_subs.append(await subscribe_direct(self._nc, own, deliver))

    async def _subscribe_srv(self) -> None:
        assert self._nc is not None
        answers: dict[str, Callable[[], bytes]] = {
            "PING": self._ping,
            "INFO": self._info,
            "STATS": self._stats,
        }
        for verb, answer in answers.items():
            for subject in srv_subjects(verb, self.spec.name, self.id):
                await self._nc.subscribe(subject, cb=functools.partial(self._on_srv, answer))

    async def _on_srv(self, answer: Callable[[], bytes], msg: Msg) -> None:
        if msg.reply:
            await msg.respond(answer())

    # -- the request path ------------------------------------------------------------

    def _on_request(self, ep: EndpointState, msg: Msg) -> None:
        # Called as nats-py reads the message (see subscribe_direct): nothing here waits.
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
            if self._in_flight >= self._max_concurrency:
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
            self._soon(
                self._errors.send(
                    msg,
                    ep,
                    codec,
                    ErrorKind.VALIDATION,
                    "request failed validation",
                    validation_details(exc),
                )
            )
            return
        deadline = received + (DEFAULT_BUDGET if budget is None else budget)
        context = None
        if ep.spec.context_param is not None:
            context = Context(
                service=self.spec.name,
                endpoint=ep.spec.name,
                headers=headers,
                deadline=deadline,
                mesh=self._mesh,
            )
        self._in_flight += 1
        rid = next(self._request_ids)
        # The handler runs here and now, as the raw subscriber's code would; only one
        # that waits becomes a task (see _eager), owned by this runner: tracked in
        # _running, cancelled when its budget ends, awaited or cancelled by drain.
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
        task = _eager.start(reply, self._loop)
        if task is not None:
            self._callbacks.add(task)
            task.add_done_callback(self._replied)

    def _replied(self, task: asyncio.Task[None]) -> None:
        self._callbacks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("%s: an error reply was not sent: %s", self.spec.name, task.exception())

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
        start = time.perf_counter_ns()
        spec = ep.spec
        errors = ep.num_errors
        span = self._observer.begin(f"{self.spec.name}.{spec.name}", msg.headers, context)
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
            payload = self._encode(spec, result, codec)
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
            self._observer.done(  # observe hook: the tap while someone watches, the span
                spec.name,
                msg.headers,
                ep.last_error if ep.num_errors != errors else None,
                start,
                span,
            )
            if self._running.pop(rid, None) is not None:
                self._expired.discard(rid)
                self._deadlines.discard(rid)
            self._in_flight -= 1
            if self._draining and not self._in_flight:
                self._idle.set()

    @staticmethod
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
            return _codec.encode(
                result.__pydantic_serializer__.to_python(result, mode="json"), codec
            )
        return _codec.encode(response.adapter.dump_python(result, mode="json"), codec)

    # -- the NATS Services API ----------------------------------------------------------

    def _ping(self) -> bytes:
        return _micro.dump(ping(self._self()))

    def info(self) -> _micro.Info:
        return info(self._self(), self._endpoints)

    def _info(self) -> bytes:
        return _micro.dump(self.info())

    def stats(self) -> _micro.Stats:
        queues = self._queues.stats() if self._queues is not None else None
        return stats(self._self(), self._endpoints, in_flight=self._in_flight, queue=queues)

    def _stats(self) -> bytes:
        return _micro.dump(self.stats())


async def _close(nc: NATS) -> None:
    # close() alone can drop what is still buffered: the last replies of a drain.
    with anyio.move_on_after(5):
        if nc.is_connected:
            await nc.flush()
    await nc.close()
