"""Applying route configs as a user does (``natsmesh routes apply``) against a real
controller: every problem in one answer, and what nothing live serves refused
unless ``--allow-empty``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from services import Echo
from test_cli import run
from waits import eventually, leading

from natsmesh import Mesh, NoResponders, ServiceRunner
from natsmesh.control._controller import Controller
from natsmesh.traffic._routes import RouteConfigError, parse_routes

pytestmark = pytest.mark.anyio

# Problems of every layer at once: fields, each model's own checks, the whole file's.
EVERYTHING_WRONG = """
[services.pricing]
timeout = 0

[services.pricing.retries]
attempts = 0
backoff = 1.0
max_backoff = 0.5

[[services.pricing.subsets]]
name = "v1"
weight = 60

[[services.pricing.subsets]]
name = "v3"
weight = 30

[services.pricing.failover]
v3 = "v9"

[services.catalog]
load_balancer = "hash"

[[http]]
method = "GET"
path = "/a/{id}"
target = "catalog.get"

[[http]]
method = "GET"
path = "/a/{key}"
target = "catalog.get"

[[http]]
method = "GET"
path = "nope"
target = "catalog.get"
"""

EXPECTED = [
    ("services.pricing.timeout", "greater than 0"),
    ("services.pricing.retries.attempts", "greater than or equal to 1"),
    ("services.pricing.retries.max_backoff", "must not be less than backoff"),
    ("services.pricing.subsets", "weights sum to 90, not 100"),
    ("services.pricing.failover.v3", "failover target 'v9' is not declared in subsets"),
    ("services.catalog.hash_header", "required when load_balancer is 'hash'"),
    ("http[2].path", "must start with '/'"),
    ("http[1]", "GET /a/{key} conflicts with http[0]"),
]


def _same_problems(found: list[tuple[str, str]]) -> None:
    assert sorted(p for p, _ in found) == sorted(p for p, _ in EXPECTED), found
    for path, fragment in EXPECTED:
        assert any(p == path and fragment in r for p, r in found), (path, found)


def test_every_problem_of_a_config_in_one_answer() -> None:
    with pytest.raises(RouteConfigError) as caught:
        parse_routes(EVERYTHING_WRONG)
    _same_problems([(p.path, p.reason) for p in caught.value.problems])


def test_a_model_check_is_not_hidden_by_a_bad_field_beside_it() -> None:
    # The weight sum of one service, the conflict of two routes: reported next to a
    # field error in the same model, not after it is fixed.
    with pytest.raises(RouteConfigError) as caught:
        parse_routes(
            '[services.a]\ntimeout = "soon"\nsubsets = [{name = "v1", weight = 50}]\n'
            '[[http]]\nmethod = "GET"\npath = "/x"\ntarget = "a.b"\ntimeout = -1\n'
            '[[http]]\nmethod = "GET"\npath = "/x"\ntarget = "a.c"\n'
        )
    found = {p.path: p.reason for p in caught.value.problems}
    assert set(found) == {"services.a.timeout", "services.a.subsets", "http[0].timeout"}
    # http[0] is invalid on its own, so it conflicts with nothing.
    assert "weights sum to 50" in found["services.a.subsets"]


@pytest.fixture
async def controller(nats_url: str) -> AsyncIterator[Controller]:
    async with Controller(nats_url, lease=1.0) as ctl:
        await leading(ctl)
        yield ctl


async def test_the_cli_prints_every_problem_at_once(
    nats_url: str, controller: Controller, tmp_path: Path
) -> None:
    bad = tmp_path / "routes.toml"
    bad.write_text(EVERYTHING_WRONG)
    done = await run("routes", "apply", str(bad), "--nats", nats_url)
    assert done.returncode == 1
    lines = [line for line in done.stderr.splitlines() if line]
    prefix = f"natsmesh: {bad}: "
    assert all(line.startswith(prefix) for line in lines), lines
    _same_problems([tuple(line[len(prefix) :].split(": ", 1)) for line in lines])  # type: ignore[misc]
    assert "Traceback" not in done.stderr


# Echo 1.0.0 serves subset v1 and endpoints echo, slow, whoami; nobody serves "ghost".
EMPTY_TARGETS = """
[services.echo]
subsets = [{name = "v1", weight = 0}, {name = "v3", weight = 100}]

