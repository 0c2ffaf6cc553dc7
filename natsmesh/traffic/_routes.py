"""The declarative route config: its models, its loader, and precise errors.

A route config is a file (TOML or JSON) that the controller validates and turns
into tables: per service a timeout, retries with a budget, hedging, a load
balancer, weighted subsets, header matches, a failover order, mirroring, fault
injection and outlier ejection; and the HTTP routes of the gateway
(``examples/routes.toml`` shows them all).

Every way a config can be wrong ends in one :class:`RouteConfigError` that lists
each :class:`Problem` with its path (``services.pricing.subsets[1].weight``) and a
reason. Reasons never repeat input values, only names that already validated.
This module is pure: it reads a file in :func:`load_routes` and does no other I/O.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Final, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    Strict,
    StrictInt,
    StrictStr,
    ValidationError,
    field_serializer,
    model_validator,
)

from natsmesh.traffic._route_checks import (
    config_checks,
    fault_checks,
    hedging_checks,
    policy_checks,
    retries_checks,
)
from natsmesh.wire._config import (
    Checks,
    ConfigError,
    Loc,
    load_as,
    loc_problems,
    parse_as,
    validate_as,
)
from natsmesh.wire._errors import InvalidName
from natsmesh.wire._subjects import validate_name

MAX_PATH_LEN: Final = 256
MAX_PATH_SEGMENTS: Final = 16
MAX_MATCH_HEADERS: Final = 16

# RFC 9110 token characters: what an HTTP (and a NATS) header name may hold.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_LITERAL_SEGMENT = re.compile(r"[A-Za-z0-9_-]+")
_PARAM_SEGMENT = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
# A zone is a NATS cluster name (or NATSMESH_ZONE): never a subject token, so a
# little wider than a service name, but no spaces, wildcards or control characters.
_ZONE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
MAX_ZONES: Final = 32


class RouteConfigError(ConfigError):
    """A route config that cannot be applied; ``problems`` says every reason."""


def _named(kind: str) -> AfterValidator:
    def check(value: str) -> str:
        try:
            return validate_name(kind, value)
        except InvalidName as exc:
            # The reason alone: the value itself is the input we do not echo.
            raise ValueError(f"invalid {kind} name: {exc.reason}") from None

    return AfterValidator(check)


def _header_name(value: str) -> str:
    if _TOKEN.fullmatch(value) is None:
        raise ValueError("invalid header name: use HTTP token characters (letters, digits, -)")
    # Header names match case-insensitively; one spelling keeps canonical() stable.
    return value.lower()


def _zone(value: str) -> str:
    if _ZONE.fullmatch(value) is None:
        raise ValueError(
            "invalid zone name: 1 to 64 letters, digits, '_', '-', '.' or ':',"
            " starting with a letter or digit"
        )
    return value


def _header_value(value: str) -> str:
    if any(c in value for c in "\r\n\0"):
        raise ValueError("a header value must not contain CR, LF or NUL")
    return value


Seconds = Annotated[float, Strict(), Field(gt=0, allow_inf_nan=False)]
NonNegative = Annotated[float, Strict(), Field(ge=0, allow_inf_nan=False)]
Ratio = Annotated[float, Strict(), Field(ge=0, le=1, allow_inf_nan=False)]
Percent = Annotated[float, Strict(), Field(ge=0, le=100, allow_inf_nan=False)]
Timeout = Annotated[float, Strict(), Field(gt=0, le=3600, allow_inf_nan=False)]
ServiceName = Annotated[StrictStr, _named("service")]
SubsetName = Annotated[StrictStr, _named("subset")]
HeaderName = Annotated[StrictStr, AfterValidator(_header_name)]
HeaderValue = Annotated[StrictStr, AfterValidator(_header_value)]
ZoneName = Annotated[StrictStr, AfterValidator(_zone)]
RetryOn = Literal["no_responders", "overloaded", "timeout", "unavailable"]
LoadBalancer = Literal["queue", "p2c", "hash"]
Method = Literal["GET", "POST", "PUT", "PATCH", "DELETE"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @classmethod
    def _cross_checks(cls, data: Mapping[str, Any]) -> list[tuple[Loc, str]]:
        """The checks across this model's fields, over plain data (see _route_checks)."""
        return []

    def canonical(self) -> bytes:
        """Canonical JSON (sorted keys, defaults included, no whitespace) to compare configs."""
        return _canonical(self.model_dump(mode="json"))

    @model_validator(mode="wrap")
    @classmethod
    def _every_problem(cls, data: Any, handler: ModelWrapValidatorHandler[Any]) -> Any:
        # The cross-field checks run whether or not the fields validated, so that one
        # answer lists every problem (pydantic alone would skip them after a bad field).
        try:
            model = handler(data)
        except ValidationError as exc:
            extra = cls._cross_checks(data) if isinstance(data, Mapping) else []
            if not extra:
                raise
            raise Checks([*loc_problems(exc), *extra]) from None
        if not isinstance(data, cls):
            problems = cls._cross_checks(model.model_dump())
            if problems:
                raise Checks(problems)
        return model


