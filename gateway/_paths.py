"""HTTP paths to mesh targets: the segment allow-list and route matching (pure, no I/O).

Every path segment passes an allow-list (ASCII letters, digits, ``_`` and ``-``;
1 to 64 characters) before anything else looks at it, so ``.``, ``*``, ``>``,
whitespace, CR, LF, NUL, ``..`` and empty segments can never become subject
tokens: uvicorn has already percent-decoded the path, so ``%2A`` arrives as ``*``
and is refused here like ``*`` itself.

A :class:`Router` is an immutable snapshot compiled from the control plane's
HTTP routes (``GET /products/{id}`` → ``catalog.get``); :meth:`Router.match`
answers with a :class:`Match`, a :class:`WrongMethod` (the path exists for
other methods) or None. Unless disabled, ``POST /{service}/{endpoint}`` reaches
any service by name: a table route of the same method and path comes first.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

from natsmesh import HttpRoute

MAX_SEGMENT: Final = 64
MAX_SEGMENTS: Final = 16
MAX_PATH: Final = 1024

_SEGMENT: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
_PARAM: Final = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


class BadPath(ValueError):
    """A path that cannot name a route; ``reason`` never repeats the path."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def split_path(path: str) -> tuple[str, ...]:
    """The allow-listed segments of a decoded request path; raises BadPath.

    ``"/"`` is no segment at all; a trailing slash is an empty segment, refused (the
    app strips one trailing slash first: `/a/b/` is `/a/b`).
    """
    if len(path) > MAX_PATH:
        raise BadPath(f"path longer than {MAX_PATH} characters")
    if not path.startswith("/"):
        raise BadPath("path must start with '/'")
    if path == "/":
        return ()
    segments = path[1:].split("/")
    if len(segments) > MAX_SEGMENTS:
        raise BadPath(f"more than {MAX_SEGMENTS} path segments")
    for n, segment in enumerate(segments, start=1):
        if _SEGMENT.fullmatch(segment) is None:
            raise BadPath(_why(n, segment))
    return tuple(segments)


def _why(n: int, segment: str) -> str:
    if not segment:
        return f"path segment {n} is empty"
    if len(segment) > MAX_SEGMENT:
        return f"path segment {n} is longer than {MAX_SEGMENT} characters"
    return f"path segment {n}: use letters, digits, '_' and '-'"


@dataclass(frozen=True, slots=True)
class Match:
    """Where a request goes: ``service.endpoint``, with the path's parameters."""

    service: str
    endpoint: str
    params: Mapping[str, str] = field(default_factory=dict)
    timeout: float | None = None  # the route's cap on the budget, seconds
    template: str = ""  # the route's path template; "" for the default route
    by_default: bool = False  # matched POST /{service}/{endpoint}, not a table route
    target: str = field(init=False)  # "service.endpoint"

    def __post_init__(self) -> None:
        object.__setattr__(self, "target", f"{self.service}.{self.endpoint}")


@dataclass(frozen=True, slots=True)
class WrongMethod:
    """The path exists, but not for this method; ``allowed`` lists those it exists for."""

    allowed: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _Compiled:
    method: str
    parts: tuple[str | None, ...]  # a literal segment, or None for a parameter
    names: tuple[str, ...]  # parameter names, in order
    service: str
    endpoint: str
    timeout: float | None
    template: str

    def bind(self, segments: tuple[str, ...]) -> dict[str, str] | None:
        params: dict[str, str] = {}
        names = iter(self.names)
        for part, segment in zip(self.parts, segments, strict=True):
            if part is None:
                params[next(names)] = segment
            elif part != segment:
                return None
        return params


def _compile(route: HttpRoute) -> _Compiled:
    parts: list[str | None] = []
    names: list[str] = []
    if route.path != "/":
        for segment in route.path[1:].split("/"):
            param = _PARAM.fullmatch(segment)
            if param is None:
                parts.append(segment)
            else:
                parts.append(None)
                names.append(param.group(1))
    service, _, endpoint = route.target.partition(".")
    return _Compiled(
        route.method,
        tuple(parts),
        tuple(names),
        service,
        endpoint,
        route.timeout,
        route.path,
    )


def _specificity(route: _Compiled) -> tuple[bool, ...]:
    # Literal segments before parameters, left to right: /products/featured wins
    # over /products/{id} whatever order the config lists them in.
    return tuple(part is None for part in route.parts)


#: Answers remembered per router, keyed by method and path: most traffic repeats paths.
MEMO_SIZE: Final = 4096

Found = Match | WrongMethod | BadPath | None


class Router:
    """An immutable table of HTTP routes, indexed by segment count."""

    __slots__ = ("_by_length", "_memo", "default_route", "routes")

    def __init__(self, routes: Iterable[HttpRoute] = (), *, default_route: bool = True) -> None:
        self.routes = tuple(routes)
        self.default_route = default_route
        by_length: dict[int, list[_Compiled]] = {}
        for route in self.routes:
            compiled = _compile(route)
            by_length.setdefault(len(compiled.parts), []).append(compiled)
        self._by_length = {
            n: tuple(sorted(found, key=_specificity)) for n, found in by_length.items()
        }
        self._memo: dict[tuple[str, str], Found] = {}

    def resolve(self, method: str, path: str) -> Found:
        """:meth:`match` of :func:`split_path`, a BadPath returned rather than raised; memoized."""
        key = (method, path)
        if key in self._memo:
            return self._memo[key]
        found: Found
        try:
            found = self.match(method, split_path(path))
        except BadPath as exc:
            found = BadPath(exc.reason)  # without the traceback, which holds frames
        if len(self._memo) >= MEMO_SIZE:
            self._memo.clear()
        self._memo[key] = found
        return found

    def match(self, method: str, segments: tuple[str, ...]) -> Match | WrongMethod | None:
        """The route for ``method`` and allow-listed ``segments`` (see :func:`split_path`)."""
        allowed: list[str] = []
        for route in self._by_length.get(len(segments), ()):
            params = route.bind(segments)
            if params is None:
                continue
            if route.method == method:
                return Match(route.service, route.endpoint, params, route.timeout, route.template)
            if route.method not in allowed:
                allowed.append(route.method)
        if self.default_route and len(segments) == 2:
            # After the table's routes for this method, before its routes for others:
            # GET /orders/{id} in the table leaves POST /orders/place to the default.
            if method == "POST":
                return Match(segments[0], segments[1], by_default=True)
            return WrongMethod(tuple(allowed) or ("POST",))
        return WrongMethod(tuple(allowed)) if allowed else None


def is_token(value: str) -> bool:
    """Whether ``value`` passes the segment allow-list."""
    return _SEGMENT.fullmatch(value) is not None
