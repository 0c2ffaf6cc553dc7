"""Gateway authentication: API keys and JWT bearer tokens (HS256, RS256) per route.

The verification matrix on :class:`gateway.GatewayAuth` alone (pure), then end to end:
the gateway's ASGI app in-process and over uvicorn in front of a real nats-server,
a controller and real services (401, 403, WWW-Authenticate, the verified caller
and the gateway's own budget reaching the service, spoofed mesh headers ignored,
failures counted by reason), and ``natsmesh gateway --auth`` / ``natsmesh up --auth``
as a user runs them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from gateway_env import FORWARD, Shop, asgi, running_shop, serving
from procs import Proc

from gateway import GatewayAuth, create_app
from gateway._auth import Denied, Identity
from natsmesh.testing import free_port

OPS_KEY = "ops-7f3c9a1e5b2d4c6e8f0a1b2c3d4e5f60"
INTERN_KEY = "intern-0a1b2c3d4e5f60718293a4b5c6d7e8f9"
SECRET = "partners-secret-5b2d4c6e8f0a1b2c3d4e5f60718293a4"
CORP_ISS = "https://id.corp.test/"
AUDIENCE = "shop"
ENV = {"PARTNERS_SECRET": SECRET}


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


AUTH_FILE = f"""
realm = "shop"

[api_keys.ops]
sha256 = "{digest(OPS_KEY)}"

[api_keys.intern]
sha256 = "{digest(INTERN_KEY)}"

[jwt.corp]
algorithm = "RS256"
public_key_file = "corp.pem"
issuer = "{CORP_ISS}"
audience = "{AUDIENCE}"

[jwt.partners]
algorithm = "HS256"
secret_env = "PARTNERS_SECRET"
issuer = "partners"
audience = "{AUDIENCE}"
leeway = 5

[pages]
metrics = {{ allow = ["key:ops"] }}
docs = {{ public = true }}

[[rules]]
methods = ["GET"]
paths = ["/products", "/products/{{id}}"]
public = true

[[rules]]
paths = ["/headers"]
allow = ["key:ops", "corp:*", "partners:*"]

[[rules]]
targets = ["orders.*"]
allow = ["corp:*", "key:ops"]

