"""The grants of one identity of a mesh access policy (pure, no I/O).

:func:`permissions` turns one identity into the publish and subscribe grants
nats-server enforces (``natsmesh.security._render`` writes them out; secrets are made
and kept by ``natsmesh.security._auth_files``): this module only decides who may do
what. What each kind gets, and why:

- every identity reads its replies under its own inbox prefix
  (``_INBOX_<identity>``, :func:`inbox_prefix`) and nowhere else, so nobody can
  read another identity's replies;
- ``calls`` become publish grants on exactly those endpoints: the queue-group
  subject, every subset's subject and every instance's subject of each;
- a service subscribes to its own subjects only, and to its queue subjects
  only inside its own queue groups (``mesh.<svc>.* <svc>``,
  ``mesh.<svc>.*.* <svc>.*``), plus its instance subjects and its own ``$SRV``
  subjects; it replies through ``allow_responses`` (one reply per request it
  received); it may announce, heartbeat and leave under its own name only, and
  hears eject commands (``_ctl.eject.<svc>.<id>``) for its own instances only;
- a caller listing ``calls`` may report queue-mode outliers of exactly those
  services, under its own name only (``_ctl.outlier.<svc>.<identity>``); a ``*``
  caller reports none, and its calls rely on retries and hedging;
- every identity reports its status under its own name only
  (``_ctl.report.<identity>``): the controller takes the sender from the subject;
- the gateway publishes requests (and ``$SRV`` discovery) and nothing on the
  control plane but its status reports;
- the controller alone may use the JetStream API (it creates and writes the
  ``natsmesh`` KV bucket); it hears announcements, heartbeats, leaves, outlier
  reports and status reports, answers the operators' control requests, and is
  the only one that may publish eject commands (``_ctl.eject.>``);
- operators may show routes and status; an ``admin`` may also apply routes;
- every identity may publish summaries of its own calls under its own name
  (``_ctl.observe.metrics.<name>.*``) and hear an observer's interest; a service
  publishes tap samples and its failed requests under its own name only; operators
  (the dashboard) may ask for and read them, and nothing else of the kind
  (``natsmesh.wire._observe``);
- a caller reads the tables of the services it calls, and nothing else of
  JetStream: a direct get per key (``$JS.API.DIRECT.GET.KV_natsmesh.$KV.natsmesh.<key>``)
  and a subscription to the subject each key is republished to
  (``_ctl.table.<key>``); the gateway also reads ``http``; a ``*`` caller reads
  every key. Nobody but the controller may create a consumer: a consumer's
  delivery subject is checked against nobody's permissions, so the grant would
  let its holder inject messages into any subject and fill the stream's
  consumer limit.

No grant anywhere subscribes to a subject of a service other than the
identity's own, so a request to an unknown service meets no subscriber and
fails with no responders at once.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from natsmesh.security._policy import ANY, Identity, Policy
from natsmesh.wire import _observe
from natsmesh.wire._control import (
    BUCKET,
    HTTP_KEY,
    control_subject,
    direct_get_subject,
    eject_subject,
    instance_subject,
    outlier_subject,
    registry_key,
    routes_key,
    status_subject,
    table_subject,
)
from natsmesh.wire._subjects import (
    Subjects,
    srv_subjects,
    validate_name,
)

__all__ = ["Permissions", "inbox_prefix", "permissions", "table_reads"]

_SRV_VERBS: Final = ("PING", "INFO", "STATS")
_KV_STREAM: Final = f"KV_{BUCKET}"
_WILDCARD: Final = "*"


@dataclass(frozen=True, slots=True)
class Permissions:
    """What one identity may publish and subscribe to (subjects as nats-server reads them).

    A subscribe entry ``"<subject> <queue>"`` allows that subject only inside a queue
    group matching ``<queue>``; ``responses`` allows one reply to each request the
    identity received (nats-server's ``allow_responses``).
    """

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    publish_deny: tuple[str, ...] = ()
    responses: bool = False


def inbox_prefix(identity: str) -> str:
    """The identity's own inbox prefix: its replies arrive under ``<prefix>.>`` only.

    ``_INBOX_<identity>`` rather than ``_INBOX.<identity>``: a distinct first token,
    so that no grant on the usual ``_INBOX.>`` could ever cover it.
    """
    return f"_INBOX_{validate_name('identity', identity)}"


def _calls(subjects: Subjects, calls: Iterable[str], identity: str) -> list[str]:
    """Publish grants for ``calls``: queue-group, subset and instance subjects of each,
    plain (anonymous) and with the identity's own name in them (``..._c.<identity>``)."""
    named = Subjects.caller_suffix(identity)
    grants: list[str] = []
    for call in calls:
        if call == ANY:
            service = endpoint = _WILDCARD
        else:
            service, _, endpoint = call.partition(".")
        plain = [
            subjects.endpoint(service, endpoint),
            subjects.subset(service, _WILDCARD, endpoint),
            subjects.instance(service, _WILDCARD, endpoint),
        ]
        grants += plain + [subject + named for subject in plain]
    return grants


def _reports(prefix: str, identity: Identity) -> list[str]:
    """Outlier report grants, under the identity's own name, one per service called by
    name (never for ``*``); and its status reports."""
    services = dict.fromkeys(c.partition(".")[0] for c in identity.calls if c != ANY)
    outliers = [outlier_subject(prefix, service, identity.name) for service in services]
    return [*outliers, status_subject(prefix, identity.name)]


def table_reads(prefix: str, identity: Identity) -> tuple[list[str], list[str]]:
    """What reading its tables takes: (direct gets to publish, table subjects to follow)."""
    # Operators read every table: routes.show tells them as much, and the dashboard
    # shows each service's routes and instances.
    if ANY in identity.calls or identity.kind == "operator":
        return [direct_get_subject(">")], [table_subject(prefix, ">")]
    services = dict.fromkeys(c.partition(".")[0] for c in identity.calls)
    keys = [key for s in services for key in (routes_key(s), registry_key(s))]
    if identity.kind == "gateway":
        keys.append(HTTP_KEY)
    return [direct_get_subject(k) for k in keys], [table_subject(prefix, k) for k in keys]


def _srv_requests() -> list[str]:
    """Discovery requests to any service: ``$SRV.<verb>[.<name>[.<id>]]``."""
    return [s for verb in _SRV_VERBS for s in srv_subjects(verb, _WILDCARD, _WILDCARD)]


def _srv_own(service: str) -> list[str]:
    """The ``$SRV`` subjects an instance of ``service`` answers (ADR-32), its own only."""
    return [s for verb in _SRV_VERBS for s in srv_subjects(verb, service, _WILDCARD)]


_INSTANCE_MESSAGES: Final = ("announce", "heartbeat", "leave")


def permissions(policy: Policy, identity: Identity) -> Permissions:
    """The grants of ``identity`` under ``policy`` (see the module docstring for why)."""
    if identity.kind == "service":
        return _service(policy.prefix, identity)
    if identity.kind == "controller":
        return _controller(policy.prefix, identity)
    return _caller(policy.prefix, identity)


def _service(prefix: str, identity: Identity) -> Permissions:
    subjects, name = Subjects(prefix), identity.name
    named = Subjects.caller_suffix(_WILDCARD)
    own = [instance_subject(prefix, kind, name) for kind in _INSTANCE_MESSAGES]
    reads, follows = table_reads(prefix, identity)
    return Permissions(
        publish=_unique(
            [
                *_calls(subjects, identity.calls, identity.name),
                *_reports(prefix, identity),
                *_srv_requests(),
                *own,
                *reads,
                *_observed(prefix, name),
            ]
        ),
        # Queue-only grants: a plain subscription (or another queue group) on these
        # subjects would receive a copy of every request, or a share of another group's.
        subscribe=_unique(
            [
                f"{subjects.endpoint(name, _WILDCARD)} {Subjects.queue_group(name)}",
                f"{subjects.subset(name, _WILDCARD, _WILDCARD)} "
                f"{Subjects.queue_group(name, _WILDCARD)}",
                subjects.instance(name, _WILDCARD, _WILDCARD),
                # The same, with the caller named in the subject: any caller's name.
                f"{subjects.endpoint(name, _WILDCARD)}{named} {Subjects.queue_group(name)}",
                f"{subjects.subset(name, _WILDCARD, _WILDCARD)}{named} "
                f"{Subjects.queue_group(name, _WILDCARD)}",
                subjects.instance(name, _WILDCARD, _WILDCARD) + named,
                *_srv_own(name),
                eject_subject(prefix, name, _WILDCARD),
                *follows,
                f"{inbox_prefix(identity.name)}.>",
                _observe.metrics_interest(prefix),
                _observe.tap_interest(prefix, name),
            ]
        ),
        responses=True,
    )


def _controller(prefix: str, identity: Identity) -> Permissions:
    hears = [instance_subject(prefix, kind, _WILDCARD) for kind in _INSTANCE_MESSAGES]
    hears += [outlier_subject(prefix, _WILDCARD, _WILDCARD), status_subject(prefix, _WILDCARD)]
    answers = ("routes.apply", "routes.show", "status.show")
    return Permissions(
        publish=_unique(
            [
                "$JS.API.>",
                f"$KV.{BUCKET}.>",
                f"$JS.FC.{_KV_STREAM}.>",
                *_srv_requests(),
                control_subject(prefix, "eject.>"),
            ]
        ),
        subscribe=_unique(
            [
                *hears,
                *(control_subject(prefix, name) for name in answers),
                f"{inbox_prefix(identity.name)}.>",
            ]
        ),
        responses=True,
    )


def _caller(prefix: str, identity: Identity) -> Permissions:
    """A gateway or an operator: requests, discovery, table reads; never a responder."""
    control = []
    if identity.kind == "operator":
        control = [control_subject(prefix, "routes.show"), control_subject(prefix, "status.show")]
        if identity.admin:
            control.append(control_subject(prefix, "routes.apply"))
    deny: list[str] = []
    if ANY in identity.calls:
        # mesh.*.* and mesh.*.*.* also cover the control plane's three- and four-token
        # subjects (routes.apply, announce.<svc>, ...): deny them, as deny wins over any
        # allow in nats-server. Its five-token reports (status.report.<identity>) are
        # outside every wildcard grant, so the explicit grant of its own one stands.
        deny = [control_subject(prefix, "*"), control_subject(prefix, "*.*")]
        # ...and their named forms (mesh.*.*._c.<me>, mesh.*.*.*._c.<me>).
        deny += [control_subject(prefix, f"*{Subjects.caller_suffix('*')}")]
        deny += [control_subject(prefix, f"*.*{Subjects.caller_suffix('*')}")]
    calls = _calls(Subjects(prefix), identity.calls, identity.name)
    reads, follows = table_reads(prefix, identity)
    publish = [_observe.metrics_subject(prefix, identity.name, _WILDCARD)]
    subscribe = [*follows, f"{inbox_prefix(identity.name)}.>", _observe.metrics_interest(prefix)]
    if identity.kind == "operator":
        # The dashboard and `natsmesh top`/`tap`: ask for and read observations, no more.
        publish += [_observe.metrics_interest(prefix), _observe.tap_interest(prefix, _WILDCARD)]
        subscribe += _observe.observed_wildcards(prefix)
    return Permissions(
        publish=_unique(
            [*calls, *_reports(prefix, identity), *_srv_requests(), *control, *reads, *publish]
        ),
        subscribe=_unique(subscribe),
        publish_deny=tuple(deny),
    )


def _observed(prefix: str, service: str) -> list[str]:
    """A service instance's summaries (of its own calls), tap samples and failures, by name."""
    return [
        _observe.metrics_subject(prefix, service, _WILDCARD),
        _observe.tap_subject(prefix, service, _WILDCARD),
        _observe.errors_subject(prefix, service, _WILDCARD),
    ]


def _unique(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))
