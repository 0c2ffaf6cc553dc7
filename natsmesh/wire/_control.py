"""The control plane's wire: its subjects, messages and tables (pure, no I/O).

Instances announce themselves, heartbeat and leave on ``<prefix>._ctl.*``; the
controller keeps the registry and the route tables in a JetStream KV bucket, one
key per service and table, so a change to one service rewrites one key:

================================  ==================================================
subject or key                    carries
================================  ==================================================
``<prefix>._ctl.announce.<svc>``  :class:`Announcement`, on start (full description)
``<prefix>._ctl.heartbeat.<svc>`` :class:`Heartbeat`, every interval (small)
``<prefix>._ctl.leave.<svc>``     :class:`Leave`, on a graceful stop
``<prefix>._ctl.status.report.<who>`` :class:`StatusReport`, from every client on a change
``<prefix>._ctl.outlier.<svc>.<who>`` :class:`OutlierReport`, from a caller in queue mode
``<prefix>._ctl.table.<key>``     every write of a KV key, republished by the server
``<prefix>._ctl.eject.<svc>.<id>`` :class:`EjectCommand`, controller to one instance
``<prefix>._ctl.routes.apply``    request: a route file; reply: :class:`ApplyReply`
``<prefix>._ctl.routes.show``     request (a service name, or empty); reply: :class:`RoutesView`
``<prefix>._ctl.status.show``     request; reply: :class:`StatusView`
KV ``registry.<service>``         :class:`RegistryTable`
KV ``routes.<service>``           :class:`RouteTable`
KV ``http``                       :class:`HttpTable`
KV ``leader``                     :class:`Lease`
================================  ==================================================

A table's revision is its KV revision: it only grows, across controller restarts too.
An instance's messages carry its service's name in the subject as well as in the body:
NATS permissions can then let each service speak for itself alone, and the controller
drops a message whose body names another service than its subject. Reports from
callers end in ``<who>``, the reporting identity: the compiled policy lets only
that identity publish there, and the controller takes the sender from the subject.
"""

from __future__ import annotations

from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from natsmesh.wire._subjects import validate_name, validate_token

BUCKET: Final = "natsmesh"
LEADER_KEY: Final = "leader"
HTTP_KEY: Final = "http"
#: The name under which a client's table cache keeps, and reports, the ``http`` table:
#: not a valid service name (those start with a letter), so it never meets a service's.
HTTP_TABLE: Final = "(http)"
MAX_CONTROL_MESSAGE: Final = 256 * 1024
#: Request header of ``routes.apply``: "1" applies a config even where it names
#: services, subsets or HTTP targets that no live instance serves.
ALLOW_EMPTY: Final = "Mesh-Allow-Empty"


def registry_key(service: str) -> str:
    return f"registry.{service}"


def routes_key(service: str) -> str:
    return f"routes.{service}"


KV_STREAM: Final = f"KV_{BUCKET}"


def table_subject(prefix: str, key: str) -> str:
    """Where the bucket republishes every write of ``key`` (a KV key, or ``>``)."""
    return f"{prefix}._ctl.table.{key}"


def direct_get_subject(key: str) -> str:
    """The JetStream direct get of ``key``'s last value (no body; grantable per key)."""
    return f"$JS.API.DIRECT.GET.{KV_STREAM}.$KV.{BUCKET}.{key}"


def control_subject(prefix: str, name: str) -> str:
    return f"{prefix}._ctl.{name}"


#: How an access policy's identities' inbox prefixes begin: ``_INBOX_<identity>``.
IDENTITY_INBOX: Final = "_INBOX_"
ANONYMOUS: Final = "anonymous"


def identity_of(inbox: str, fallback: str) -> str:
    """The identity a connection speaks as, from one of its inboxes (``nc.new_inbox()``).

    Under a compiled policy each identity's inbox prefix is ``_INBOX_<identity>``
    and its grants are bound to that name; without one (dev mode) it is
    ``fallback`` when that is a valid subject token, else ``anonymous``.
    """
    head = inbox.partition(".")[0]
    named = head[len(IDENTITY_INBOX) :] if head.startswith(IDENTITY_INBOX) else ""
    for candidate in (named, fallback):
        try:
            return validate_token("identity", candidate)
        except ValueError:
            continue
    return ANONYMOUS


def status_subject(prefix: str, identity: str) -> str:
    """Where a client reports what it applied; the last token names the sender.

    Five tokens, like outlier reports: no ``*`` caller's grant (``<prefix>.*.*``,
    ``<prefix>.*.*.*``) covers them, so only the explicit per-identity grant does.
    """
    return f"{prefix}._ctl.status.report.{identity}"


def outlier_subject(prefix: str, service: str, reporter: str) -> str:
    """Where ``reporter`` (an identity) reports an outlier instance of ``service``."""
    return f"{prefix}._ctl.outlier.{service}.{reporter}"


def instance_subject(prefix: str, kind: str, service: str) -> str:
    """Where one service's instances announce, heartbeat (``kind``) and leave."""
    return f"{prefix}._ctl.{kind}.{service}"


