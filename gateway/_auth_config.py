"""The gateway's auth file: its models, its loader and precise errors (pure, but for reading files).

``natsmesh gateway --auth FILE`` reads a TOML file such as::

    realm = "shop"                       # in WWW-Authenticate (default "natsmesh")
    api_key_header = "x-api-key"         # where API keys are sent (the default)

    [api_keys.ops]                       # the caller is then "key:ops"
    sha256 = "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8"

    [jwt.corp]                           # the caller is then "corp:<sub>"
    algorithm = "RS256"
    public_key_file = "corp.pem"         # relative to this file
    issuer = "https://id.example.com/"
    audience = "shop-gateway"
    leeway = 30                          # seconds of clock skew allowed (default 30)
    identity_claim = "sub"               # the default

    [jwt.partners]
    algorithm = "HS256"
    secret_env = "PARTNER_JWT_SECRET"    # or secret_file = "partners.secret"
    issuer = "partners"
    audience = "shop-gateway"

    [pages]                              # /healthz and /readyz are always public
    metrics = { allow = ["key:ops"] }
    docs = { public = true }             # /openapi.json and /docs

    [[rules]]                            # the first rule that matches decides
    methods = ["GET"]
    paths = ["/products", "/products/{id}"]
    public = true

    [[rules]]
    targets = ["orders.*"]
    allow = ["corp:*", "partners:acme"]

    [[rules]]
    paths = ["/**"]
    allow = ["key:ops"]                  # no rule matches: nobody (default deny)

API keys are stored as the SHA-256 of the key (hex), never the key; a HS256
secret comes from an environment variable or a file, never from this file; an
RS256 key is a PEM public key file. Every way the file can be wrong ends in
one :class:`AuthConfigError` listing ``path: reason`` lines; a reason never
repeats a value from the file, which might be a secret.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Final, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    StrictBool,
    StrictStr,
    ValidationError,
    model_validator,
)

from gateway._auth_keys import Verifier, hs256_secret, read_file, rsa_public_key
from natsmesh.config import Checks, loc_path, problems_of

MAX_FILE: Final = 256 * 1024
KEY_SCHEME: Final = "key"  # the scheme part of an API key's identity, "key:<name>"

_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_ENV = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_DIGEST = re.compile(r"[0-9a-f]{64}")
_SEGMENT = re.compile(r"[A-Za-z0-9_-]{1,64}|\*|\{[A-Za-z_][A-Za-z0-9_]*\}")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,64}")  # an HTTP token (header name, realm)
_VISIBLE = re.compile(r"[\x21-\x7e]{1,256}")  # printable ASCII without spaces
# Never a credential header: the mesh's own, what the gateway reads itself, hop-by-hop ones.
_NOT_FOR_KEYS: Final = frozenset(
    {"authorization", "content-type", "content-length", "host", "traceparent", "tracestate"}
)


class AuthConfigError(ValueError):
    """An auth file that cannot be used; ``problems`` holds every ``(path, reason)``."""

    def __init__(self, problems: Iterable[tuple[str, str]], source: str = "") -> None:
        self.problems = tuple(problems)
        prefix = f"{source}: " if source else ""
        super().__init__("\n".join(f"{prefix}{path}: {why}" for path, why in self.problems[:50]))


def _matching(pattern: re.Pattern[str], why: str) -> AfterValidator:
    def check(value: str) -> str:
        if pattern.fullmatch(value) is None:
            raise ValueError(why)
        return value

    return AfterValidator(check)


def _header(value: str) -> str:
    lowered = value.lower()
    if _TOKEN.fullmatch(lowered) is None:
        raise ValueError("invalid header name: use HTTP token characters")
    if lowered in _NOT_FOR_KEYS or lowered.startswith(("mesh-", "nats-", "x-request-timeout")):
        raise ValueError("a header the gateway or the mesh reads itself")
    return lowered


def _path_pattern(value: str) -> str:
    if not value.startswith("/") or len(value) > 1024:
        raise ValueError("a path pattern starts with '/' (at most 1024 characters)")
    if value == "/":
        return value
    segments = value[1:].split("/")
    for n, segment in enumerate(segments, start=1):
        if segment == "**" and n == len(segments):
            continue
        if _SEGMENT.fullmatch(segment) is None:
            raise ValueError(
                f"segment {n}: letters, digits, '_' and '-', '*' or {{name}};"
                " '**' only as the last segment"
            )
    return value


def _target_pattern(value: str) -> str:
    if value == "*":
        return value
    service, sep, endpoint = value.partition(".")
    if (
        not sep
        or _NAME.fullmatch(service) is None
        or (endpoint != "*" and _NAME.fullmatch(endpoint) is None)
    ):
        raise ValueError("expected 'service.endpoint', 'service.*' or '*'")
    return value


def _identity_pattern(value: str) -> str:
    if value == "*":
        return value
    scheme, sep, name = value.partition(":")
    if not sep or _NAME.fullmatch(scheme) is None or _VISIBLE.fullmatch(name) is None:
        raise ValueError("expected '*', 'SCHEME:*' or 'SCHEME:NAME' (key:NAME, or a jwt verifier)")
    return value


Name = Annotated[StrictStr, _matching(_NAME, "use 1 to 64 letters, digits, '_' and '-'")]
Text = Annotated[StrictStr, Field(min_length=1, max_length=512)]
Method = Literal["GET", "POST", "PUT", "PATCH", "DELETE"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ApiKey(_Model):
    """One API key, known by the hex SHA-256 of the key (``printf %s KEY | sha256sum``)."""

    sha256: Annotated[
        StrictStr, _matching(_DIGEST, "expected 64 lower-case hex digits (a SHA-256)")
    ]


class JwtVerifier(_Model):
    """How bearer tokens of one issuer are verified: one algorithm, one key, fixed claims."""

    algorithm: Literal["HS256", "RS256"]
    issuer: Text
    audience: Text
    leeway: Annotated[float, Strict(), Field(ge=0, le=300, allow_inf_nan=False)] = 30.0
    identity_claim: Annotated[StrictStr, _matching(_VISIBLE, "a claim name")] = "sub"
    secret_env: Annotated[StrictStr, _matching(_ENV, "an environment variable name")] | None = None
    secret_file: Text | None = None
    public_key_file: Text | None = None

    @model_validator(mode="after")
    def _check(self) -> JwtVerifier:
        problems: list[tuple[tuple[str | int, ...], str]] = []
        if self.algorithm == "HS256":
            if (self.secret_env is None) == (self.secret_file is None):
                problems.append(((), "HS256 needs one of secret_env or secret_file"))
            if self.public_key_file is not None:
                problems.append((("public_key_file",), "RS256 only"))
        else:
            if self.public_key_file is None:
                problems.append((("public_key_file",), "RS256 needs a public key file"))
            for name in ("secret_env", "secret_file"):
                if getattr(self, name) is not None:
                    problems.append(((name,), "HS256 only"))
        if problems:
            raise Checks(problems)
        return self


class Access(_Model):
    """Who may: anyone (``public``), or the identities ``allow`` names (none: nobody)."""

    public: StrictBool = False
    allow: list[Annotated[StrictStr, AfterValidator(_identity_pattern)]] = []

    @model_validator(mode="after")
    def _check(self) -> Access:
        if self.public and self.allow:
            raise Checks([(("allow",), "a public route takes no allow list")])
        return self


class Rule(Access):
    """Requests this rule covers: every criterion given must match (methods: any)."""

    methods: list[Method] = []
    paths: list[Annotated[StrictStr, AfterValidator(_path_pattern)]] = []
    targets: list[Annotated[StrictStr, AfterValidator(_target_pattern)]] = []

    @model_validator(mode="after")
    def _covers(self) -> Rule:
        if not self.paths and not self.targets:
            raise Checks([((), "give paths or targets (or both)")])
        return self


class Pages(_Model):
    """The gateway's own pages: ``/metrics``, and the docs (``/openapi.json``, ``/docs``)."""

    metrics: Access = Access()
    docs: Access = Access()