[services.ghost]
timeout = 1

[[http]]
method = "GET"
path = "/ghost"
target = "ghost.get"

[[http]]
method = "GET"
path = "/echo/missing"
target = "echo.missing"

[[http]]
method = "POST"
path = "/echo"
target = "echo.echo"
"""

WARNINGS = [
    "services.echo.subsets[1].name: no live instance of 'echo' serves subset 'v3'",
    "services.ghost: no live instance of 'ghost'",
    "http[0].target: no live instance of service 'ghost'",
    "http[1].target: no live instance of 'echo' has an endpoint 'missing'",
]


async def test_routes_apply_refuses_what_nothing_serves_unless_allowed(
    nats_url: str, controller: Controller, tmp_path: Path
) -> None:
    config = tmp_path / "routes.toml"
    config.write_text(EMPTY_TARGETS)
    async with ServiceRunner(Echo(), nats=nats_url):
        refused = await run("routes", "apply", str(config), "--nats", nats_url)
        assert refused.returncode == 1
        for warning in WARNINGS:
            assert f"natsmesh: {config}: warning: {warning}\n" in refused.stderr
        assert "--allow-empty" in refused.stderr
        shown = await run("routes", "show", "--json", "--nats", nats_url)
        assert "routes.echo" not in json.loads(shown.stdout)  # nothing was written

        applied = await run("routes", "apply", str(config), "--allow-empty", "--nats", nats_url)
        assert applied.returncode == 0, applied.stderr
        assert "routes.echo: revision" in applied.stdout
        for warning in WARNINGS:
            assert f"warning: {warning}" in applied.stderr

        # What it warned of: calls to the empty subset find no responders, and say where.
        async with Mesh(nats_url) as mesh:
            assert mesh._tables is not None
            await mesh._tables.ensure("echo", wait=5)
            await eventually(lambda: mesh._tables.snapshot("echo").policy)  # type: ignore[union-attr]
            with pytest.raises(NoResponders) as caught:
                await mesh.call("echo.echo", {"id": 1, "name": "a"})
            assert caught.value.subset == "v3"
            assert str(caught.value) == "no responders for echo.echo in subset v3"


async def test_a_config_whose_targets_all_run_applies_without_warnings(
    nats_url: str, controller: Controller, tmp_path: Path
) -> None:
    config = tmp_path / "routes.toml"
    config.write_text('[services.echo]\nsubsets = [{name = "v1", weight = 100}]\n')
    async with ServiceRunner(Echo(), nats=nats_url):
        done = await run("routes", "apply", str(config), "--nats", nats_url)
        assert done.returncode == 0, done.stderr
        assert "warning" not in done.stderr


async def test_a_failover_chain_of_empty_subsets_names_each(
    nats_url: str, controller: Controller
) -> None:
    routes = (
        b'[services.echo]\nsubsets = [{name = "v2", weight = 100}, {name = "v3", weight = 0}]\n'
        b'failover = {v2 = "v3"}\n'
    )
    async with ServiceRunner(Echo(), nats=nats_url), Mesh(nats_url) as mesh:
        assert (await controller.apply(routes, allow_empty=True)).ok
        assert mesh._tables is not None
        await mesh._tables.ensure("echo", wait=5)
        await eventually(lambda: mesh._tables.snapshot("echo").policy)  # type: ignore[union-attr]
        with pytest.raises(NoResponders) as caught:
            await mesh.call("echo.echo", {"id": 1, "name": "a"})
        assert str(caught.value) == "no responders for echo.echo in subsets v2, v3"
