"""The mesh access policy, and its compilation to nats-server permissions (pure, no I/O).

A policy file (TOML, ``examples/policy.toml``) names every identity that may
connect and what it may call::

    [[identity]]
    name = "orders"             # a service identity's name is its service's name
    kind = "service"            # service | gateway | controller | operator
    calls = ["pricing.quote", "catalog.*"]

    [[identity]]
    name = "ops"
    kind = "operator"
    admin = true                # may apply route configs
    auth = "password"           # else an nkey (the default)

The grants each identity gets are :mod:`natsmesh.security._grants`'s.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Final, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictStr,
    model_validator,
)

from natsmesh.traffic._routes import _named
from natsmesh.wire._config import Checks, ConfigError, Loc, load_as, parse_as, validate_as
from natsmesh.wire._errors import InvalidName
from natsmesh.wire._subjects import (
    DEFAULT_PREFIX,
    validate_name,
    validate_prefix,
)

__all__ = [
    "Identity",
    "Policy",
    "PolicyError",
    "load_policy",
    "parse_policy",
]

Kind = Literal["service", "gateway", "controller", "operator"]
ANY: Final = "*"
_WILDCARD = "*"


class PolicyError(ConfigError):
    """A policy that cannot be compiled; ``problems`` lists each ``path: reason``."""


def _call(value: str) -> str:
    """Validate a ``calls`` entry: ``service.endpoint``, ``service.*`` or ``*``."""
    if value == ANY:
        return value
    service, sep, endpoint = value.partition(".")
    if not sep:
        raise ValueError("expected 'service.endpoint', 'service.*' or '*'")
    try:
        validate_name("service", service)
        if endpoint != _WILDCARD:
            validate_name("endpoint", endpoint)
    except InvalidName as exc:
        where = "a wildcard may only be a whole endpoint ('service.*') or '*' alone"
        bad = any(c in value for c in "*>")
        raise ValueError(where if bad else f"invalid {exc.kind} name: {exc.reason}") from None
    return value


def _prefix(value: str) -> str:
    try:
        return validate_prefix(value)
    except InvalidName as exc:
        raise ValueError(f"invalid subject prefix: {exc.reason}") from None


Call = Annotated[StrictStr, AfterValidator(_call)]


class Identity(BaseModel):
    """One identity: who connects (a service, the gateway, the controller, an operator)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[StrictStr, _named("identity")]
    kind: Kind
    auth: Literal["nkey", "password"] = "nkey"
    calls: Annotated[list[Call], Field(max_length=1024)] = []
    admin: StrictBool = False

    @model_validator(mode="after")
    def _check(self) -> Identity:
        problems: list[tuple[Loc, str]] = []
        if self.admin and self.kind != "operator":
            problems.append((("admin",), "only an operator may be an admin"))
        if self.calls and self.kind == "controller":
            problems.append((("calls",), "the controller calls no service"))
        if ANY in self.calls and (self.kind == "service" or self.admin):
            # '*' is granted as mesh.*.* and mesh.*.*.* minus the control plane: an
            # identity that must publish there itself has to list what it calls.
            why = "'*' is for gateways and read-only operators: list the calls"
            problems.append((("calls", self.calls.index(ANY)), why))
        seen: dict[str, int] = {}
        for i, call in enumerate(self.calls):
            if call in seen:
                problems.append((("calls", i), f"duplicate of calls[{seen[call]}]"))
            seen.setdefault(call, i)
        if problems:
            raise Checks(problems)
        return self


class Policy(BaseModel):
    """A whole access policy: the subject prefix and every identity."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prefix: Annotated[StrictStr, AfterValidator(_prefix)] = DEFAULT_PREFIX
    identity: Annotated[list[Identity], Field(min_length=1, max_length=10_000)]

    @model_validator(mode="after")
    def _check(self) -> Policy:
        problems: list[tuple[Loc, str]] = []
        first: dict[str, int] = {}
        for i, identity in enumerate(self.identity):
            if identity.name in first:
                why = (
                    f"duplicate identity {identity.name!r} (also identity[{first[identity.name]}])"
                )
                problems.append((("identity", i, "name"), why))
            first.setdefault(identity.name, i)
        if problems:
            raise Checks(problems)
        return self


def validate_policy(data: object) -> Policy:
    """Validate already decoded data as a policy; raise PolicyError."""
    return validate_as(Policy, data, PolicyError)


def parse_policy(data: bytes | str) -> Policy:
    """Parse and validate a policy's TOML text; raise PolicyError."""
    return parse_as(Policy, data, PolicyError, format="toml")


def load_policy(path: str | Path) -> Policy:
    """Read and validate a policy file (TOML, whatever its name); raise PolicyError."""
    return load_as(Policy, path, PolicyError, format="toml")