class AuthConfig(_Model):
    """A whole auth file."""

    realm: Annotated[StrictStr, _matching(_TOKEN, "use HTTP token characters")] = "natsmesh"
    api_key_header: Annotated[StrictStr, AfterValidator(_header)] = "x-api-key"
    api_keys: dict[Name, ApiKey] = {}
    jwt: dict[Name, JwtVerifier] = {}
    pages: Pages = Pages()
    rules: list[Rule] = []

    @model_validator(mode="after")
    def _check(self) -> AuthConfig:
        problems: list[tuple[tuple[str | int, ...], str]] = []
        if KEY_SCHEME in self.jwt:
            problems.append((("jwt", KEY_SCHEME), f"{KEY_SCHEME!r} names the API keys"))
        _unique(problems, "api_keys", {n: k.sha256 for n, k in self.api_keys.items()}, "key")
        _unique(problems, "jwt", {n: v.issuer for n, v in self.jwt.items()}, "issuer")
        accesses: list[tuple[tuple[str | int, ...], Access]] = [
            (("pages", "metrics"), self.pages.metrics),
            (("pages", "docs"), self.pages.docs),
        ]
        accesses += [(("rules", i), rule) for i, rule in enumerate(self.rules)]
        for loc, access in accesses:
            for n, pattern in enumerate(access.allow):
                why = self._unknown(pattern)
                if why:
                    problems.append(((*loc, "allow", n), why))
        if problems:
            raise Checks(problems)
        return self

    def _unknown(self, pattern: str) -> str:
        scheme, _, name = pattern.partition(":")
        if pattern == "*":
            return "" if self.api_keys or self.jwt else "no api_keys or jwt verifiers to allow"
        if scheme == KEY_SCHEME:
            if name == "*" or name in self.api_keys:
                return "" if self.api_keys else "no api_keys are configured"
            return f"no API key {name!r} in api_keys" if _NAME.fullmatch(name) else "no such key"
        return "" if scheme in self.jwt else f"no jwt verifier {scheme!r}"


