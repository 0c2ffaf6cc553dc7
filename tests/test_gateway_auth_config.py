"""The gateway's auth file (pure): every way it can be wrong is a precise ``path: reason``,
no reason repeats a value (which could be a secret), and keys are loaded or refused at once."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway import AuthConfigError, GatewayAuth

SECRET = "0123456789abcdef0123456789abcdef-partners"
DIGEST = hashlib.sha256(b"ops-key").hexdigest()
GOOD = f"""
[api_keys.ops]
sha256 = "{DIGEST}"

[jwt.partners]
algorithm = "HS256"
secret_env = "PARTNERS_SECRET"
issuer = "partners"
audience = "shop"

[[rules]]
targets = ["orders.*"]
allow = ["partners:*", "key:ops"]
"""
ENV = {"PARTNERS_SECRET": SECRET}


def problems(text: str, *, base: Path = Path("."), env: dict[str, str] = ENV) -> list[str]:
    with pytest.raises(AuthConfigError) as caught:
        GatewayAuth.parse(text, base=base, environ=env)
    lines = str(caught.value).splitlines()
    assert lines == [f"{path}: {why}" for path, why in caught.value.problems]
    return lines


def public_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def rs256(path: str) -> str:
    return f"""
[jwt.corp]
algorithm = "RS256"
public_key_file = "{path}"
issuer = "corp"
audience = "shop"