class Retries(_Model):
    """How often to try a call, and how much extra load retries may add.

    The defaults are the default policy's (see :data:`natsmesh.traffic._traffic.DEFAULT_POLICY`):
    no per-try timeout, and retries only where they are safe.
    """

    attempts: Annotated[StrictInt, Field(ge=1, le=10)] = 3
    per_try_timeout: Seconds | None = None
    # "unavailable" and "timeout" are retried for idempotent endpoints only, whatever
    # this says: see natsmesh.traffic._planner.
    retry_on: frozenset[RetryOn] = frozenset({"no_responders", "overloaded", "unavailable"})
    backoff: NonNegative = 0.02
    max_backoff: NonNegative = 0.5
    budget_ratio: Ratio = 0.2
    budget_min_per_second: NonNegative = 10.0

    @classmethod
    def _cross_checks(cls, data: Mapping[str, Any]) -> list[tuple[Loc, str]]:
        return retries_checks(data)

    @field_serializer("retry_on")
    def _sorted(self, value: frozenset[str]) -> list[str]:
        return sorted(value)


class Hedging(_Model):
    """Send a second copy after a fixed delay or a latency percentile."""

    delay: Seconds | None = None
    percentile: Annotated[float, Strict(), Field(ge=50, le=99.9, allow_inf_nan=False)] | None = None
    max_ratio: Ratio = 0.1

    @classmethod
    def _cross_checks(cls, data: Mapping[str, Any]) -> list[tuple[Loc, str]]:
        return hedging_checks(data)


class Subset(_Model):
    name: SubsetName
    weight: Annotated[StrictInt, Field(ge=0, le=100)]


class HeaderMatch(_Model):
    """Requests whose headers carry all these exact values go to ``subset``."""

    headers: Annotated[
        dict[HeaderName, HeaderValue], Field(min_length=1, max_length=MAX_MATCH_HEADERS)
    ]
    subset: SubsetName


class Mirror(_Model):
    """Copy this share of requests to ``subset``; its replies are dropped."""

    subset: SubsetName
    percent: Annotated[Percent, Field(gt=0)]


class Fault(_Model):
    """Inject delays and aborts into a share of requests, to test the callers."""

    delay: Seconds | None = None
    delay_percent: Percent | None = None
    abort_code: Annotated[StrictInt, Field(ge=400, le=599)] | None = None
    abort_percent: Percent | None = None

    @classmethod
    def _cross_checks(cls, data: Mapping[str, Any]) -> list[tuple[Loc, str]]:
        return fault_checks(data)


class Outlier(_Model):
    """Eject an instance after consecutive failures, for a growing time."""

    consecutive_failures: Annotated[StrictInt, Field(ge=1)] = 5
    base_ejection: Seconds = 30.0
    max_ejection_percent: Annotated[Percent, Field(ge=1)] = 50.0


