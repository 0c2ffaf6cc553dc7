"""Credentials and TLS: every way in works, every wrong way is refused.

One real nats-server per test module requires TLS with client certificates
(trustme makes a throwaway CA) and knows one user/password and one nkey user.
"""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.lowlevel
import nkeys
import pytest
import trustme
from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError
from services import Echo, Item

from natsmesh import Mesh, ServiceRunner
from natsmesh.testing import EmbeddedNats
from natsmesh.transport._credentials import Credentials, CredentialsError
from natsmesh.transport._transport import connect

pytestmark = pytest.mark.anyio


@dataclass(frozen=True)
class Secured:
    url: str
    tls: Credentials  # the client certificate only
    nkey_seed: Path
    dir: Path


def _seed() -> bytes:
    return nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    tmp = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    server_cert = ca.issue_cert("127.0.0.1", "localhost")
    client_cert = ca.issue_cert("client@natsmesh.test")
    ca.cert_pem.write_to_path(str(tmp / "ca.pem"))
    server_cert.private_key_and_cert_chain_pem.write_to_path(str(tmp / "server.pem"))
    client_cert.cert_chain_pems[0].write_to_path(str(tmp / "client.pem"))
    client_cert.private_key_pem.write_to_path(str(tmp / "client.key"))
    seed = _seed()
    (tmp / "user.nk").write_bytes(seed)
    public = nkeys.from_seed(bytearray(seed)).public_key.decode()
    (tmp / "auth.conf").write_text(
        f"""
tls {{
  cert_file: "{tmp / "server.pem"}"
  key_file: "{tmp / "server.pem"}"
  ca_file: "{tmp / "ca.pem"}"
  verify: true
  timeout: 2
}}
authorization {{
  users = [
    {{ user: alice, password: "s3cret-pass" }}
    {{ nkey: {public} }}
  ]
}}
"""
    )
    server = EmbeddedNats(config_file=tmp / "auth.conf")
    server.start()
    try:
        tls = Credentials(
            tls_ca=str(tmp / "ca.pem"),
            tls_cert=str(tmp / "client.pem"),
            tls_key=str(tmp / "client.key"),
        )
        yield Secured(server.url.replace("nats://", "tls://"), tls, tmp / "user.nk", tmp)
    finally:
        server.stop()


def _with(base: Credentials, **values: str) -> Credentials:
    return base.overridden(**values)


async def _refused(url: str, credentials: Credentials) -> str:
    options = credentials.connect_options([url])
    nc = NATS()
    try:
        await nc.connect(servers=[url], max_reconnect_attempts=0, allow_reconnect=False, **options)
    except (NatsError, OSError, ssl.SSLError) as refused:
        return str(refused)
    finally:
        if nc.is_connected:
            await nc.close()
        elif nc._transport is not None:
            # nats-py leaves a refused connection's streams open (and its close() would
            # wait forever for a connection it never had): close them here, the plain
            # one too when the TLS upgrade was what failed.
            for writer in {nc._transport._io_writer, nc._transport._bare_io_writer}:
                if writer is not None:
                    writer.close()
            await anyio.lowlevel.checkpoint()  # let the closing transports finish
    pytest.fail(f"{credentials!r} connected")


async def test_a_user_and_password_over_mutual_tls_calls_a_service(secured: Secured) -> None:
    alice = _with(secured.tls, user="alice", password="s3cret-pass")
    service_nc = await connect(secured.url, name="echo", credentials=alice)
    client_nc = await connect(secured.url, name="client", credentials=alice)
    try:
        async with ServiceRunner(Echo, nats=service_nc), Mesh(client_nc) as mesh:
            item = Item(id=1, name="hi")
            assert await mesh.call("echo.echo", item, response=Item) == item
    finally:
        await service_nc.close()
        await client_nc.close()


async def test_an_nkey_seed_file_authenticates(secured: Secured) -> None:
    nc = await connect(
        secured.url, name="nkey", credentials=_with(secured.tls, nkey=str(secured.nkey_seed))
    )
    try:
        assert nc.is_connected
    finally:
        await nc.close()


@pytest.mark.parametrize(
    "case",
    ["no credentials", "wrong password", "unknown nkey"],
)
async def test_wrong_or_missing_credentials_are_refused(secured: Secured, case: str) -> None:
    credentials = secured.tls
    if case == "wrong password":
        credentials = _with(credentials, user="alice", password="guess")
    elif case == "unknown nkey":
        stranger = secured.dir / "stranger.nk"
        stranger.write_bytes(_seed())
        credentials = _with(credentials, nkey=str(stranger))
    assert "authorization" in (await _refused(secured.url, credentials)).lower()


async def test_no_client_certificate_is_refused(secured: Secured) -> None:
    no_cert = Credentials(tls_ca=secured.tls.tls_ca, user="alice", password="s3cret-pass")
    await _refused(secured.url, no_cert)