[[rules]]
paths = ["/**"]
allow = ["corp:*"]
"""


def test_a_good_file_loads() -> None:
    auth = GatewayAuth.parse(GOOD, environ=ENV)
    assert auth.config.api_keys["ops"].sha256 == DIGEST
    assert auth.header_names == {b"authorization", b"x-api-key"}
    assert SECRET not in repr(auth.__dict__)  # keys stay out of every repr


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[api_keys.ops\n", "<file>: not TOML"),
        (GOOD + "\nsurprise = 1\n", "rules[0].surprise: unknown field"),
        ("[api_keys.ops]\nkey = 'the-plain-key'\n", "api_keys.ops.key: unknown field"),
        ("[api_keys.ops]\nsha256 = 'ABC'\n", "api_keys.ops.sha256: expected 64 lower-case hex"),
        ('[api_keys."a b"]\nsha256 = "' + DIGEST + '"\n', 'api_keys["a b"]: use 1 to 64'),
        (
            "[jwt.p]\nalgorithm='HS256'\nissuer='i'\naudience='a'\nsecret='inline-secret'\n",
            "jwt.p.secret: unknown field",
        ),
        (
            "[jwt.p]\nalgorithm='HS256'\nissuer='i'\naudience='a'\n",
            "jwt.p: HS256 needs one of secret_env or secret_file",
        ),
        (
            "[jwt.p]\nalgorithm='HS256'\nissuer='i'\naudience='a'\nsecret_env='A'\nsecret_file='f'\n",
            "jwt.p: HS256 needs one of secret_env or secret_file",
        ),
        (
            "[jwt.p]\nalgorithm='RS256'\nissuer='i'\naudience='a'\nsecret_env='A'\n",
            "jwt.p.public_key_file: RS256 needs a public key file",
        ),
        (
            "[jwt.p]\nalgorithm='none'\nissuer='i'\naudience='a'\n",
            "jwt.p.algorithm: Input should be 'HS256' or 'RS256'",
        ),
        (
            "[jwt.p]\nalgorithm='HS384'\nissuer='i'\naudience='a'\nsecret_env='A'\n",
            "jwt.p.algorithm: Input should be 'HS256' or 'RS256'",
        ),
        (
            "[jwt.p]\nalgorithm='HS256'\nissuer='i'\nsecret_env='A'\n",
            "jwt.p.audience: missing required field",
        ),
        (
            "[jwt.p]\nalgorithm='HS256'\nissuer='i'\naudience='a'\nsecret_env='A'\nleeway=9999\n",
            "jwt.p.leeway: Input should be less than or equal to 300",
        ),
        (
            "[jwt.key]\nalgorithm='HS256'\nissuer='i'\naudience='a'\nsecret_env='PARTNERS_SECRET'\n",
            "jwt.key: 'key' names the API keys",
        ),
        (GOOD.replace("partners:*", "nope:*"), "rules[0].allow[0]: no jwt verifier 'nope'"),
        (GOOD.replace("key:ops", "key:other"), "rules[0].allow[1]: no API key 'other'"),
        (GOOD.replace('"key:ops"', '"ops"'), "rules[0].allow[1]: expected '*', 'SCHEME:*'"),
        (GOOD + "public = true\n", "rules[0].allow: a public route takes no allow list"),
        (GOOD + "[[rules]]\npublic = true\n", "rules[1]: give paths or targets"),
        (GOOD + "[[rules]]\npaths = ['/a/**/b']\n", "rules[1].paths[0]: segment 2:"),
        (GOOD + "[[rules]]\npaths = ['a']\n", "rules[1].paths[0]: a path pattern starts with"),
        (GOOD + "[[rules]]\npaths = ['/a.b']\n", "rules[1].paths[0]: segment 1:"),
        (GOOD + "[[rules]]\ntargets = ['orders']\n", "rules[1].targets[0]: expected 'service"),
        (GOOD + "[[rules]]\ntargets = ['o.*']\nmethods = ['TRACE']\n", "rules[1].methods[0]"),
        ("api_key_header = 'authorization'\n" + GOOD, "api_key_header: a header the gateway"),
        ("api_key_header = 'Mesh-Caller'\n" + GOOD, "api_key_header: a header the gateway"),
        ("realm = 'a\"b'\n" + GOOD, "realm: use HTTP token characters"),
        (
            GOOD + f"[api_keys.copy]\nsha256 = '{DIGEST}'\n",
            "api_keys.copy: the same key as api_keys.ops",
        ),
        ("[pages]\nmetrics = { allow = ['*'] }\n", "pages.metrics.allow[0]: no api_keys or jwt"),
        ("[pages]\nhealth = { public = true }\n", "pages.health: unknown field"),
    ],
)
def test_problems_are_precise(text: str, expected: str) -> None:
    found = problems(text)
    assert any(line.startswith(expected) for line in found), found
    for secret in ("the-plain-key", "inline-secret", "ABC", SECRET):
        assert secret not in "\n".join(found)


def test_every_problem_is_reported_at_once() -> None:
    text = GOOD.replace(DIGEST, "0" * 63) + "[[rules]]\npublic = true\n"
    found = problems(text)
    assert [line.partition(":")[0] for line in found] == ["api_keys.ops.sha256", "rules[1]"]


def test_issuers_are_unique() -> None:
    text = GOOD + (
        "[jwt.again]\nalgorithm='HS256'\nissuer='partners'\naudience='x'\n"
        "secret_env='PARTNERS_SECRET'\n"
    )
    assert problems(text) == ["jwt.again: the same issuer as jwt.partners"]


def test_a_missing_secret_env_var_is_named() -> None:
    assert problems(GOOD, env={}) == [
        "jwt.partners.secret_env: environment variable PARTNERS_SECRET is not set"
    ]


def test_weak_secrets_are_refused() -> None:
    pem = public_pem(rsa.generate_private_key(public_exponent=65537, key_size=2048)).decode()
    for secret, why in [
        ("short", "the secret is shorter than 32 bytes"),
        (pem, "the secret looks like a PEM or SSH key, not random bytes"),
    ]:
        assert problems(GOOD, env={"PARTNERS_SECRET": secret}) == [
            f"jwt.partners.secret_env: {why}"
        ]


def test_a_secret_file_is_relative_to_the_auth_file_and_loses_its_newline(tmp_path: Path) -> None:
    (tmp_path / "partners.secret").write_text(SECRET + "\n")
    text = GOOD.replace('secret_env = "PARTNERS_SECRET"', 'secret_file = "partners.secret"')
    auth_file = tmp_path / "auth.toml"
    auth_file.write_text(text)
    auth = GatewayAuth.load(auth_file, environ={})
    assert auth._verifiers["partners"].key == SECRET.encode()


def test_key_files_that_cannot_be_used(tmp_path: Path) -> None:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505  (the weak key refused)
    good = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (tmp_path / "small.pem").write_bytes(public_pem(small))
    (tmp_path / "ec.pem").write_bytes(public_pem(ec.generate_private_key(ec.SECP256R1())))
    (tmp_path / "garbage.pem").write_bytes(b"not a key at all")
    (tmp_path / "private.pem").write_bytes(
        good.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    (tmp_path / "adir").mkdir()
    where = "jwt.corp.public_key_file"
    for name, why in [
        ("missing.pem", f"no such file: {tmp_path / 'missing.pem'}"),
        ("adir", f"a directory, not a file: {tmp_path / 'adir'}"),
        ("garbage.pem", "not a PEM public key (a private key does not belong here)"),
        ("private.pem", "not a PEM public key (a private key does not belong here)"),
        ("ec.pem", "not an RSA public key"),
        ("small.pem", "an RSA key of fewer than 2048 bits"),
    ]:
        assert problems(rs256(name), base=tmp_path) == [f"{where}: {why}"], name
    (tmp_path / "good.pem").write_bytes(public_pem(good))
    assert GatewayAuth.parse(rs256("good.pem"), base=tmp_path, environ={})


def test_the_file_itself(tmp_path: Path) -> None:
    for path, why in [
        (tmp_path / "none.toml", "no such file"),
        (tmp_path, "a directory, not a file"),
    ]:
        with pytest.raises(AuthConfigError, match=why):
            GatewayAuth.load(path, environ={})
    big = tmp_path / "big.toml"
    big.write_text("# " + "x" * 300_000)
    with pytest.raises(AuthConfigError, match="larger than"):
        GatewayAuth.load(big, environ={})
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(AuthConfigError, match="not UTF-8"):
        GatewayAuth.load(binary, environ={})


# -- which rule ------------------------------------------------------------------------------

RULES = f"""
[api_keys.ops]
sha256 = "{DIGEST}"