[[rules]]
targets = ["echo.*"]
allow = ["*"]
"""


# -- keys and tokens ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corp_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def auth_dir(tmp_path: Path, corp_key: rsa.RSAPrivateKey) -> Path:
    (tmp_path / "corp.pem").write_bytes(public_pem(corp_key))
    (tmp_path / "auth.toml").write_text(AUTH_FILE)
    return tmp_path


@pytest.fixture
def auth(auth_dir: Path) -> GatewayAuth:
    return GatewayAuth.load(auth_dir / "auth.toml", environ=ENV)


def public_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def claims(iss: str, sub: str = "alice", **extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"iss": iss, "aud": AUDIENCE, "sub": sub, "iat": now, "exp": now + 300, **extra}


def partners_token(**extra: Any) -> str:
    return jwt.encode(claims("partners", **extra), SECRET, algorithm="HS256")


def corp_token(key: rsa.RSAPrivateKey, **extra: Any) -> str:
    return jwt.encode(claims(CORP_ISS, **extra), key, algorithm="RS256")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def by_hand(header: dict[str, Any], body: dict[str, Any], key: bytes | None) -> str:
    """A token PyJWT would refuse to make: alg "none", or HS256 keyed with a public key."""
    signing = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(body).encode())}"
    if key is None:
        return signing + "."
    return f"{signing}.{_b64(hmac.new(key, signing.encode(), hashlib.sha256).digest())}"


def bearer(token: str) -> list[tuple[bytes, bytes]]:
    return [(b"authorization", f"Bearer {token}".encode())]


def api_key(key: str) -> list[tuple[bytes, bytes]]:
    return [(b"x-api-key", key.encode())]


# -- verification (pure) ------------------------------------------------------------------------


def test_valid_credentials_name_a_qualified_identity(
    auth: GatewayAuth, corp_key: rsa.RSAPrivateKey
) -> None:
    policy = auth.policy("GET", "/headers", "hdrs.show")
    assert auth.check(policy, api_key(OPS_KEY)) == Identity("key", "ops")
    assert auth.check(policy, bearer(partners_token())) == Identity("partners", "alice")
    assert auth.check(policy, bearer(corp_token(corp_key, sub="bob"))) == Identity("corp", "bob")
    assert Identity("corp", "bob").caller == "corp:bob"
    longest = auth.check(policy, bearer(partners_token(sub="auth0|" + "x" * 122)))
    assert longest is not None
    assert len(longest.caller) == len("partners:") + 128
    # An audience list that holds ours; the scheme's name in lower case or not.
    token = partners_token(aud=["other", AUDIENCE])
    assert auth.check(policy, [(b"authorization", f"bearer  {token}".encode())]) is not None


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda k: partners_token(exp=int(time.time()) - 3600), "expired"),
        (lambda k: partners_token(nbf=int(time.time()) + 3600), "not_yet_valid"),
        (lambda k: partners_token(aud="elsewhere"), "invalid_audience"),
        (lambda k: jwt.encode(claims("evil"), SECRET, algorithm="HS256"), "invalid_issuer"),
        (lambda k: jwt.encode(claims(CORP_ISS), SECRET, algorithm="HS256"), "bad_algorithm"),
        (lambda k: jwt.encode(claims("partners"), "x" * 40, algorithm="HS256"), "bad_signature"),
        (
            lambda k: corp_token(rsa.generate_private_key(public_exponent=65537, key_size=2048)),
            "bad_signature",
        ),
        (lambda k: by_hand({"alg": "none"}, claims("partners"), None), "bad_algorithm"),
        (lambda k: by_hand({"alg": "none"}, claims(CORP_ISS), None), "bad_algorithm"),
        # Algorithm confusion: HS256 "signed" with the RS256 verifier's public key.
        (
            lambda k: by_hand({"alg": "HS256", "typ": "JWT"}, claims(CORP_ISS), public_pem(k)),
            "bad_algorithm",
        ),
        (
            lambda k: jwt.encode({"iss": "partners", "aud": AUDIENCE, "sub": "a"}, SECRET),
            "missing_claim",
        ),
        (lambda k: partners_token(sub=""), "invalid_identity"),
        (lambda k: partners_token(sub="a\r\nMesh-Caller: admin"), "invalid_identity"),
        (lambda k: partners_token(sub="x" * 129), "invalid_identity"),
        (lambda k: partners_token(sub=" padded"), "invalid_identity"),
        (lambda k: partners_token(sub="caf\u00e9"), "invalid_identity"),
        (lambda k: jwt.encode({**claims("partners"), "sub": 7}, SECRET), "invalid_token"),
        (lambda k: "e30.e30.", "invalid_issuer"),  # no "iss": no verifier to ask
        (lambda k: "e30.bm90IGpzb24.", "malformed"),  # the claims are not JSON
        (lambda k: "a.b.c", "malformed"),
    ],
)
def test_bad_tokens_are_401_with_a_reason(
    auth: GatewayAuth, corp_key: rsa.RSAPrivateKey, make: Any, reason: str
) -> None:
    policy = auth.policy("GET", "/headers", "hdrs.show")
    with pytest.raises(Denied) as caught:
        auth.check(policy, bearer(make(corp_key)))
    assert (caught.value.status, caught.value.reason) == (401, reason)
    assert b'error="invalid_token"' in b"".join(caught.value.challenges)


@pytest.mark.parametrize(
    ("credentials", "reason"),
    [
        ([], "missing"),
        (api_key("wrong"), "unknown_key"),
        (api_key(OPS_KEY + " "), "malformed"),
        (api_key("x" * 600), "malformed"),
        ([(b"authorization", b"Basic b3BzOm9wcw==")], "malformed"),
        ([(b"authorization", b"Bearer")], "malformed"),
        ([(b"authorization", b"Bearer not a token")], "malformed"),
        ([(b"authorization", b"Bearer " + b"a" * 9000 + b".b.c")], "malformed"),
        (api_key(OPS_KEY) + api_key(OPS_KEY), "ambiguous"),
        (api_key(OPS_KEY) + bearer("a.b.c"), "ambiguous"),
    ],
)
def test_missing_and_malformed_credentials_are_401(
    auth: GatewayAuth, credentials: list[tuple[bytes, bytes]], reason: str
) -> None:
    with pytest.raises(Denied) as caught:
        auth.check(auth.policy("GET", "/headers", "hdrs.show"), credentials)
    assert (caught.value.status, caught.value.reason) == (401, reason)
    bearer_challenge, key_challenge = caught.value.challenges
    assert bearer_challenge.startswith(b'Bearer realm="shop"')
    assert key_challenge == b'ApiKey realm="shop", header="x-api-key"'


def test_a_valid_identity_the_rule_does_not_name_is_403(auth: GatewayAuth) -> None:
    with pytest.raises(Denied) as caught:
        auth.check(auth.policy("GET", "/orders/1", "orders.get"), api_key(INTERN_KEY))
    assert (caught.value.status, caught.value.reason) == (403, "forbidden")
    # No rule at all: nobody, whoever they are.
    with pytest.raises(Denied) as caught:
        auth.check(auth.policy("POST", "/pricing/quote", "pricing.quote"), api_key(OPS_KEY))
    assert caught.value.status == 403


def test_public_routes_look_at_no_credentials(auth: GatewayAuth) -> None:
    policy = auth.policy("GET", "/products/1", "catalog.get")
    assert auth.check(policy, []) is None
    assert auth.check(policy, api_key("wrong")) is None


def test_several_issuers_pick_their_verifier_by_iss(
    auth: GatewayAuth, corp_key: rsa.RSAPrivateKey
) -> None:
    policy = auth.policy("GET", "/headers", "hdrs.show")
    for iss in (["partners"], 7, None):
        token = by_hand({"alg": "HS256"}, {**claims("partners"), "iss": iss}, SECRET.encode())
        with pytest.raises(Denied) as caught:
            auth.check(policy, bearer(token))
        assert caught.value.reason == "invalid_issuer"


def test_a_configured_identity_claim(tmp_path: Path) -> None:
    text = AUTH_FILE.replace("leeway = 5", 'leeway = 5\nidentity_claim = "email"')
    (tmp_path / "corp.pem").write_bytes(
        public_pem(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    )
    auth = GatewayAuth.parse(text, base=tmp_path, environ=ENV)
    policy = auth.policy("GET", "/headers", "hdrs.show")
    who = auth.check(policy, bearer(partners_token(email="ada@partner.test")))
    assert who == Identity("partners", "ada@partner.test")
    with pytest.raises(Denied) as caught:
        auth.check(policy, bearer(partners_token()))
    assert caught.value.reason == "missing_claim"


# -- end to end: the ASGI app, a real nats-server, a controller, real services ---------------------


@pytest.fixture
async def shop(nats_url: str) -> AsyncIterator[Shop]:
    async with running_shop(nats_url) as running:
        yield running


@pytest.fixture
async def client(shop: Shop, auth: GatewayAuth) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(shop.mesh, forward_headers=FORWARD, auth=auth)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as c:
        yield c


def caller_seen(r: httpx.Response) -> str:
    """The Mesh-Caller header that hdrs.show (GET /headers) received."""
    seen = {k.lower(): v for k, v in r.json()["headers"].items()}
    return str(seen["mesh-caller"])


def refused(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body: dict[str, Any] = r.json()["error"]
    assert body["code"] == status
    assert body["kind"] == {401: "unauthorized", 403: "forbidden"}[status]
    return body


@pytest.mark.anyio
async def test_the_verified_identity_is_the_services_caller(
    client: httpx.AsyncClient, corp_key: rsa.RSAPrivateKey
) -> None:
    for headers, caller in [
        ({"x-api-key": OPS_KEY}, "key:ops"),
        ({"authorization": f"Bearer {partners_token(sub='acme')}"}, "partners:acme"),
        ({"authorization": f"Bearer {corp_token(corp_key, sub='bob')}"}, "corp:bob"),
    ]:
        r = await client.get("/headers", headers=headers)
        assert r.status_code == 200, r.text
        assert caller_seen(r) == caller
        seen = {k.lower() for k in r.json()["headers"]}
        # The credential itself never reaches a service.
        assert "authorization" not in seen
        assert "x-api-key" not in seen
    r = await client.post("/echo/whoami", headers={"x-api-key": INTERN_KEY})
    assert r.json()["caller"] == "key:intern"


@pytest.mark.anyio
async def test_spoofed_caller_and_budget_headers_are_ignored(shop: Shop, auth: GatewayAuth) -> None:
    app = create_app(shop.mesh, forward_headers=FORWARD, auth=auth)
    spoofed = [
        (b"x-api-key", OPS_KEY.encode()),
        (b"mesh-caller", b"admin"),
        (b"Mesh-Caller", b"orders"),
        (b"mesh-budget-ms", b"99999999"),
        (b"mesh-attempt", b"7"),
        (b"mesh-retrying", b"1"),
        (b"nats-service-error-code", b"200"),
        # A header value with CR LF in it, as a raw ASGI server might pass it along.
        (
            b"traceparent",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\nMesh-Caller: admin",
        ),
        (b"tracestate", b"mesh-caller=admin"),
        (b"x-request-timeout-ms", b"800"),
    ]
    r = await asgi(app, "GET", "/headers", headers=spoofed)
    assert r.status == 200, r.body
    shown = r.json()
    seen = {k.lower(): v for k, v in shown["headers"].items()}
    assert seen["mesh-caller"] == "key:ops"
    assert 0 < int(seen["mesh-budget-ms"]) <= 800  # the gateway's own, bounded by the client's
    assert 0 < shown["left"] <= 0.8
    assert "mesh-attempt" not in seen
    assert "mesh-retrying" not in seen
    assert "tracestate" not in seen
    assert not [k for k in seen if k.startswith("nats-")]
    assert "admin" not in json.dumps(shown)
    # Spoofing without a credential does not get in at all.
    r = await asgi(app, "GET", "/headers", headers=spoofed[1:])
    assert r.status == 401


@pytest.mark.anyio
async def test_401_403_and_their_headers(
    client: httpx.AsyncClient, corp_key: rsa.RSAPrivateKey
) -> None:
    r = await client.get("/headers")
    assert refused(r, 401)["message"] == "credentials required"
    assert r.headers.get_list("www-authenticate") == [
        'Bearer realm="shop"',
        'ApiKey realm="shop", header="x-api-key"',
    ]
    r = await client.get("/headers", headers={"x-api-key": "wrong"})
    refused(r, 401)
    expired = partners_token(exp=int(time.time()) - 3600)
    r = await client.get("/headers", headers={"authorization": f"Bearer {expired}"})
    assert refused(r, 401)["message"] == "the token has expired"
    assert r.headers.get_list("www-authenticate")[0] == 'Bearer realm="shop", error="invalid_token"'
    confused = by_hand({"alg": "HS256"}, claims(CORP_ISS), public_pem(corp_key))
    for token in (confused, by_hand({"alg": "none"}, claims(CORP_ISS), None)):
        refused(await client.get("/headers", headers={"authorization": f"Bearer {token}"}), 401)
    r = await client.get("/headers", headers={"authorization": "Bearer " + "a" * 9000})
    refused(r, 401)
    # A valid identity that the route's rule does not name.
    r = await client.get("/orders/1", headers={"x-api-key": INTERN_KEY})
    assert refused(r, 403)["message"] == "this identity may not use this route"
    assert "www-authenticate" not in r.headers
    # The default route reaches orders.* too, under the same rule.
    refused(await client.post("/orders/get", headers={"x-api-key": INTERN_KEY}), 403)
    # No rule names pricing: nobody, whoever asks (default deny).
    refused(await client.post("/pricing/quote", headers={"x-api-key": OPS_KEY}), 403)
    # Before any lookup of the service: a stranger learns nothing of what exists.
    refused(await client.post("/nosuch/thing"), 401)


@pytest.mark.anyio
async def test_no_credential_is_echoed_or_logged(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    token = partners_token(aud="elsewhere")
    answers = [
        await client.get("/headers", headers={"x-api-key": "my-secret-key-123"}),
        await client.get("/headers", headers={"authorization": f"Bearer {token}"}),
        await client.get("/orders/1", headers={"x-api-key": INTERN_KEY}),
    ]
    for r in answers:
        shown = r.text + json.dumps(dict(r.headers))
        for secret in ("my-secret-key-123", token, INTERN_KEY, token.split(".")[1]):
            assert secret not in shown
    logged = "\n".join(f"{rec.getMessage()} {rec.args}" for rec in caplog.records)
    assert "request refused: 401 unknown_key" in logged
    for secret in ("my-secret-key-123", token, INTERN_KEY):
        assert secret not in logged


@pytest.mark.anyio
async def test_public_routes_and_pages(client: httpx.AsyncClient) -> None:
    r = await client.get("/products/1")
    assert r.status_code == 200
    assert (await client.get("/products/1", headers={"x-api-key": "wrong"})).status_code == 200
    assert (await client.get("/healthz")).status_code == 200
    assert (await client.get("/readyz")).status_code == 200
    assert (await client.get("/openapi.json")).status_code == 200
    assert (await client.get("/docs")).status_code == 200
    refused(await client.get("/metrics"), 401)
    refused(await client.get("/metrics", headers={"x-api-key": INTERN_KEY}), 403)
    assert (await client.get("/metrics", headers={"x-api-key": OPS_KEY})).status_code == 200


@pytest.mark.anyio
async def test_failures_are_counted_by_reason(
    client: httpx.AsyncClient, corp_key: rsa.RSAPrivateKey
) -> None:
    expired = partners_token(exp=int(time.time()) - 3600)
    for headers in (
        {},
        {},
        {"x-api-key": "wrong"},
        {"authorization": f"Bearer {expired}"},
        {"x-api-key": INTERN_KEY, "authorization": f"Bearer {expired}"},
    ):
        await client.get("/headers", headers=headers)
    await client.get("/orders/1", headers={"x-api-key": INTERN_KEY})
    text = (await client.get("/metrics", headers={"x-api-key": OPS_KEY})).text
    for reason, count in [
        ("missing", 2),
        ("unknown_key", 1),
        ("expired", 1),
        ("ambiguous", 1),
        ("forbidden", 1),
    ]:
        line = f'natsmesh_gateway_auth_failures_total{{reason="{reason}"}} {float(count)}'
        assert line in text, text


@pytest.mark.anyio
async def test_mesh_call_names_the_caller_it_is_given(shop: Shop) -> None:
    assert (await shop.mesh.call("echo.whoami"))["caller"] == "gateway-test"
    assert (await shop.mesh.call("echo.whoami", caller="key:ops"))["caller"] == "key:ops"
    for bad in ("", "a\r\nMesh-Budget-Ms: 1", "x" * 257, " padded", "caf\u00e9", "a\0b"):
        with pytest.raises(ValueError, match="caller must be"):
            await shop.mesh.call("echo.whoami", caller=bad)
    with pytest.raises(ValueError, match="set by the mesh"):
        await shop.mesh.call("echo.whoami", headers={"mesh-caller": "admin"})


@pytest.mark.anyio
async def test_credential_headers_are_never_forwarded(shop: Shop, auth: GatewayAuth) -> None:
    for name in ("Authorization", "x-api-key", "X-API-KEY"):
        with pytest.raises(ValueError, match="credentials"):
            create_app(shop.mesh, forward_headers=(name,), auth=auth)


@pytest.mark.anyio
async def test_over_a_real_socket(
    shop: Shop, auth: GatewayAuth, corp_key: rsa.RSAPrivateKey
) -> None:
    app = create_app(shop.mesh, auth=auth)
    limits = app.limits
    async with serving(app, limits=limits) as url, httpx.AsyncClient(base_url=url) as http:
        token = corp_token(corp_key, sub="carol")
        r = await http.get(
            "/headers",
            headers={"authorization": f"Bearer {token}", "mesh-caller": "admin"},
        )
        assert r.status_code == 200, r.text
        assert caller_seen(r) == "corp:carol"
        r = await http.get("/headers", headers={"authorization": "Bearer x" * 1000})
        assert r.status_code in (401, 431)
        assert (await http.get("/products/2")).status_code == 200


# -- as a user runs it -------------------------------------------------------------------------


async def _exit_of(*args: str) -> tuple[int, str]:
    with Proc(*args, nats_url="nats://127.0.0.1:1") as proc:
        code = await anyio.to_thread.run_sync(lambda: proc.popen.wait(60))
        await anyio.to_thread.run_sync(proc.close)
        return code, "".join(proc.stderr_lines)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda t: t.replace("[api_keys.ops]", "[api_keys.ops"), "<file>: not TOML"),
        (lambda t: t + "\nsurprise = true\n", "rules[3].surprise: unknown field"),
        (
            lambda t: t.replace("PARTNERS_SECRET", "NOT_SET_ANYWHERE"),
            "jwt.partners.secret_env: environment variable NOT_SET_ANYWHERE is not set",
        ),
        (
            lambda t: t.replace("corp.pem", "missing.pem"),
            "jwt.corp.public_key_file: no such file:",
        ),
        (lambda t: t.replace("corp.pem", "."), "jwt.corp.public_key_file: a directory"),
    ],
)
async def test_a_bad_auth_file_is_a_clear_error_and_a_nonzero_exit(
    auth_dir: Path, monkeypatch: pytest.MonkeyPatch, change: Any, expected: str
) -> None:
    monkeypatch.setenv("PARTNERS_SECRET", SECRET)
    bad = auth_dir / "bad.toml"
    bad.write_text(change(AUTH_FILE))
    for command in ("gateway", "up"):
        code, stderr = await _exit_of(command, "--port", str(free_port()), "--auth", str(bad))
        assert code == 1, stderr
        assert stderr.startswith(f"natsmesh: {bad}: {expected}"), stderr
        assert "Traceback" not in stderr
        assert SECRET not in stderr


@pytest.mark.anyio
@pytest.mark.parametrize("workers", [1, 2])
async def test_natsmesh_gateway_auth(
    nats_url: str, auth_dir: Path, monkeypatch: pytest.MonkeyPatch, workers: int
) -> None:
    monkeypatch.setenv("PARTNERS_SECRET", SECRET)
    port = free_port()
    async with running_shop(nats_url) as shop:
        args = ["gateway", "--port", str(port), "--workers", str(workers)]
        with Proc(*args, "--auth", str(auth_dir / "auth.toml"), nats_url=shop.url) as proc:
            await anyio.to_thread.run_sync(lambda: proc.wait_ready(60))
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
                for _ in range(4):  # several requests: each worker has its own copy
                    assert (await http.get("/headers")).status_code == 401
                    r = await http.get(
                        "/headers", headers={"authorization": f"Bearer {partners_token()}"}
                    )
                    assert caller_seen(r) == "partners:alice"
                assert (await http.get("/products/2")).status_code == 200
            assert await anyio.to_thread.run_sync(proc.terminate) == 0