async def test_a_certificate_from_a_foreign_ca_is_refused(secured: Secured) -> None:
    foreign = trustme.CA().issue_cert("client@natsmesh.test")
    foreign.cert_chain_pems[0].write_to_path(str(secured.dir / "foreign.pem"))
    foreign.private_key_pem.write_to_path(str(secured.dir / "foreign.key"))
    credentials = _with(
        secured.tls,
        tls_cert=str(secured.dir / "foreign.pem"),
        tls_key=str(secured.dir / "foreign.key"),
        user="alice",
        password="s3cret-pass",
    )
    await _refused(secured.url, credentials)


async def test_a_server_certificate_from_a_foreign_ca_is_refused(secured: Secured) -> None:
    other = trustme.CA()
    other.cert_pem.write_to_path(str(secured.dir / "other-ca.pem"))
    credentials = _with(
        secured.tls, tls_ca=str(secured.dir / "other-ca.pem"), user="alice", password="s3cret-pass"
    )
    assert "certificate" in (await _refused(secured.url, credentials)).lower()


async def test_plaintext_to_the_tls_port_is_refused(secured: Secured) -> None:
    plain = secured.url.replace("tls://", "nats://")
    await _refused(plain, Credentials(user="alice", password="s3cret-pass"))


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("NATS_")}
    return subprocess.run(
        [sys.executable, "-m", "natsmesh", *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


async def _acli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    # In a worker thread: the service under test shares this event loop.
    return await anyio.to_thread.run_sync(_cli, args, env)


async def test_the_cli_takes_credentials_from_flags_and_from_the_environment(
    secured: Secured,
) -> None:
    alice = _with(secured.tls, user="alice", password="s3cret-pass")
    service_nc = await connect(secured.url, name="echo", credentials=alice)
    try:
        async with ServiceRunner(Echo, nats=service_nc):
            tls = ["--tlsca", str(secured.tls.tls_ca), "--tlscert", str(secured.tls.tls_cert)]
            tls += ["--tlskey", str(secured.tls.tls_key)]
            flags = ["--nats", secured.url, "--nkey", str(secured.nkey_seed), *tls]
            by_flags = await _acli(["call", "echo.echo", '{"id": 1, "name": "a"}', *flags], {})
            assert by_flags.returncode == 0, by_flags.stderr
            assert '"a"' in by_flags.stdout
            env = {"NATS_URL": secured.url, **alice.exported()}
            by_env = await _acli(["call", "echo.echo", '{"id": 2, "name": "b"}'], env)
            assert by_env.returncode == 0, by_env.stderr
            # A flag naming how to authenticate replaces the environment's way.
            both = await _acli(
                ["call", "echo.echo", '{"id": 3, "name": "c"}', "--nkey", str(secured.nkey_seed)],
                env,
            )
            assert both.returncode == 0, both.stderr
    finally:
        await service_nc.close()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--user", "alice"], "a user needs a password"),
        (["--nkey", "/nonexistent/seed.nk"], "cannot read"),
        (["--tlscert", "/etc/hostname"], "needs its key"),
        (["--inbox-prefix", "_INBOX.>"], "not a subject prefix"),
        (["--token", "t", "--creds", "/etc/hostname"], "one way to authenticate"),
    ],
)
def test_the_cli_refuses_unusable_credentials_before_connecting(
    flags: list[str], message: str
) -> None:
    result = _cli(["ls", "--nats", "nats://127.0.0.1:1", *flags], {})
    assert result.returncode == 2
    assert message in result.stderr
    assert result.stderr.count("\n") == 1


def test_an_nkey_file_without_a_seed_is_refused(tmp_path: Path) -> None:
    not_a_seed = tmp_path / "seed.nk"
    not_a_seed.write_text("-----BEGIN PRIVATE KEY-----\n")
    with pytest.raises(CredentialsError, match="no user nkey seed"):
        Credentials(nkey=str(not_a_seed)).check()


def test_credentials_come_from_the_environment_and_go_back_to_it() -> None:
    env = {"NATS_USER": "u", "NATS_PASSWORD": "pw-7f3a", "NATS_INBOX_PREFIX": "_INBOX_u", "X": "y"}
    credentials = Credentials.from_env(env)
    assert credentials == Credentials(user="u", password="pw-7f3a", inbox_prefix="_INBOX_u")
    assert credentials.exported() == {k: v for k, v in env.items() if k != "X"}
    assert "pw-7f3a" not in repr(credentials)  # secrets stay out of logs and tracebacks


@pytest.mark.parametrize("bad", ["x\r\nPUB evil 1", "x\0", "x" * 5000])
def test_hostile_credential_values_are_refused(bad: str) -> None:
    with pytest.raises(CredentialsError, match="not a usable value"):
        Credentials(token=bad).check()