def _unique(
    problems: list[tuple[tuple[str | int, ...], str]],
    section: str,
    values: Mapping[str, str],
    what: str,
) -> None:
    seen: dict[str, str] = {}
    for name, value in values.items():
        if value in seen:
            problems.append(((section, name), f"the same {what} as {section}.{seen[value]}"))
        seen.setdefault(value, name)


def _verifiers(
    config: AuthConfig, base: Path, environ: Mapping[str, str]
) -> tuple[dict[str, Verifier], list[tuple[str, str]]]:
    verifiers: dict[str, Verifier] = {}
    problems: list[tuple[str, str]] = []
    for name, v in config.jwt.items():
        try:
            if v.public_key_file is not None:
                where = "public_key_file"
                key: Any = rsa_public_key(base / v.public_key_file)
            else:
                where = "secret_env" if v.secret_env is not None else "secret_file"
                key = hs256_secret(
                    env=v.secret_env,
                    path=None if v.secret_file is None else base / v.secret_file,
                    environ=environ,
                )
        except ValueError as exc:
            problems.append((loc_path(("jwt", name, where)), str(exc)))
            continue
        verifiers[name] = Verifier(
            name, v.algorithm, key, v.issuer, v.audience, v.leeway, v.identity_claim
        )
    return verifiers, problems


# -- loading ------------------------------------------------------------------------------------


def parse(
    text: str | bytes, *, base: Path, environ: Mapping[str, str], source: str = ""
) -> tuple[AuthConfig, dict[str, Verifier]]:
    """Validate an auth file's text and load its keys (files relative to ``base``).

    Raises AuthConfigError.
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise AuthConfigError(
                [("<file>", f"not UTF-8 text (invalid byte at offset {exc.start})")], source
            ) from None
    if len(text) > MAX_FILE:
        raise AuthConfigError([("<file>", f"larger than {MAX_FILE} bytes")], source)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise AuthConfigError([("<file>", f"not TOML: {exc}")], source) from None
    try:
        config = AuthConfig.model_validate(data)
    except ValidationError as exc:
        raise AuthConfigError([(p.path, p.reason) for p in problems_of(exc)], source) from None
    verifiers, problems = _verifiers(config, base, environ)
    if problems:
        raise AuthConfigError(problems, source)
    return config, verifiers


def load(path: str | Path, environ: Mapping[str, str]) -> tuple[AuthConfig, dict[str, Verifier]]:
    """Read and validate an auth file and the keys it names; raises AuthConfigError."""
    path = Path(path)
    try:
        data = read_file(path, MAX_FILE)
    except ValueError as exc:
        raise AuthConfigError([("<file>", str(exc))], str(path)) from None
    return parse(data, base=path.parent, environ=environ, source=str(path))
