"""Every NATS subject and queue group natsmesh uses, and the names that go into them.

Names from users (services, endpoints, subsets) are validated here and only here,
so that ``.``, ``*``, ``>`` and whitespace can never become subject tokens or
wildcards. The scheme, for prefix ``mesh``:

====================================  ===================  ==============================
subject                               queue group          who receives
====================================  ===================  ==============================
``mesh.<service>.<endpoint>``         ``<service>``        one instance of any version
``mesh.<service>.<subset>.<endpoint>`` ``<service>.<subset>`` one instance of that subset
``mesh._i.<service>.<id>.<endpoint>`` (none)               exactly that instance
``$SRV.PING|INFO|STATS[.<name>[.<id>]]`` (none)            the NATS Services API
====================================  ===================  ==============================

Names start with a letter, so the reserved ``_i`` token cannot collide with a service.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from natsmesh.wire._errors import InvalidName

MAX_NAME_LEN: Final = 64
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")
# Instance ids are generated (nuid) but arrive from the wire in $SRV answers and headers.
_ID = re.compile(r"[A-Za-z0-9_-]+")
_PREFIX_TOKEN = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")

SRV_PREFIX: Final = "$SRV"
INSTANCE_TOKEN: Final = "_i"  # noqa: S105  (a subject token, not a password)
DEFAULT_PREFIX: Final = "mesh"


def validate_name(kind: str, value: object) -> str:
    """Return ``value`` if it may be a service, endpoint or subset name; else raise InvalidName."""
    if not isinstance(value, str):
        raise InvalidName(kind, value, "must be a string")
    if not value:
        raise InvalidName(kind, value, "must not be empty")
    if len(value) > MAX_NAME_LEN:
        raise InvalidName(kind, value, f"longer than {MAX_NAME_LEN} characters")
    if _NAME.fullmatch(value) is None:
        raise InvalidName(kind, value, "use letters, digits, '_' and '-', starting with a letter")
    return value


def validate_token(kind: str, value: object) -> str:
    """Validate a name that follows ADR-32's looser rule (a micro service name, an id)."""
    if not isinstance(value, str) or not value or len(value) > MAX_NAME_LEN:
        raise InvalidName(kind, value, f"must be 1 to {MAX_NAME_LEN} characters")
    if _ID.fullmatch(value) is None:
        raise InvalidName(kind, value, "use letters, digits, '_' and '-'")
    return value


def validate_prefix(value: str) -> str:
    tokens = value.split(".")
    if not all(_PREFIX_TOKEN.fullmatch(t) for t in tokens) or len(value) > 128:
        raise InvalidName("subject prefix", value, "dot-separated names of letters and digits")
    return value


def parse_target(target: str) -> tuple[str, str]:
    """Split ``"service.endpoint"`` into its two names.

    The endpoint part is returned as given: it is validated as a natsmesh name by
    :meth:`Subjects.endpoint`, while a micro service in another language may name
    endpoints more freely and is reached through discovery instead.
    """
    service, sep, endpoint = target.partition(".")
    if not sep or not endpoint:
        raise InvalidName("target", target, "expected 'service.endpoint'")
    return validate_name("service", service), endpoint


def default_subset(version: str) -> str:
    """The subset a version belongs to unless told otherwise: ``"2.1.0"`` → ``"v2"``."""
    major = version.split(".", 1)[0].lstrip("vV")
    return validate_name("subset", f"v{major}" if major.isdigit() else "v0")


@dataclass(frozen=True, slots=True)
class Subjects:
    """Builds subjects under one prefix."""

    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        validate_prefix(self.prefix)

    def endpoint(self, service: str, endpoint: str) -> str:
        return f"{self.prefix}.{service}.{endpoint}"

    def subset(self, service: str, subset: str, endpoint: str) -> str:
        return f"{self.prefix}.{service}.{subset}.{endpoint}"

    def instance(self, service: str, instance_id: str, endpoint: str) -> str:
        return f"{self.prefix}.{INSTANCE_TOKEN}.{service}.{instance_id}.{endpoint}"

    def instance_prefix(self, service: str, instance_id: str) -> str:
        """What every subject of one instance's endpoints starts with."""
        return f"{self.prefix}.{INSTANCE_TOKEN}.{service}.{instance_id}."

    @staticmethod
    def caller_suffix(identity: str) -> str:
        """What a caller appends to a request subject to name itself (see :func:`caller_of`)."""
        return f".{CALLER_MARK}.{identity}"

    @staticmethod
    def queue_group(service: str, subset: str | None = None) -> str:
        return service if subset is None else f"{service}.{subset}"


#: ``<request subject>._c.<identity>``: a request that names its caller in its subject.
#: A compiled access policy lets each identity publish only its own; service and
#: endpoint names start with a letter, so ``_c`` is never one of their tokens.
CALLER_MARK: Final = "_c"


def caller_of(subject: str) -> str | None:
    """The caller a request subject names (``..._c.<identity>``), or None."""
    head, _, identity = subject.rpartition(".")
    if not head.endswith(f".{CALLER_MARK}") or not identity:
        return None
    return identity


def srv_subjects(verb: str, name: str, instance_id: str) -> tuple[str, str, str]:
    """The three subjects one instance answers for a ``$SRV`` verb (ADR-32)."""
    base = f"{SRV_PREFIX}.{verb}"
    return base, f"{base}.{name}", f"{base}.{name}.{instance_id}"


def srv_request_subject(verb: str, name: str | None = None, instance_id: str | None = None) -> str:
    """The subject a discovery client sends a ``$SRV`` request to."""
    subject = f"{SRV_PREFIX}.{verb}"
    if name is not None:
        subject += f".{validate_token('service', name)}"
        if instance_id is not None:
            subject += f".{validate_token('instance id', instance_id)}"
    return subject
