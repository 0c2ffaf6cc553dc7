"""Who is calling, and may they: API keys and JWT bearer tokens, per HTTP route (pure).

A :class:`GatewayAuth` is built from an auth file (:mod:`gateway._auth_config`).
For each request the app asks it for the :class:`Policy` of the route (the first
rule whose methods, paths and targets all match; no rule: nobody may) and then
:meth:`GatewayAuth.check` the request's credentials against it:

* a public policy needs none, and none are looked at;
* else exactly one credential: the API key header, or ``Authorization: Bearer <JWT>``;
  a missing, malformed or invalid one is a 401 with ``WWW-Authenticate``;
* a valid one gives an :class:`Identity`, ``key:<name>`` or ``<verifier>:<claim>``,
  forwarded to services as the caller; one the policy does not allow is a 403.

An identity is qualified by its scheme so that a token whose ``sub`` is
``orders`` never reads, to a service, like the ``orders`` service calling.

API keys are compared by SHA-256 digest, against every stored digest in
constant time. A JWT is verified by the one verifier whose issuer it names,
with that verifier's single algorithm and key: ``alg: none`` and an HS256 token
signed with an RS256 public key fail like any other bad signature. ``exp``,
``iss``, ``aud`` and the identity claim are required. Failures carry a fixed
``reason`` for the metrics; what the client is told is shorter still, and no
credential ever appears in a message or a log.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import jwt

from gateway import _auth_config
from gateway._auth_config import KEY_SCHEME, Access, AuthConfig
from gateway._auth_keys import Verifier

MAX_CREDENTIAL: Final = 8192  # bytes of an Authorization or API key header value
AUTHORIZATION: Final = b"authorization"
_JWT = re.compile(rb"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_API_KEY = re.compile(rb"[\x21-\x7e]{1,512}")
# A claim that names the caller: printable ASCII, no spaces at the ends, at most 128
# characters, so that "<verifier>:<claim>" fits the 256 of a Mesh-Caller value.
_IDENTITY = re.compile(r"[\x21-\x7e][\x20-\x7e]{0,126}[\x21-\x7e]|[\x21-\x7e]")

#: Every reason a request is refused, the label values of the failure metric.
REASONS: Final = (
    "missing",
    "malformed",
    "ambiguous",
    "unknown_key",
    "expired",
    "not_yet_valid",
    "invalid_issuer",
    "invalid_audience",
    "bad_signature",
    "bad_algorithm",
    "missing_claim",
    "invalid_identity",
    "invalid_token",
    "forbidden",
)
_TOLD: Final = {
    "missing": "credentials required",
    "malformed": "malformed credentials",
    "ambiguous": "send one credential, not several",
    "expired": "the token has expired",
    "forbidden": "this identity may not use this route",
}
# PyJWT's exceptions, most specific first (several derive from others).
_JWT_REASONS: Final[tuple[tuple[type[Exception], str], ...]] = (
    (jwt.ExpiredSignatureError, "expired"),
    (jwt.ImmatureSignatureError, "not_yet_valid"),
    (jwt.InvalidIssuerError, "invalid_issuer"),
    (jwt.InvalidAudienceError, "invalid_audience"),
    (jwt.InvalidSignatureError, "bad_signature"),
    (jwt.InvalidAlgorithmError, "bad_algorithm"),
    (jwt.MissingRequiredClaimError, "missing_claim"),
    (jwt.DecodeError, "malformed"),
)


class Denied(Exception):
    """A refusal: 401 (no valid credential) or 403 (a valid one, not allowed here)."""

    def __init__(self, status: int, reason: str, challenges: tuple[bytes, ...] = ()) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.message = _TOLD.get(reason, "invalid credentials")
        self.challenges = challenges


@dataclass(frozen=True, slots=True)
class Identity:
    """A verified caller: the scheme (``key`` or a JWT verifier's name) and a name in it."""

    scheme: str
    name: str

    @property
    def caller(self) -> str:
        """The ``Mesh-Caller`` value services see: ``scheme:name``."""
        return f"{self.scheme}:{self.name}"


@dataclass(frozen=True, slots=True)
class Policy:
    """Who may use one route (or page): anyone, or the identities matching ``allow``."""

    public: bool
    allow: tuple[tuple[str, str], ...]  # (scheme, name); "*" is any
    bearer: bool  # a JWT could pass: offer the Bearer challenge
    api_key: bool  # an API key could pass

    def allows(self, who: Identity) -> bool:
        return any(
            scheme in ("*", who.scheme) and name in ("*", who.name) for scheme, name in self.allow
        )


@dataclass(frozen=True, slots=True)
class _Rule:
    methods: frozenset[str]  # empty: any
    paths: tuple[tuple[tuple[str | None, ...], bool], ...]  # (segments, ends with "**")
    targets: tuple[tuple[str, str], ...]  # (service, endpoint); "*" is any
    policy: Policy

    def matches(self, method: str, segments: Sequence[str], target: str) -> bool:
        if self.methods and method not in self.methods:
            return False
        if self.paths and not any(_path_matches(p, rest, segments) for p, rest in self.paths):
            return False
        if self.targets:
            service, _, endpoint = target.partition(".")
            return any(s in ("*", service) and e in ("*", endpoint) for s, e in self.targets)
        return True


def _path_matches(pattern: tuple[str | None, ...], rest: bool, segments: Sequence[str]) -> bool:
    if len(segments) < len(pattern) or (not rest and len(segments) != len(pattern)):
        return False
    return all(part is None or part == seg for part, seg in zip(pattern, segments, strict=False))


def _compile_path(pattern: str) -> tuple[tuple[str | None, ...], bool]:
    segments = [] if pattern == "/" else pattern[1:].split("/")
    rest = bool(segments) and segments[-1] == "**"
    if rest:
        segments.pop()
    # "*" and "{name}" both stand for any one segment.
    return tuple(None if s == "*" or s.startswith("{") else s for s in segments), rest


class GatewayAuth:
    """The gateway's authentication and per-route access, ready to check requests.

    Build it with :meth:`load` (or :meth:`parse`); hand it to ``create_app(auth=...)``.
    """

    def __init__(self, config: AuthConfig, verifiers: Mapping[str, Verifier]) -> None:
        self.config = config
        self.realm = config.realm
        self.api_key_header = config.api_key_header.encode()
        #: The request headers that may carry credentials: never forwarded to services.
        self.never_forward = frozenset({AUTHORIZATION, self.api_key_header})
        #: Those read as credentials: a scheme that is not configured is not looked at.
        self.header_names = frozenset(
            ([AUTHORIZATION] if verifiers else [])
            + ([self.api_key_header] if config.api_keys else [])
        )
        self._keys = tuple(
            (name, bytes.fromhex(key.sha256)) for name, key in config.api_keys.items()
        )
        self._verifiers = dict(verifiers)
        self._by_issuer = {v.issuer: v for v in verifiers.values()}
        self._rules = tuple(
            _Rule(
                frozenset(rule.methods),
                tuple(_compile_path(p) for p in rule.paths),
                tuple(_split(t, ".") for t in rule.targets),
                self._policy(rule),
            )
            for rule in config.rules
        )
        self._nobody = self._policy(Access())
        self.metrics_policy = self._policy(config.pages.metrics)
        self.docs_policy = self._policy(config.pages.docs)

    @classmethod
    def load(cls, path: str | Path, *, environ: Mapping[str, str] | None = None) -> GatewayAuth:
        """From an auth file, with key files relative to it; raises AuthConfigError.

        A ``secret_env`` is looked up in ``environ`` (default: ``os.environ``).
        """
        return cls(*_auth_config.load(path, os.environ if environ is None else environ))

    @classmethod
    def parse(
        cls, text: str | bytes, *, base: str | Path = ".", environ: Mapping[str, str] | None = None
    ) -> GatewayAuth:
        """From an auth file's text, with key files relative to ``base``; as :meth:`load`."""
        env = os.environ if environ is None else environ
        return cls(*_auth_config.parse(text, base=Path(base), environ=env))

    def _policy(self, access: Access) -> Policy:
        allow = tuple(_split(pattern, ":") for pattern in access.allow)
        schemes = {scheme for scheme, _ in allow}
        if not access.public and not allow:
            schemes = {"*"}  # nobody passes, but a client is still told how to authenticate
        anyone = "*" in schemes
        return Policy(
            public=access.public,
            allow=allow,
            bearer=bool(self._verifiers) and (anyone or bool(schemes - {KEY_SCHEME})),
            api_key=bool(self._keys) and (anyone or KEY_SCHEME in schemes),
        )

    # -- which policy -------------------------------------------------------------------------

    def policy(self, method: str, path: str, target: str) -> Policy:
        """The policy of a request that the router sent to ``target`` (default deny)."""
        segments = () if path == "/" else path[1:].split("/")
        for rule in self._rules:
            if rule.matches(method, segments, target):
                return rule.policy
        return self._nobody

    # -- checking ------------------------------------------------------------------------------

    def check(self, policy: Policy, credentials: Sequence[tuple[bytes, bytes]]) -> Identity | None:
        """The verified identity for ``policy`` (None when public); raises Denied.

        ``credentials`` are the request's header fields named in :attr:`header_names`.
        """
        if policy.public:
            return None
        if not credentials:
            raise Denied(401, "missing", self._challenges(policy))
        if len(credentials) > 1:
            raise Denied(401, "ambiguous", self._challenges(policy))
        name, value = credentials[0]
        who = self._bearer(policy, value) if name == AUTHORIZATION else self._api_key(policy, value)
        if not policy.allows(who):
            raise Denied(403, "forbidden")
        return who

    def _api_key(self, policy: Policy, value: bytes) -> Identity:
        if _API_KEY.fullmatch(value) is None:
            raise Denied(401, "malformed", self._challenges(policy))
        digest = hashlib.sha256(value).digest()
        found = None
        # Every stored digest compared, none skipped: the time taken says nothing about
        # which key came close.
        for name, stored in self._keys:
            if hmac.compare_digest(digest, stored):
                found = name
        if found is None:
            raise Denied(401, "unknown_key", self._challenges(policy))
        return Identity(KEY_SCHEME, found)

    def _bearer(self, policy: Policy, value: bytes) -> Identity:
        scheme, _, token = value.partition(b" ")
        token = token.strip(b" ")
        if (
            not self._verifiers
            or scheme.lower() != b"bearer"
            or len(value) > MAX_CREDENTIAL
            or _JWT.fullmatch(token) is None
        ):
            raise Denied(401, "malformed", self._challenges(policy, bad_token=True))
        try:
            return self._verify(token.decode("ascii"))
        except Denied as exc:
            exc.challenges = self._challenges(policy, bad_token=True)
            raise

    def _verify(self, token: str) -> Identity:
        verifier = self._verifier(token)
        try:
            claims = jwt.decode(
                token,
                verifier.key,
                algorithms=[verifier.algorithm],
                audience=verifier.audience,
                issuer=verifier.issuer,
                leeway=verifier.leeway,
                options={"require": ["exp", "iss", "aud", verifier.claim]},
            )
        except jwt.PyJWTError as exc:
            raise Denied(401, _jwt_reason(exc)) from None
        name = claims.get(verifier.claim)
        if not isinstance(name, str) or _IDENTITY.fullmatch(name) is None:
            raise Denied(401, "invalid_identity")
        return Identity(verifier.name, name)

    def _verifier(self, token: str) -> Verifier:
        if len(self._verifiers) == 1:
            return next(iter(self._verifiers.values()))
        # Several issuers: the token's (unverified) "iss" only picks the verifier,
        # which then checks everything, "iss" included, with its own key and algorithm.
        try:
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.InvalidTokenError:
            raise Denied(401, "malformed") from None
        issuer = unverified.get("iss")
        verifier = self._by_issuer.get(issuer) if isinstance(issuer, str) else None
        if verifier is None:
            raise Denied(401, "invalid_issuer")
        return verifier

    def _challenges(self, policy: Policy, *, bad_token: bool = False) -> tuple[bytes, ...]:
        realm = f'realm="{self.realm}"'
        found = []
        if policy.bearer:
            # RFC 6750: an error code only when a token was sent.
            found.append(
                f'Bearer {realm}, error="invalid_token"' if bad_token else f"Bearer {realm}"
            )
        if policy.api_key:
            found.append(f'ApiKey {realm}, header="{self.config.api_key_header}"')
        return tuple(c.encode() for c in found)


def _split(pattern: str, sep: str) -> tuple[str, str]:
    if pattern == "*":
        return "*", "*"
    first, _, second = pattern.partition(sep)
    return first, second


def _jwt_reason(exc: Exception) -> str:
    for kind, reason in _JWT_REASONS:
        if isinstance(exc, kind):
            return reason
    return "invalid_token"


def collect(
    headers: Iterable[tuple[bytes, bytes]], names: frozenset[bytes]
) -> list[tuple[bytes, bytes]]:
    """The header fields among ``names``, in order (for pages, read without a Head)."""
    return [(name, value) for name, value in headers if name in names]
