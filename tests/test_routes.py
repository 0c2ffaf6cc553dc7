"""Tests of natsmesh _routes: the route config models, the loader, and the problems they report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from natsmesh.traffic._routes import (
    HttpRoute,
    RouteConfig,
    RouteConfigError,
    ServicePolicy,
    load_routes,
    parse_routes,
    validate_routes,
)
from natsmesh.wire._config import MAX_CONFIG_BYTES, Problem
from natsmesh.wire._errors import MeshError

ROOT = Path(__file__).parent.parent
EXAMPLE = ROOT / "examples" / "routes.toml"
SUBSETS = [{"name": "v1", "weight": 90}, {"name": "v2", "weight": 10}]


def problems_of(data: object) -> list[tuple[str, str]]:
    """The problems of a config given as a dict (sent through the JSON parser) or as text."""
    text = data if isinstance(data, str | bytes) else json.dumps(data)
    with pytest.raises(RouteConfigError) as info:
        parse_routes(text)
    return [(p.path, p.reason) for p in info.value.problems]


def assert_problems(data: object, expected: list[tuple[str, str]]) -> None:
    """Exactly these problems, in order: each path equal, each reason containing the fragment."""
    found = problems_of(data)
    assert [path for path, _ in found] == [path for path, _ in expected], found
    for (_, reason), (_, fragment) in zip(found, expected, strict=True):
        assert fragment in reason, found


def pricing(**policy: Any) -> dict[str, Any]:
    return {"services": {"pricing": {"subsets": SUBSETS, **policy}}}


def route(method: str = "GET", path: str = "/a", target: str = "svc.get") -> dict[str, Any]:
    return {"method": method, "path": path, "target": target}


# ---------------------------------------------------------------- the example and the formats


def test_example_loads() -> None:
    config = load_routes(EXAMPLE)
    assert set(config.services) == {"catalog", "pricing", "orders"}
    pricing = config.services["pricing"]
    assert [(s.name, s.weight) for s in pricing.subsets] == [("v1", 90), ("v2", 10)]
    assert pricing.matches[0].headers == {"x-canary": "always"}
    assert pricing.matches[0].subset == "v2"
    assert pricing.failover == {"v2": "v1"}
    assert config.services["catalog"].retries.attempts == 3
    assert config.services["orders"].retries.retry_on == {"no_responders"}
    routes = {(r.method, r.path): r.target for r in config.http}
    assert routes == {
        ("GET", "/products"): "catalog.list",
        ("GET", "/products/{id}"): "catalog.get",
        ("POST", "/quotes"): "pricing.quote",
        ("POST", "/orders"): "orders.place",
        ("GET", "/orders/{id}"): "orders.get",
    }


def test_json_equivalent_of_the_example_is_accepted() -> None:
    config = load_routes(EXAMPLE)
    as_json = json.dumps(config.model_dump(mode="json"), indent=2)
    assert parse_routes(as_json) == config
    assert parse_routes(as_json.encode(), format="json") == config


def test_defaults() -> None:
    policy = parse_routes("[services.catalog]\n").services["catalog"]
    assert policy.timeout == 5
    assert policy.retries.attempts == 3
    assert policy.retries.per_try_timeout is None
    assert policy.retries.retry_on == {"no_responders", "overloaded", "unavailable"}
    assert (policy.retries.backoff, policy.retries.max_backoff) == (0.02, 0.5)
    assert (policy.retries.budget_ratio, policy.retries.budget_min_per_second) == (0.2, 10)
    assert policy.load_balancer == "p2c"
    assert (policy.outlier.consecutive_failures, policy.outlier.base_ejection) == (5, 30)
    assert policy.outlier.max_ejection_percent == 50
    assert (policy.subsets, policy.matches, policy.failover) == ([], [], {})
    assert (policy.hedging, policy.mirror, policy.fault) == (None, None, None)
    assert parse_routes("") == RouteConfig()


def test_models_are_frozen() -> None:
    config = load_routes(EXAMPLE)
    with pytest.raises(ValueError, match="frozen"):
        config.services["pricing"].timeout = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "fmt"),
    [
        ('{"services": {"catalog": {"timeout": 1}}}', None),
        ('  \n {"services": {"catalog": {"timeout": 1}}}', None),
        ("\ufeff[services.catalog]\ntimeout = 1\n", None),
        ("[services.catalog]\ntimeout = 1.0\n", "toml"),
        ('{"services": {"catalog": {"timeout": 1.0}}}', "json"),
    ],
)
def test_formats(text: str, fmt: Any) -> None:
    assert parse_routes(text, format=fmt).services["catalog"].timeout == 1
    assert parse_routes(text.encode("utf-8"), format=fmt).services["catalog"].timeout == 1


def test_canonical_ignores_spelling() -> None:
    explicit = {
        "timeout": 5.0,
        "retries": {
            "attempts": 3,
            "retry_on": ["overloaded", "unavailable", "no_responders", "overloaded"],
        },
        "load_balancer": "hash",
        "hash_header": "X-User",
        "matches": [{"headers": {"X-Canary": "always"}, "subset": "v2"}],
    }
    implicit = {
        "timeout": 5,
        "load_balancer": "hash",
        "hash_header": "x-user",
        "matches": [{"headers": {"x-canary": "always"}, "subset": "v2"}],
    }
    a = parse_routes(json.dumps(pricing(**explicit))).services["pricing"]
    b = parse_routes(json.dumps(pricing(**implicit))).services["pricing"]
    assert a.canonical() == b.canonical()
    assert a == b
    assert b" " not in a.canonical()


def test_canonical_per_part() -> None:
    config = load_routes(EXAMPLE)
    whole = json.loads(config.canonical())
    assert json.loads(config.http_canonical()) == whole["http"]
    for name, policy in config.services.items():
        assert json.loads(policy.canonical()) == whole["services"][name]
    assert (
        ServicePolicy.model_validate(json.loads(config.services["pricing"].canonical()))
        == (config.services["pricing"])
    )


# ---------------------------------------------------------------- every bad input, precisely


BAD = {
    "unknown field at top level": (
        {"servics": {}},
        [("servics", "unknown field")],
    ),
    "unknown field in a service": (
        {"services": {"catalog": {"timout": 1}}},
        [("services.catalog.timout", "unknown field")],
    ),
    "unknown field in retries": (
        {"services": {"catalog": {"retries": {"attempt": 2}}}},
        [("services.catalog.retries.attempt", "unknown field")],
    ),
    "unknown field in a subset": (
        pricing(subsets=[{"name": "v1", "weight": 100, "version": "1"}]),
        [("services.pricing.subsets[0].version", "unknown field")],
    ),
    "missing field": (
        pricing(subsets=[{"name": "v1"}]),
        [("services.pricing.subsets[0].weight", "missing")],
    ),
    "weights sum to less than 100": (
        pricing(subsets=[{"name": "v1", "weight": 90}, {"name": "v2", "weight": 5}]),
        [("services.pricing.subsets", "weights sum to 95, not 100")],
    ),
    "weights sum to more than 100": (
        pricing(subsets=[{"name": "v1", "weight": 90}, {"name": "v2", "weight": 20}]),
        [("services.pricing.subsets", "weights sum to 110, not 100")],
    ),
    "weight out of range": (
        pricing(subsets=[{"name": "v1", "weight": 101}]),
        [("services.pricing.subsets[0].weight", "less than or equal to 100")],
    ),
    "duplicate subset names": (
        pricing(subsets=[{"name": "v1", "weight": 50}, {"name": "v1", "weight": 50}]),
        [("services.pricing.subsets[1].name", "duplicate subset 'v1' (also subsets[0])")],
    ),
    "unknown subset in a match": (
        pricing(matches=[{"headers": {"x-canary": "always"}, "subset": "v3"}]),
        [("services.pricing.matches[0].subset", "subset 'v3' is not declared in subsets")],
    ),
    "unknown subset as a failover source": (
        pricing(failover={"v3": "v1"}),
        [("services.pricing.failover.v3", "subset 'v3' is not declared in subsets")],
    ),
    "unknown subset as a failover target": (
        pricing(failover={"v2": "v3"}),
        [("services.pricing.failover.v2", "failover target 'v3' is not declared")],
    ),
    "unknown subset in a mirror": (
        pricing(mirror={"subset": "v3", "percent": 5}),
        [("services.pricing.mirror.subset", "subset 'v3' is not declared in subsets")],
    ),
    "subsets referenced but none declared": (
        {"services": {"pricing": {"mirror": {"subset": "v2", "percent": 5}}}},
        [("services.pricing.mirror.subset", "not declared")],
    ),
    "failover 2-cycle": (
        pricing(failover={"v1": "v2", "v2": "v1"}),
        [("services.pricing.failover", "cycle v1 -> v2 -> v1")],
    ),
    "failover self-loop": (
        pricing(failover={"v1": "v1"}),
        [("services.pricing.failover", "cycle v1 -> v1")],
    ),
    "failover 3-cycle": (
        {
            "services": {
                "pricing": {
                    "subsets": [
                        {"name": n, "weight": w} for n, w in [("a", 50), ("b", 50), ("c", 0)]
                    ],
                    "failover": {"b": "c", "a": "b", "c": "a"},
                }
            }
        },
        [("services.pricing.failover", "cycle a -> b -> c -> a")],
    ),
    "zero timeout": (
        {"services": {"catalog": {"timeout": 0}}},
        [("services.catalog.timeout", "greater than 0")],
    ),
    "negative timeout": (
        {"services": {"catalog": {"timeout": -1.5}}},
        [("services.catalog.timeout", "greater than 0")],
    ),
    "timeout over an hour": (
        {"services": {"catalog": {"timeout": 3601}}},
        [("services.catalog.timeout", "less than or equal to 3600")],
    ),
    "zero per-try timeout": (
        {"services": {"catalog": {"retries": {"per_try_timeout": 0}}}},
        [("services.catalog.retries.per_try_timeout", "greater than 0")],
    ),
    "negative per-try timeout": (
        {"services": {"catalog": {"retries": {"per_try_timeout": -0.1}}}},
        [("services.catalog.retries.per_try_timeout", "greater than 0")],
    ),
    "timeout as a string": (
        {"services": {"catalog": {"timeout": "2"}}},
        [("services.catalog.timeout", "valid number")],
    ),
    "timeout as a bool": (
        {"services": {"catalog": {"timeout": True}}},
        [("services.catalog.timeout", "valid number")],
    ),
    "fractional attempts": (
        {"services": {"catalog": {"retries": {"attempts": 1.5}}}},
        [("services.catalog.retries.attempts", "valid integer")],
    ),
    "too many attempts": (
        {"services": {"catalog": {"retries": {"attempts": 11}}}},
        [("services.catalog.retries.attempts", "less than or equal to 10")],
    ),
    "unknown retry condition": (
        {"services": {"catalog": {"retries": {"retry_on": ["timeout", "always"]}}}},
        [("services.catalog.retries.retry_on[1]", "'no_responders', 'overloaded'")],
    ),
    "max backoff below backoff": (
        {"services": {"catalog": {"retries": {"backoff": 1, "max_backoff": 0.5}}}},
        [("services.catalog.retries.max_backoff", "not be less than backoff")],
    ),
    "budget ratio above 1": (
        {"services": {"catalog": {"retries": {"budget_ratio": 1.5}}}},
        [("services.catalog.retries.budget_ratio", "less than or equal to 1")],
    ),
    "weight as a bool": (
        pricing(subsets=[{"name": "v1", "weight": True}]),
        [("services.pricing.subsets[0].weight", "valid integer")],
    ),
    "hedging with delay and percentile": (
        {"services": {"catalog": {"hedging": {"delay": 0.1, "percentile": 95}}}},
        [("services.catalog.hedging", "exactly one of delay and percentile")],
    ),
    "hedging with neither": (
        {"services": {"catalog": {"hedging": {"max_ratio": 0.1}}}},
        [("services.catalog.hedging", "exactly one of delay and percentile")],
    ),
    "hedging percentile out of range": (
        {"services": {"catalog": {"hedging": {"percentile": 99.95}}}},
        [("services.catalog.hedging.percentile", "less than or equal to 99.9")],
    ),
    "hash without hash_header": (
        {"services": {"catalog": {"load_balancer": "hash"}}},
        [("services.catalog.hash_header", "required when load_balancer is 'hash'")],
    ),
    "hash_header without hash": (
        {"services": {"catalog": {"hash_header": "x-user"}}},
        [("services.catalog.hash_header", "only used when load_balancer is 'hash'")],
    ),
    "unknown load balancer": (
        {"services": {"catalog": {"load_balancer": "random"}}},
        [("services.catalog.load_balancer", "'queue', 'p2c' or 'hash'")],
    ),
    "fault delay without its percent": (
        {"services": {"catalog": {"fault": {"delay": 1}}}},
        [("services.catalog.fault.delay_percent", "required with delay")],
    ),
    "fault abort percent without a code": (
        {"services": {"catalog": {"fault": {"abort_percent": 10}}}},
        [("services.catalog.fault.abort_code", "required with abort_percent")],
    ),
    "fault abort code out of range": (
        {"services": {"catalog": {"fault": {"abort_code": 200, "abort_percent": 1}}}},
        [("services.catalog.fault.abort_code", "greater than or equal to 400")],
    ),
    "empty fault": (
        {"services": {"catalog": {"fault": {}}}},
        [("services.catalog.fault", "injects nothing")],
    ),
    "mirror percent zero": (
        pricing(mirror={"subset": "v2", "percent": 0}),
        [("services.pricing.mirror.percent", "greater than 0")],
    ),
    "outlier with zero failures": (
        {"services": {"catalog": {"outlier": {"consecutive_failures": 0}}}},
        [("services.catalog.outlier.consecutive_failures", "greater than or equal to 1")],
    ),
    "infinite timeout": (
        "[services.catalog]\ntimeout = inf\n",
        [("services.catalog.timeout", "finite number")],
    ),
    "service name with a dot": (
        {"services": {"pri.cing": {}}},
        [('services["pri.cing"]', "invalid service name")],
    ),
    "service name with a wildcard": (
        {"services": {"a*": {}}},
        [('services["a*"]', "invalid service name")],
    ),
    "service name with a space": (
        {"services": {"a b": {}}},
        [('services["a b"]', "invalid service name")],
    ),
    "service name that is a full wildcard": (
        {"services": {">": {}}},
        [('services[">"]', "invalid service name")],
    ),
    "subset name with a dot": (
        pricing(subsets=[{"name": "v.1", "weight": 100}]),
        [("services.pricing.subsets[0].name", "invalid subset name")],
    ),
    "subset name with a wildcard": (
        pricing(subsets=[{"name": ">", "weight": 100}]),
        [("services.pricing.subsets[0].name", "invalid subset name")],
    ),
    "failover key that is no name": (
        pricing(failover={"a b": "v1"}),
        [('services.pricing.failover["a b"]', "invalid subset name")],
    ),
    "header name with a space": (
        pricing(matches=[{"headers": {"x canary": "1"}, "subset": "v2"}]),
        [('services.pricing.matches[0].headers["x canary"]', "invalid header name")],
    ),
    "header value with CRLF": (
        pricing(matches=[{"headers": {"x-canary": "1\r\nx-admin: 1"}, "subset": "v2"}]),
        [("services.pricing.matches[0].headers.x-canary", "CR, LF or NUL")],
    ),
    "match without headers": (
        pricing(matches=[{"headers": {}, "subset": "v2"}]),
        [("services.pricing.matches[0].headers", "at least 1 item")],
    ),
    "match with too many headers": (
        pricing(matches=[{"headers": {f"h{i}": "1" for i in range(17)}, "subset": "v2"}]),
        [("services.pricing.matches[0].headers", "at most 16 items")],
    ),
    "path without a slash": (
        {"http": [route(path="products")]},
        [("http[0].path", "must start with '/'")],
    ),
    "path with an empty segment": (
        {"http": [route(path="/a//b")]},
        [("http[0].path", "segment 2 is empty")],
    ),
    "path with a trailing slash": (
        {"http": [route(path="/a/")]},
        [("http[0].path", "segment 2 is empty")],
    ),
    "path with dot-dot": (
        {"http": [route(path="/a/../b")]},
        [("http[0].path", "segment 2 is '.' or '..'")],
    ),
    "path parameter that is no identifier": (
        {"http": [route(path="/a/{1x}")]},
        [("http[0].path", "segment 2: a parameter name must be a Python identifier")],
    ),
    "path parameter twice": (
        {"http": [route(path="/a/{id}/{id}")]},
        [("http[0].path", "duplicate parameter {id}")],
    ),
    "path with a wildcard": (
        {"http": [route(path="/a/b*")]},
        [("http[0].path", "segment 2: use letters, digits")],
    ),
    "path with a percent escape": (
        {"http": [route(path="/a/%2E")]},
        [("http[0].path", "segment 2: use letters, digits")],
    ),
    "path with half a parameter": (
        {"http": [route(path="/a/x{id}")]},
        [("http[0].path", "segment 2: use letters, digits")],
    ),
    "path too long": (
        {"http": [route(path="/" + "a" * 256)]},
        [("http[0].path", "longer than 256 characters")],
    ),
    "path with too many segments": (
        {"http": [route(path="/a" * 17)]},
        [("http[0].path", "more than 16 segments")],
    ),
    "duplicate method and path": (
        {"http": [route(path="/a/{id}"), route(path="/b"), route(path="/a/{id}", target="x.y")]},
        [("http[2]", "GET /a/{id} conflicts with http[0]")],
    ),
    "same path shape, other parameter name": (
        {"http": [route(path="/a/{id}"), route(path="/a/{key}")]},
        [("http[1]", "GET /a/{key} conflicts with http[0]")],
    ),
    "target without an endpoint": (
        {"http": [route(target="catalog")]},
        [("http[0].target", "expected 'service.endpoint'")],
    ),
    "target with a wildcard service": (
        {"http": [route(target="*.get")]},
        [("http[0].target", "invalid service name")],
    ),
    "target with three tokens": (
        {"http": [route(target="catalog.get.x")]},
        [("http[0].target", "invalid endpoint name")],
    ),
    "target with a full wildcard": (
        {"http": [route(target="catalog.>")]},
        [("http[0].target", "invalid endpoint name")],
    ),
    "unknown method": (
        {"http": [route(method="get")]},
        [("http[0].method", "'GET', 'POST', 'PUT', 'PATCH' or 'DELETE'")],
    ),
    "route timeout zero": (
        {"http": [{**route(), "timeout": 0}]},
        [("http[0].timeout", "greater than 0")],
    ),
    "services is not a table": (
        {"services": []},
        [("services", "valid dictionary")],
    ),
    "not TOML": (
        "services = [\n",
        [("<file>", "not TOML: ")],
    ),
    "not TOML, with a position": (
        "[services.catalog]\ntimeout = 2 2\n",
        [("<file>", "not TOML: Expected newline or end of document after a statement (at line 2")],
    ),
    "not JSON": (
        '{"services": {,}}',
        [("<file>", "not JSON: Expecting property name enclosed in double quotes: line 1")],
    ),
    "JSON but not an object": (
        "[1, 2]",
        [("<file>", "not TOML")],
    ),
    "duplicate JSON key": (
        '{"services": {}, "services": {}}',
        [("<file>", 'not JSON: duplicate key "services"')],
    ),
    "JSON NaN": (
        '{"services": {"catalog": {"timeout": NaN}}}',
        [("<file>", "not JSON: NaN is not a number")],
    ),
    "deeply nested JSON": (
        '{"services": ' + "[" * 100_000 + "]" * 100_000 + "}",
        [("<file>", "not JSON: nested too deeply")],
    ),
    "huge JSON integer": (
        '{"services": {"catalog": {"timeout": 1' + "0" * 5000 + "}}}",
        [("<file>", "not JSON: a number has too many digits")],
    ),
    "binary garbage": (
        bytes(range(256)),
        [("<file>", "not UTF-8 text (invalid byte at offset 128)")],
    ),
    "control characters": (
        b"\x00\x01\x02",
        [("<file>", "not TOML")],
    ),
    "over 1 MiB": (
        "# " + "x" * MAX_CONFIG_BYTES,
        [("<file>", f"larger than {MAX_CONFIG_BYTES} bytes")],
    ),
    "over 1 MiB once encoded": (
        "# " + "é" * (MAX_CONFIG_BYTES // 2),
        [("<file>", f"larger than {MAX_CONFIG_BYTES} bytes")],
    ),
}


@pytest.mark.parametrize(("data", "expected"), list(BAD.values()), ids=list(BAD))
def test_bad_config(data: object, expected: list[tuple[str, str]]) -> None:
    assert_problems(data, expected)


def test_json_but_not_an_object_when_told() -> None:
    with pytest.raises(RouteConfigError) as info:
        parse_routes("[1, 2]", format="json")
    assert info.value.problems == (Problem("<file>", "the top level must be a JSON object"),)


def test_multiple_problems_reported_together() -> None:
    data = {
        "extra": 1,
        "services": {
            "pri.cing": {"timeout": "2"},
            "catalog": {"retries": {"attempts": 0, "per_try_timeout": -1}},
            "orders": {
                "subsets": [{"name": "v1", "weight": 60}, {"name": "v1", "weight": 30}],
                "failover": {"v1": "v2"},
                "load_balancer": "hash",
            },
        },
        "http": [route(path="products"), route(target="x")],
    }
    found = problems_of(data)
    assert found == [
        ('services["pri.cing"]', "invalid service name: " + found[0][1].split(": ", 1)[1]),
        ('services["pri.cing"].timeout', "Input should be a valid number"),
        ("services.catalog.retries.attempts", "Input should be greater than or equal to 1"),
        ("services.catalog.retries.per_try_timeout", "Input should be greater than 0"),
        ("services.orders.hash_header", "required when load_balancer is 'hash'"),
        ("services.orders.subsets[1].name", "duplicate subset 'v1' (also subsets[0])"),
        ("services.orders.subsets", "weights sum to 90, not 100"),
        ("services.orders.failover.v1", "failover target 'v2' is not declared in subsets"),
        ("http[0].path", "must start with '/'"),
        ("http[1].target", "expected 'service.endpoint'"),
        ("extra", "unknown field"),
    ]
    with pytest.raises(RouteConfigError) as info:
        parse_routes(json.dumps(data))
    assert str(info.value).splitlines() == [f"{path}: {reason}" for path, reason in found]


def test_error_is_a_mesh_error_and_a_value_error() -> None:
    with pytest.raises(RouteConfigError) as info:
        parse_routes('{"services": 1}')
    assert isinstance(info.value, MeshError)
    assert isinstance(info.value, ValueError)
    assert str(info.value) == "services: Input should be a valid dictionary"


def test_reasons_do_not_echo_input_values() -> None:
    marker = "hunter2-MARKER"
    data = {
        "services": {"catalog": {"timeout": marker, "load_balancer": marker}},
        "http": [route(path=f"/{marker}*", target=f"{marker}.*"), route(method=marker)],
    }
    text = "\n".join(reason for _, reason in problems_of(data))
    assert marker not in text
    assert len(problems_of(data)) == 5


def test_many_problems_are_cut_in_the_message() -> None:
    data = {"http": [route(path="bad") for _ in range(80)]}
    with pytest.raises(RouteConfigError) as info:
        parse_routes(json.dumps(data))
    assert len(info.value.problems) == 80
    lines = str(info.value).splitlines()
    assert len(lines) == 51
    assert lines[-1] == "... and 30 more problems"


def test_long_invalid_keys_are_cut_in_paths() -> None:
    [(path, _)] = problems_of({"services": {"a." * 200: {}}})
    assert path.startswith('services["a.a.')
    assert path.endswith('..."]')
    assert len(path) < 80


def test_validate_routes_takes_decoded_data() -> None:
    assert validate_routes({"services": {"catalog": {}}}).services["catalog"] == ServicePolicy()
    with pytest.raises(RouteConfigError) as info:
        validate_routes([])
    assert info.value.problems[0].path == "<config>"


# ---------------------------------------------------------------- files


def test_load_json_by_suffix(tmp_path: Path) -> None:
    path = tmp_path / "routes.json"
    path.write_text(load_routes(EXAMPLE).model_dump_json())
    assert load_routes(str(path)) == load_routes(EXAMPLE)


def test_load_detects_the_format_without_a_suffix(tmp_path: Path) -> None:
    (tmp_path / "routes").write_text(EXAMPLE.read_text())
    (tmp_path / "routes.conf").write_text(load_routes(EXAMPLE).model_dump_json())
    assert load_routes(tmp_path / "routes") == load_routes(tmp_path / "routes.conf")


def test_load_suffix_decides_the_format(tmp_path: Path) -> None:
    path = tmp_path / "routes.toml"
    path.write_text('{"services": {}}')
    with pytest.raises(RouteConfigError, match="not TOML"):
        load_routes(path)


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda d: d / "missing.toml", "no such file: "),
        (lambda d: d, "a directory, not a file: "),
        (lambda d: _write(d / "r.toml", b"timeout = 1\n\xff\xfe"), "not UTF-8 text"),
        (lambda d: _write(d / "r.toml", b"#" * (MAX_CONFIG_BYTES + 1)), "larger than"),
    ],
    ids=["missing", "directory", "not UTF-8", "too large"],
)
def test_load_problems(tmp_path: Path, make: Any, fragment: str) -> None:
    with pytest.raises(RouteConfigError) as info:
        load_routes(make(tmp_path))
    [problem] = info.value.problems
    assert problem.path == "<file>"
    assert fragment in problem.reason


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# ---------------------------------------------------------------- properties

names = st.from_regex(r"[A-Za-z][A-Za-z0-9_-]{0,11}", fullmatch=True)
seconds = st.floats(min_value=0.001, max_value=3600) | st.integers(min_value=1, max_value=3600)
ratios = st.floats(min_value=0, max_value=1)
header_values = st.text(st.characters(exclude_characters="\r\n\x00"), max_size=20)


@st.composite
def service_policies(draw: st.DrawFn) -> dict[str, Any]:
    subsets = draw(st.lists(names, unique=True, max_size=4))
    cuts = (
        sorted(
            draw(
                st.lists(st.integers(0, 100), min_size=len(subsets) - 1, max_size=len(subsets) - 1)
            )
        )
        if subsets
        else []
    )
    weights = [b - a for a, b in zip([0, *cuts], [*cuts, 100], strict=True)] if subsets else []
    policy: dict[str, Any] = {
        "timeout": draw(seconds),
        "subsets": [{"name": n, "weight": w} for n, w in zip(subsets, weights, strict=True)],
    }
    backoff = draw(st.floats(min_value=0, max_value=1))
    policy["retries"] = {
        "attempts": draw(st.integers(1, 10)),
        "retry_on": draw(
            st.lists(st.sampled_from(["no_responders", "overloaded", "timeout", "unavailable"]))
        ),
        "backoff": backoff,
        "max_backoff": backoff + draw(st.floats(min_value=0, max_value=5)),
        "budget_ratio": draw(ratios),
    }
    if draw(st.booleans()):
        policy["retries"]["per_try_timeout"] = draw(seconds)
    if draw(st.booleans()):
        which = draw(st.sampled_from(["delay", "percentile"]))
        value = draw(seconds if which == "delay" else st.floats(min_value=50, max_value=99.9))
        policy["hedging"] = {which: value, "max_ratio": draw(ratios)}
    policy["load_balancer"] = draw(st.sampled_from(["queue", "p2c", "hash"]))
    if policy["load_balancer"] == "hash":
        policy["hash_header"] = draw(names)
    if subsets:
        headers = st.dictionaries(names, header_values, min_size=1, max_size=3)
        policy["matches"] = draw(
            st.lists(
                st.builds(
                    lambda h, s: {"headers": h, "subset": s}, headers, st.sampled_from(subsets)
                ),
                max_size=3,
            )
        )
        # Failing over only to an earlier subset cannot make a cycle.
        policy["failover"] = {
            subsets[i]: subsets[draw(st.integers(0, i - 1))]
            for i in range(1, len(subsets))
            if draw(st.booleans())
        }
        if draw(st.booleans()):
            pct = draw(st.floats(min_value=0.01, max_value=100))
            policy["mirror"] = {"subset": draw(st.sampled_from(subsets)), "percent": pct}
    if draw(st.booleans()):
        policy["fault"] = {
            "abort_code": draw(st.integers(400, 599)),
            "abort_percent": draw(st.floats(0, 100)),
        }
    return policy


segments = st.from_regex(r"[A-Za-z0-9_-]{1,8}", fullmatch=True)


@st.composite
def configs(draw: st.DrawFn) -> dict[str, Any]:
    services = draw(st.dictionaries(names, service_policies(), max_size=3))
    firsts = draw(st.lists(segments, unique=True, max_size=4))
    http = [
        {
            "method": draw(st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE"])),
            "path": f"/{first}" + draw(st.sampled_from(["", "/{id}", "/{id}/items"])),
            "target": f"{draw(names)}.{draw(names)}",
        }
        for first in firsts
    ]
    return {"services": services, "http": http}


@settings(max_examples=60, deadline=None)
@given(configs())
def test_canonical_is_stable(data: dict[str, Any]) -> None:
    config = parse_routes(json.dumps(data))
    canonical = config.canonical()
    again = parse_routes(canonical)
    assert again == config
    assert again.canonical() == canonical
    assert parse_routes(canonical, format="json").http_canonical() == config.http_canonical()


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_any_input_is_a_config_or_a_route_config_error(data: bytes) -> None:
    problems: tuple[Problem, ...] = ()
    try:
        config = parse_routes(data)
    except RouteConfigError as exc:
        problems = exc.problems
    else:
        assert isinstance(config, RouteConfig)
        return
    assert problems
    assert all(p.path and p.reason for p in problems)


@given(st.text(max_size=40))
def test_accepted_paths_hold_no_subject_or_escape_characters(path: str) -> None:
    try:
        HttpRoute(method="GET", path=path, target="a.b")
    except ValueError:
        return
    assert path.startswith("/")
    assert not set(path) & set(".*>%?# \t\r\n\x00")


@given(st.lists(st.integers(0, 100), min_size=1, max_size=5))
def test_weights_must_sum_to_100(weights: list[int]) -> None:
    subsets = [{"name": f"s{i}", "weight": w} for i, w in enumerate(weights)]
    data = {"services": {"svc": {"subsets": subsets}}}
    if sum(weights) == 100:
        assert validate_routes(data).services["svc"].subsets[0].weight == weights[0]
    else:
        with pytest.raises(RouteConfigError) as info:
            validate_routes(data)
        assert info.value.problems == (
            Problem("services.svc.subsets", f"weights sum to {sum(weights)}, not 100"),
        )


@given(st.dictionaries(st.integers(0, 5), st.integers(0, 5)))
def test_failover_cycles_are_found(edges: dict[int, int]) -> None:
    subsets = [{"name": f"s{i}", "weight": 100 if i == 0 else 0} for i in range(6)]
    failover = {f"s{a}": f"s{b}" for a, b in edges.items()}
    data = {"services": {"svc": {"subsets": subsets, "failover": failover}}}
    cycles = set()
    for start in edges:
        seen: list[int] = []
        node: int | None = start
        while node is not None and node not in seen:
            seen.append(node)
            node = edges.get(node)
        if node is not None:
            cycles.add(frozenset(seen[seen.index(node) :]))
    if not cycles:
        validate_routes(data)
        return
    with pytest.raises(RouteConfigError) as info:
        validate_routes(data)
    reported = [p.reason.removeprefix("cycle ").split(" -> ") for p in info.value.problems]
    assert all(p.path == "services.svc.failover" for p in info.value.problems)
    assert {frozenset(c) for c in reported} == {frozenset(f"s{i}" for i in c) for c in cycles}
    assert all(c[0] == c[-1] for c in reported)