def eject_subject(prefix: str, service: str, instance: str) -> str:
    """Where the controller tells one instance to leave its queue groups for a while."""
    return f"{prefix}._ctl.eject.{service}.{instance}"


def subject_service(subject: str) -> str:
    """The service an instance subject speaks for: its last token."""
    return subject.rpartition(".")[2]


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EndpointEntry(_Wire):
    name: str = Field(max_length=64)
    subject: str = Field(max_length=256)
    idempotent: bool = False
    # JSON Schemas as JSON text, as $SRV.INFO carries them ("" when unknown).
    request_schema: str = Field(default="", max_length=64 * 1024)
    response_schema: str = Field(default="", max_length=64 * 1024)


class Announcement(_Wire):
    """Everything the registry knows of one instance."""

    service: str
    id: str
    version: str = Field(max_length=64)
    subset: str
    endpoints: tuple[EndpointEntry, ...] = Field(default=(), max_length=256)
    metadata: dict[str, str] = Field(default_factory=dict, max_length=64)
    zone: str = Field(default="", max_length=64)
    mesh: bool = True  # False: a plain NATS micro service found through $SRV
    healthy: bool = True

    _service = field_validator("service")(lambda v: validate_token("service", v))
    _id = field_validator("id")(lambda v: validate_token("instance id", v))
    _subset = field_validator("subset")(lambda v: validate_name("subset", v))


class Heartbeat(_Wire):
    service: str
    id: str
    healthy: bool = True

    _service = field_validator("service")(lambda v: validate_token("service", v))
    _id = field_validator("id")(lambda v: validate_token("instance id", v))


class Leave(_Wire):
    service: str
    id: str

    _service = field_validator("service")(lambda v: validate_token("service", v))
    _id = field_validator("id")(lambda v: validate_token("instance id", v))


class OutlierReport(_Wire):
    """A caller's evidence that one instance, reached through a queue group, fails.

    The instance is named by its own error replies; ``failures`` of the ``calls``
    the caller made to the service within ``window`` seconds came from it.
    """

    service: str
    instance: str
    caller: str = Field(min_length=1, max_length=256)
    failures: int = Field(ge=1, le=10_000_000)
    calls: int = Field(ge=0, le=10_000_000)
    window: float = Field(gt=0, le=3600)

    _service = field_validator("service")(lambda v: validate_token("service", v))
    _instance = field_validator("instance")(lambda v: validate_token("instance id", v))


class EjectCommand(_Wire):
    """The controller to one instance: leave your queue groups for ``seconds``."""

    service: str
    id: str
    seconds: float = Field(gt=0, le=3600)
    ejection: int = Field(default=1, ge=1, le=1_000_000)  # the instance's how-manieth

    _service = field_validator("service")(lambda v: validate_token("service", v))
    _id = field_validator("id")(lambda v: validate_token("instance id", v))


class RegistryTable(_Wire):
    service: str
    instances: tuple[Announcement, ...] = ()


class RouteTable(_Wire):
    service: str
    policy: dict[str, Any]  # a validated natsmesh.traffic._routes.ServicePolicy, as JSON


class HttpTable(_Wire):
    routes: tuple[dict[str, Any], ...] = ()


class Lease(_Wire):
    holder: str
    expires: float  # time.time(): controllers share no monotonic clock


class Applied(_Wire):
    """What one client applied for one service: KV revisions, 0 for none."""

    routes: int = 0
    registry: int = 0
    rejected: str = ""


class StatusReport(_Wire):
    client: str = Field(max_length=256)
    kind: Literal["client", "gateway", "service"] = "client"
    services: dict[str, Applied] = Field(default_factory=dict, max_length=10_000)
    interval: float = Field(default=10.0, gt=0, le=3600)  # seconds to the next report
    left: bool = False  # the client closed: its last report


class ApplyReply(_Wire):
    ok: bool
    revisions: dict[str, int] = Field(default_factory=dict)
    unchanged: tuple[str, ...] = ()
    problems: tuple[dict[str, str], ...] = ()  # why the config is invalid: every reason
    warnings: tuple[dict[str, str], ...] = ()  # what it names that nothing live serves
    error: str = ""


class StatusRow(_Wire):
    client: str
    kind: str
    service: str
    applied: int
    latest: int
    state: Literal["SYNCED", "STALE", "REJECTED", "GONE"]
    reason: str = ""


class SchemaConflict(_Wire):
    """Instances of one service, subset and endpoint that publish different schemas.

    ``instances`` groups the instance ids by the schema they publish, one group per
    variant: a caller validating replies against one of them fails on the others.
    """

    service: str
    subset: str
    endpoint: str
    part: Literal["request", "response"]
    instances: tuple[tuple[str, ...], ...]

    def __str__(self) -> str:
        groups = " vs ".join(", ".join(ids) for ids in self.instances)
        return (
            f"{self.service} {self.subset} {self.endpoint}: {len(self.instances)} different"
            f" {self.part} schemas among its instances ({groups})"
        )


class StatusView(_Wire):
    rows: tuple[StatusRow, ...] = ()
    conflicts: tuple[SchemaConflict, ...] = ()
