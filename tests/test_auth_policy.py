"""The access policy: parsing, precise errors, the grants it compiles to, and its files."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from natsmesh.security._auth_files import AUTH_CONF, CompileError, compile_policy
from natsmesh.security._grants import inbox_prefix, permissions
from natsmesh.security._policy import Identity, Policy, PolicyError, load_policy, parse_policy

ROOT = Path(__file__).parent.parent
EXAMPLE = ROOT / "examples" / "policy.toml"


def nats_match(pattern: str, subject: str) -> bool:
    """NATS subject matching: ``*`` one token, ``>`` one or more trailing tokens.

    ``subject`` may hold wildcards too: nats-server checks a subscription's subject
    against the allow list token by token, so a ``*`` in a grant also lets a client
    subscribe with ``*`` or ``>`` in that place. Treat them as plain tokens here,
    which is what the server does.
    """
    p, s = pattern.split("."), subject.split(".")
    for i, token in enumerate(p):
        if token == ">":
            return len(s) > i
        if i >= len(s) or (token != "*" and token != s[i]):
            return False
    return len(p) == len(s)


def grants_of(policy: Policy, name: str) -> tuple[list[str], list[str]]:
    identity = next(i for i in policy.identity if i.name == name)
    grants = permissions(policy, identity)
    return list(grants.publish), list(grants.subscribe)


def allowed(patterns: list[str], subject: str) -> bool:
    return any(nats_match(p.split(" ")[0], subject) for p in patterns)


# -- the example -------------------------------------------------------------------------


def test_example_policy_compiles_to_the_documented_grants() -> None:
    policy = load_policy(EXAMPLE)
    assert [i.name for i in policy.identity] == [
        "catalog",
        "pricing",
        "orders",
        "gateway",
        "controller",
        "admin",
        "dashboard",
    ]
    pub, sub = grants_of(policy, "orders")
    assert {"mesh.catalog.get", "mesh.catalog.*.get", "mesh._i.catalog.*.get"} <= set(pub)
    assert {"mesh.pricing.quote", "mesh.pricing.*.quote", "mesh._i.pricing.*.quote"} <= set(pub)
    assert not allowed(pub, "mesh.catalog.list")
    assert not allowed(pub, "mesh.orders.place")  # it does not call itself
    # Naming itself as the caller, and nobody else.
    for subject in ("mesh.catalog.get", "mesh.catalog.v1.get", "mesh._i.catalog.c1.get"):
        assert allowed(pub, f"{subject}._c.orders")
        assert not allowed(pub, f"{subject}._c.pricing")
        assert not allowed(pub, f"{subject}._c.*")
    assert set(sub) == {
        "mesh.orders.* orders",
        "mesh.orders.*.* orders.*",
        "mesh._i.orders.*.*",
        "mesh.orders.*._c.* orders",
        "mesh.orders.*.*._c.* orders.*",
        "mesh._i.orders.*.*._c.*",
        "$SRV.PING",
        "$SRV.INFO",
        "$SRV.STATS",
        "$SRV.PING.orders",
        "$SRV.INFO.orders",
        "$SRV.STATS.orders",
        "$SRV.PING.orders.*",
        "$SRV.INFO.orders.*",
        "$SRV.STATS.orders.*",
        "mesh._ctl.eject.orders.*",
        "mesh._ctl.table.routes.catalog",
        "mesh._ctl.table.registry.catalog",
        "mesh._ctl.table.routes.pricing",
        "mesh._ctl.table.registry.pricing",
        "_INBOX_orders.>",
        "mesh._ctl.observe.interest",  # an observer's interest in summaries
        "mesh._ctl.observe.tap.orders",  # someone watching its own requests only
    }
    assert {
        "mesh._ctl.announce.orders",
        "mesh._ctl.heartbeat.orders",
        "mesh._ctl.leave.orders",
        "mesh._ctl.status.report.orders",
    } <= set(pub)
    assert not allowed(pub, "mesh._ctl.announce.pricing")
    assert not allowed(pub, "mesh._ctl.status.report.pricing")


def test_a_caller_reads_the_tables_of_what_it_calls_and_nothing_else() -> None:
    policy = load_policy(EXAMPLE)
    pub, sub = grants_of(policy, "orders")
    for key in ("routes.pricing", "registry.pricing", "routes.catalog", "registry.catalog"):
        assert allowed(pub, f"$JS.API.DIRECT.GET.KV_natsmesh.$KV.natsmesh.{key}")
        assert allowed(sub, f"mesh._ctl.table.{key}")
    for key in ("routes.orders", "registry.orders", "http", "leader"):
        assert not allowed(pub, f"$JS.API.DIRECT.GET.KV_natsmesh.$KV.natsmesh.{key}")
        assert not allowed(sub, f"mesh._ctl.table.{key}")
    gateway_pub, gateway_sub = grants_of(policy, "gateway")
    assert allowed(gateway_pub, "$JS.API.DIRECT.GET.KV_natsmesh.$KV.natsmesh.http")
    assert allowed(gateway_sub, "mesh._ctl.table.http")


def test_each_kind_gets_its_own_control_plane_grants() -> None:
    policy = load_policy(EXAMPLE)
    gateway, _ = grants_of(policy, "gateway")
    controller, controller_sub = grants_of(policy, "controller")
    admin, _ = grants_of(policy, "admin")
    assert "$JS.API.>" in controller
    assert "$KV.natsmesh.>" in controller
    assert {
        "mesh._ctl.announce.*",
        "mesh._ctl.routes.apply",
        "mesh._ctl.routes.show",
        "mesh._ctl.status.report.*",
        "mesh._ctl.outlier.*.*",
    } <= set(controller_sub)
    for subject in ("mesh._ctl.routes.apply", "mesh._ctl.announce.catalog", "$KV.natsmesh.http"):
        assert not allowed(gateway, subject)
    assert allowed(gateway, "mesh.catalog.list")
    assert allowed(gateway, "mesh.orders.v1.place")
    assert allowed(admin, "mesh._ctl.routes.apply")
    assert allowed(admin, "mesh._ctl.status.show")
    read_only = parse_policy('[[identity]]\nname = "ops"\nkind = "operator"\n')
    ops, ops_sub = grants_of(read_only, "ops")
    assert allowed(ops, "mesh._ctl.routes.show")
    assert not allowed(ops, "mesh._ctl.routes.apply")
    # Every table (the dashboard shows them); observation: ask for and read summaries,
    # tap samples and failed requests, no more.
    assert allowed(ops, "$JS.API.DIRECT.GET.KV_natsmesh.$KV.natsmesh.routes.orders")
    assert not allowed(ops, "$JS.API.CONSUMER.CREATE.KV_natsmesh")
    assert ops_sub == [
        "mesh._ctl.table.>",
        "_INBOX_ops.>",
        "mesh._ctl.observe.interest",
        "mesh._ctl.observe.metrics.*.*",
        "mesh._ctl.observe.samples.*.*",
        "mesh._ctl.observe.errors.*.*",
    ]
    assert allowed(ops, "mesh._ctl.observe.tap.orders")
    assert not allowed(ops, "mesh._ctl.observe.samples.orders.x")


def test_each_identity_reports_observations_under_its_own_name_only() -> None:
    policy = load_policy(EXAMPLE)
    orders, _ = grants_of(policy, "orders")
    gateway, gateway_sub = grants_of(policy, "gateway")
    assert allowed(orders, "mesh._ctl.observe.metrics.orders.abc")
    assert allowed(orders, "mesh._ctl.observe.samples.orders.abc")
    assert not allowed(orders, "mesh._ctl.observe.metrics.pricing.abc")  # no forged sender
    assert not allowed(orders, "mesh._ctl.observe.samples.pricing.abc")
    assert allowed(orders, "mesh._ctl.observe.errors.orders.abc")
    assert not allowed(orders, "mesh._ctl.observe.errors.pricing.abc")
    assert not allowed(orders, "mesh._ctl.observe.interest")
    assert allowed(gateway, "mesh._ctl.observe.metrics.gateway.abc")
    assert not allowed(gateway, "mesh._ctl.observe.metrics.orders.abc")
    assert not allowed(gateway_sub, "mesh._ctl.observe.metrics.orders.abc")  # nor reads them


def test_only_the_controller_ejects_and_only_callers_report_outliers() -> None:
    policy = load_policy(EXAMPLE)
    orders_pub, orders_sub = grants_of(policy, "orders")
    controller_pub, controller_sub = grants_of(policy, "controller")
    gateway_pub, _ = grants_of(policy, "gateway")
    # An instance hears eject commands for its own service's instances only.
    assert allowed(orders_sub, "mesh._ctl.eject.orders.abc123")
    assert not allowed(orders_sub, "mesh._ctl.eject.pricing.abc123")
    # Only the controller may publish them.
    assert allowed(controller_pub, "mesh._ctl.eject.orders.abc123")
    for name in ("orders", "pricing", "catalog", "gateway", "admin"):
        pub, _ = grants_of(policy, name)
        assert not allowed(pub, "mesh._ctl.eject.orders.abc123"), name
    # A caller reports outliers of the services it calls, of no other, and as itself only.
    assert allowed(orders_pub, "mesh._ctl.outlier.pricing.orders")
    assert allowed(orders_pub, "mesh._ctl.outlier.catalog.orders")
    assert not allowed(orders_pub, "mesh._ctl.outlier.orders.orders")
    assert not allowed(orders_pub, "mesh._ctl.outlier.catalog.pricing")
    assert not allowed(orders_pub, "mesh._ctl.outlier.catalog")
    assert allowed(controller_sub, "mesh._ctl.outlier.pricing.orders")
    edge = parse_policy('[[identity]]\nname = "edge"\nkind = "gateway"\ncalls = ["*"]\n')
    grants = permissions(edge, edge.identity[0])
    # '*' grants no report subject, and the control-plane deny covers it anyway.
    assert allowed(list(grants.publish_deny), "mesh._ctl.outlier.pricing")
    assert not allowed(list(grants.publish), "mesh._ctl.outlier.pricing.edge")
    assert not any("outlier" in p for p in grants.publish)
    assert gateway_pub  # the example gateway lists its calls


def test_a_call_to_every_service_excludes_the_control_plane() -> None:
    policy = parse_policy('[[identity]]\nname = "edge"\nkind = "gateway"\ncalls = ["*"]\n')
    identity = policy.identity[0]
    grants = permissions(policy, identity)
    assert allowed(list(grants.publish), "mesh.anything.get")
    assert allowed(list(grants.publish), "mesh._i.anything.x1.get")
    # Allowed by mesh.*.*.* but denied, and deny wins in nats-server.
    for subject in ("mesh._ctl.routes.apply", "mesh._ctl.announce.catalog"):
        assert allowed(list(grants.publish), subject)
        assert allowed(list(grants.publish_deny), subject)
    for subject in (
        "mesh._ctl.status",
        "mesh._ctl.table.http",
        "mesh._ctl.outlier._c.edge",
        "mesh._ctl.table.routes._c.edge",
    ):
        assert allowed(list(grants.publish_deny), subject)
    assert allowed(list(grants.publish), "mesh.anything.get._c.edge")
    assert not allowed(list(grants.publish_deny), "mesh.anything.get._c.edge")
    assert not allowed(list(grants.publish), "mesh.anything.get._c.other")
    # Its own status reports: five tokens, outside every wildcard grant, so only the
    # explicit grant covers them, and no deny does.
    assert allowed(list(grants.publish), "mesh._ctl.status.report.edge")
    assert not allowed(list(grants.publish_deny), "mesh._ctl.status.report.edge")
    assert not allowed(list(grants.publish), "mesh._ctl.status.report.other")
    assert not allowed(list(grants.publish), "mesh._ctl.table.routes.x")


# -- properties --------------------------------------------------------------------------

NAMES = st.from_regex(r"[a-z][a-z0-9_-]{0,8}", fullmatch=True)


@st.composite
def policies(draw: st.DrawFn) -> Policy:
    names = draw(st.lists(NAMES, min_size=1, max_size=6, unique=True))
    identities = []
    for name in names:
        kind = draw(st.sampled_from(["service", "gateway", "controller", "operator"]))
        admin = kind == "operator" and draw(st.booleans())
        calls: list[str] = []
        if kind != "controller":
            targets = st.one_of(
                st.tuples(NAMES, NAMES).map(".".join), NAMES.map(lambda s: f"{s}.*")
            )
            calls = draw(st.lists(targets, max_size=4, unique=True))
            if kind == "gateway" or (kind == "operator" and not admin):
                calls += draw(st.sampled_from([[], ["*"]]))
        identities.append(Identity(name=name, kind=kind, admin=admin, calls=calls))
    return Policy(identity=identities)


@settings(max_examples=200, deadline=None)
@given(policies(), NAMES, NAMES)
def test_no_identity_subscribes_to_a_service_not_its_own(
    policy: Policy, service: str, endpoint: str
) -> None:
    """So a request to an unknown service meets no subscriber: no responders, at once."""
    for identity in policy.identity:
        _, sub = grants_of(policy, identity.name)
        if identity.kind == "service" and identity.name == service:
            continue
        for subject in (
            f"mesh.{service}.{endpoint}",
            f"mesh.{service}.v1.{endpoint}",
            f"mesh._i.{service}.x1.{endpoint}",
            f"mesh.{service}.>",
            "mesh.>",
            "mesh.*.>",
            f"$SRV.INFO.{service}",
        ):
            assert not allowed(sub, subject), (identity.name, subject)


@settings(max_examples=200, deadline=None)
@given(policies())
def test_jetstream_writes_and_foreign_inboxes_are_the_controllers_and_nobodys(
    policy: Policy,
) -> None:
    prefixes = {inbox_prefix(i.name) for i in policy.identity}
    for identity in policy.identity:
        pub, sub = grants_of(policy, identity.name)
        js = [p for p in pub if p.startswith(("$JS", "$KV"))]
        if identity.kind == "controller":
            assert "$JS.API.>" in js
        else:
            # Direct gets of the tables only: no consumer (whose delivery subject
            # nobody's permissions check), no stream API, no write.
            direct = "$JS.API.DIRECT.GET.KV_natsmesh.$KV.natsmesh."
            assert all(p.startswith(direct) for p in js), js
            for subject in (
                "$JS.API.CONSUMER.CREATE.KV_natsmesh",
                "$JS.API.CONSUMER.CREATE.KV_natsmesh.x.$KV.natsmesh.>",
                "$JS.API.CONSUMER.DURABLE.CREATE.KV_natsmesh.x",
                "$JS.API.STREAM.INFO.KV_natsmesh",
                "$JS.API.STREAM.MSG.GET.KV_natsmesh",
                "$JS.API.DIRECT.GET.KV_natsmesh",
                "$KV.natsmesh.routes.x",
            ):
                assert not allowed(pub, subject), (identity.name, subject)
        own = inbox_prefix(identity.name)
        for other in prefixes - {own}:
            assert not allowed(sub, f"{other}.x")
        assert not allowed(sub, "_INBOX.x")
        assert not allowed(sub, ">")
        # Plain subscriptions only on the identity's own inbox, instances and $SRV subjects.
        for grant in sub:
            subject, _, queue = grant.partition(" ")
            if identity.kind == "service" and subject.startswith(f"mesh.{identity.name}."):
                assert queue in (identity.name, f"{identity.name}.*")


# -- precise errors ----------------------------------------------------------------------


def one(kind: str, extra: str = "") -> str:
    """A policy of one identity ``a`` of ``kind``, plus ``extra`` lines."""
    return f"[[identity]]\nname = 'a'\nkind = '{kind}'\n{extra}\n"


CALLS_0 = "identity[0].calls[0]"
WILDCARD = "a wildcard may only"
BAD = [
    ('identity = [ "x"', "<file>", "not TOML"),
    ("colour = 1\n" + one("gateway"), "colour", "unknown field"),
    (one("gateway", "hats = 1"), "identity[0].hats", "unknown field"),
    (one("gateway").replace("'a'", "'9a'"), "identity[0].name", "invalid identity name"),
    (one("gateway").replace("'a'", "'a.b'"), "identity[0].name", "invalid identity name"),
    (one("robot"), "identity[0].kind", "Input should be"),
    ("[[identity]]\nname = 'a'\n", "identity[0].kind", "missing required field"),
    ("identity = []\n", "identity", "at least 1"),
    (
        one("gateway") + one("service"),
        "identity[1].name",
        "duplicate identity 'a' (also identity[0])",
    ),
    (one("gateway", "calls = ['*.get']"), CALLS_0, WILDCARD),
    (one("gateway", "calls = ['b.>']"), CALLS_0, WILDCARD),
    (one("gateway", "calls = ['b.g*t']"), CALLS_0, WILDCARD),
    (one("gateway", "calls = ['>']"), CALLS_0, "expected 'service.endpoint'"),
    (one("gateway", "calls = ['b.c.d']"), CALLS_0, "invalid endpoint name"),
    (one("gateway", "calls = ['b.c', 'b.c']"), "identity[0].calls[1]", "duplicate of calls[0]"),
    (one("service", "calls = ['*']"), CALLS_0, "'*' is for gateways"),
    (one("operator", "admin = true\ncalls = ['*']"), CALLS_0, "'*' is for gateways"),
    (one("service", "admin = true"), "identity[0].admin", "only an operator"),
    (one("controller", "calls = ['b.c']"), "identity[0].calls", "calls no service"),
    (one("gateway", "auth = 'jwt'"), "identity[0].auth", "Input should be"),
    ("prefix = 'a.>'\n" + one("gateway"), "prefix", "invalid subject prefix"),
]


@pytest.mark.parametrize(("text", "path", "reason"), BAD)
def test_bad_policies_name_the_path_and_the_reason(text: str, path: str, reason: str) -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy(text)
    problems = {(p.path, p.reason) for p in caught.value.problems}
    assert any(p == path and reason in r for p, r in problems), problems


def test_every_problem_is_reported_at_once() -> None:
    text = (
        "[[identity]]\nname = 'a'\nkind = 'gateway'\ncalls = ['*.x', 'b.>']\n"
        "[[identity]]\nname = 'a'\nkind = 'nope'\n"
    )
    with pytest.raises(PolicyError) as caught:
        parse_policy(text)
    paths = {p.path for p in caught.value.problems}
    assert {"identity[0].calls[0]", "identity[0].calls[1]", "identity[1].kind"} <= paths


def test_the_inbox_prefix_is_one_token_per_identity() -> None:
    assert inbox_prefix("orders") == "_INBOX_orders"
    with pytest.raises(ValueError, match="identity"):
        inbox_prefix("a.>")


# -- files and the CLI -------------------------------------------------------------------


def _env(path: Path) -> dict[str, str]:
    lines = path.read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def test_compile_writes_auth_conf_and_private_credentials(tmp_path: Path) -> None:
    out = tmp_path / "out"
    compiled = compile_policy(EXAMPLE, out)
    assert set(compiled.new_secrets) == set(compiled.identities)
    conf = (out / AUTH_CONF).read_text()
    assert conf.count("nkey:") == 6
    assert 'user: "admin", password: "$2a$11$' in conf
    for name in ("catalog", "pricing", "orders", "gateway", "controller", "dashboard"):
        seed = out / f"{name}.nk"
        assert seed.read_text().startswith("SU")
        assert stat.S_IMODE(seed.stat().st_mode) == 0o600
        env = _env(out / f"{name}.env")
        assert env == {"NATS_NKEY": str(seed), "NATS_INBOX_PREFIX": f"_INBOX_{name}"}
        assert stat.S_IMODE((out / f"{name}.env").stat().st_mode) == 0o600
    password = (out / "admin.password").read_text().strip()
    assert password not in conf
    assert _env(out / "admin.env") == {
        "NATS_USER": "admin",
        "NATS_PASSWORD": password,
        "NATS_INBOX_PREFIX": "_INBOX_admin",
    }
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_recompile_keeps_secrets_and_rotate_replaces_them(tmp_path: Path) -> None:
    compile_policy(EXAMPLE, tmp_path)
    seeds = {p.name: p.read_text() for p in tmp_path.glob("*.nk")}
    password = (tmp_path / "admin.password").read_text()
    again = compile_policy(EXAMPLE, tmp_path)
    assert again.new_secrets == ()
    assert {p.name: p.read_text() for p in tmp_path.glob("*.nk")} == seeds
    assert (tmp_path / "admin.password").read_text() == password
    (tmp_path / "orders.nk").chmod(0o644)
    rotated = compile_policy(EXAMPLE, tmp_path, rotate=True)
    assert set(rotated.new_secrets) == set(rotated.identities)
    assert all(seeds[p.name] != p.read_text() for p in tmp_path.glob("*.nk"))
    assert (tmp_path / "admin.password").read_text() != password
    assert stat.S_IMODE((tmp_path / "orders.nk").stat().st_mode) == 0o600


def test_an_unusable_existing_seed_is_an_error_not_a_new_identity(tmp_path: Path) -> None:
    (tmp_path / "orders.nk").write_text("SUnot-a-seed\n")
    with pytest.raises(CompileError, match=r"orders\.nk: not a user nkey seed"):
        compile_policy(EXAMPLE, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["orders.nk"]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "natsmesh", "auth", "compile", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )


def test_cli_compiles_the_example(tmp_path: Path) -> None:
    done = _cli(str(EXAMPLE), "--out", str(tmp_path / "secrets"))
    assert done.returncode == 0, done.stderr
    assert "auth.conf" in done.stdout
    assert (tmp_path / "secrets" / "gateway.env").exists()


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("[[identity]]\nname = 'a'\nkind = 'robot'\n", "identity[0].kind"),
        ("[[identity\n", "policy.toml: not TOML"),
        ("[[identity]]\nname = 'a'\nkind = 'gateway'\ncalls = ['*.x']\n", "calls[0]"),
    ],
)
def test_cli_bad_policy_exits_2_and_writes_nothing(
    tmp_path: Path, policy: str, expected: str
) -> None:
    source = tmp_path / "policy.toml"
    source.write_text(policy)
    out = tmp_path / "out"
    done = _cli(str(source), "--out", str(out))
    assert done.returncode == 2
    assert expected in done.stderr
    assert not out.exists()


def test_cli_unusable_out_dir_exits_2(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    for out in (blocker, blocker / "sub"):
        done = _cli(str(EXAMPLE), "--out", str(out))
        assert done.returncode == 2, done.stderr
        assert str(blocker) in done.stderr
    assert blocker.read_text() == ""


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only directories")
def test_cli_read_only_out_dir_exits_2(tmp_path: Path) -> None:
    tmp_path.chmod(0o500)
    try:
        done = _cli(str(EXAMPLE), "--out", str(tmp_path))
    finally:
        tmp_path.chmod(0o700)
    assert done.returncode == 2
    assert "not writable" in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_cli_missing_policy_exits_2(tmp_path: Path) -> None:
    done = _cli(str(tmp_path / "nope.toml"), "--out", str(tmp_path / "out"))
    assert done.returncode == 2
    assert "no such file" in done.stderr