class ServicePolicy(_Model):
    """How callers reach one service."""

    timeout: Timeout = 5.0
    retries: Retries = Field(default_factory=Retries)
    hedging: Hedging | None = None
    # p2c needs the registry (a controller); without one, calls go to the queue group.
    load_balancer: LoadBalancer = "p2c"
    hash_header: HeaderName | None = None
    subsets: list[Subset] = []
    matches: list[HeaderMatch] = []
    failover: dict[SubsetName, SubsetName] = {}
    mirror: Mirror | None = None
    fault: Fault | None = None
    outlier: Outlier = Field(default_factory=Outlier)
    # Zone failover for p2c and hash: the caller's own zone first, then these in
    # order, then any other (zones are NATS cluster names, or NATSMESH_ZONE).
    zones: Annotated[list[ZoneName], Field(max_length=MAX_ZONES)] = []

    @classmethod
    def _cross_checks(cls, data: Mapping[str, Any]) -> list[tuple[Loc, str]]:
        return policy_checks(data)


def _template(path: str) -> str:
    """Validate an HTTP path template such as ``/products/{id}``."""
    if len(path) > MAX_PATH_LEN:
        raise ValueError(f"longer than {MAX_PATH_LEN} characters")
    if not path.startswith("/"):
        raise ValueError("must start with '/'")
    if path == "/":
        return path
    segments = path[1:].split("/")
    if len(segments) > MAX_PATH_SEGMENTS:
        raise ValueError(f"more than {MAX_PATH_SEGMENTS} segments")
    params: set[str] = set()
    for n, segment in enumerate(segments, start=1):
        param = _PARAM_SEGMENT.fullmatch(segment)
        if not segment:
            raise ValueError(f"segment {n} is empty")
        if segment in {".", ".."}:
            raise ValueError(f"segment {n} is '.' or '..'")
        if param is not None:
            if param.group(1) in params:
                raise ValueError(f"duplicate parameter {{{param.group(1)}}}")
            params.add(param.group(1))
        elif segment.startswith("{"):
            raise ValueError(f"segment {n}: a parameter name must be a Python identifier")
        elif _LITERAL_SEGMENT.fullmatch(segment) is None:
            raise ValueError(
                f"segment {n}: use letters, digits, '_' and '-', or a whole {{name}} parameter"
            )
    return path


def _target(target: str) -> str:
    service, sep, endpoint = target.partition(".")
    if not sep:
        raise ValueError("expected 'service.endpoint'")
    try:
        validate_name("service", service)
        validate_name("endpoint", endpoint)
    except InvalidName as exc:
        raise ValueError(f"invalid {exc.kind} name: {exc.reason}") from None
    return target


class HttpRoute(_Model):
    """``method path`` on the gateway calls ``target`` (``service.endpoint``)."""

    method: Method
    path: Annotated[StrictStr, AfterValidator(_template)]
    target: Annotated[StrictStr, AfterValidator(_target)]
    timeout: Timeout | None = None


class RouteConfig(_Model):
    """A whole route config: policies by service name, and the gateway's HTTP routes."""

    services: dict[ServiceName, ServicePolicy] = {}
    http: list[HttpRoute] = []

    @classmethod
    def _cross_checks(cls, data: Mapping[str, Any]) -> list[tuple[Loc, str]]:
        http = data.get("http")
        if isinstance(http, list) and not all(isinstance(r, HttpRoute) for r in http):
            # Only routes that are valid on their own can conflict (the others are reported).
            data = {**data, "http": [r if _valid(HttpRoute, r) else None for r in http]}
        return config_checks(data)

    def http_canonical(self) -> bytes:
        """Canonical JSON of the HTTP routes alone (the gateway's table)."""
        return _canonical([route.model_dump(mode="json") for route in self.http])


def _valid(model: type[_Model], data: object) -> bool:
    try:
        model.model_validate(data)
    except ValidationError:
        return False
    return True


def _canonical(data: object) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def validate_routes(data: object) -> RouteConfig:
    """Validate already decoded data (a dict) as a route config; raise RouteConfigError."""
    return validate_as(RouteConfig, data, RouteConfigError)


def parse_routes(
    data: bytes | str, *, format: Literal["toml", "json"] | None = None
) -> RouteConfig:
    """Parse and validate a route config in TOML or JSON; raise RouteConfigError.

    With ``format=None`` the text is JSON if it starts with ``{``, else TOML.
    """
    return parse_as(RouteConfig, data, RouteConfigError, format=format)


def load_routes(path: str | Path) -> RouteConfig:
    """Read and validate a route config file (``.toml``, ``.json``, else detected)."""
    return load_as(RouteConfig, path, RouteConfigError)