[[rules]]
methods = ["GET"]
paths = ["/products", "/products/{{id}}"]
public = true

[[rules]]
paths = ["/admin/**"]
targets = ["admin.*"]
allow = ["key:ops"]

[[rules]]
paths = ["/files/*/raw"]
allow = ["*"]

[[rules]]
targets = ["orders.get", "catalog.*"]
allow = ["key:*"]
"""


@pytest.mark.parametrize(
    ("method", "path", "target", "rule"),
    [
        ("GET", "/products", "catalog.list", 0),
        ("GET", "/products/7", "catalog.get", 0),
        ("POST", "/products/7", "catalog.get", 3),  # methods: GET only; then by target
        ("GET", "/products/7/x", "catalog.get", 3),
        ("GET", "/admin", "admin.home", 1),  # "**" is zero or more segments
        ("GET", "/admin/a/b/c", "admin.deep", 1),
        ("GET", "/admin/x", "other.x", None),  # paths and targets must both match
        ("GET", "/files/a/raw", "files.raw", 2),
        ("GET", "/files/a/b/raw", "files.raw", None),
        ("POST", "/orders/get", "orders.get", 3),  # the default route reaches the same rule
        ("POST", "/orders/place", "orders.place", None),  # no rule: nobody
        ("GET", "/", "home.index", None),
    ],
)
def test_the_first_matching_rule_decides(
    method: str, path: str, target: str, rule: int | None
) -> None:
    auth = GatewayAuth.parse(RULES, environ={})
    policy = auth.policy(method, path, target)
    if rule is None:
        assert not policy.public
        assert policy.allow == ()
    else:
        assert policy is auth._rules[rule].policy


def test_the_documented_examples_load(tmp_path: Path) -> None:
    from gateway import _auth_config

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme.split("### Gateway authentication", 1)[1]
    examples = {
        "README": section.split("```toml\n", 1)[1].split("```", 1)[0],
        "docstring": _literal_block(_auth_config.__doc__ or ""),
    }
    pem = public_pem(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    (tmp_path / "corp.pem").write_bytes(pem)
    for where, text in examples.items():
        auth = GatewayAuth.parse(text, base=tmp_path, environ={"PARTNER_JWT_SECRET": SECRET})
        assert set(auth.config.jwt) == {"corp", "partners"}, where
        assert auth.policy("GET", "/products/3", "catalog.get").public, where


def _literal_block(doc: str) -> str:
    """The indented block after a docstring's ``::``."""
    lines = []
    for line in doc.split("::\n", 1)[1].splitlines():
        if line and not line.startswith("    "):
            break
        lines.append(line.removeprefix("    "))
    return "\n".join(lines)
