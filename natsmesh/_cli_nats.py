"""The options every command that talks to NATS takes: where, and as whom.

Flags win over the environment (``NATS_URL``, ``NATS_CREDS``, ... as the ``nats``
CLI reads them). The winners are checked once, then exported to this process's
environment: every connection the command makes (the controller's, each
service's, the gateway's and its worker processes') uses the same identity.
"""

from __future__ import annotations

import argparse
import os

from natsmesh._credentials import ENV, Credentials, CredentialsError
from natsmesh._embedded import EmbeddedNats
from natsmesh._errors import MeshError

__all__ = [
    "add_nats_options",
    "apply_nats_options",
    "maybe_embedded",
    "port_number",
    "positive",
    "seconds",
    "server_of",
]

_FLAGS = {
    "user": "--user",
    "password": "--password",
    "token": "--token",
    "nkey": "--nkey",
    "creds": "--creds",
    "tls_ca": "--tlsca",
    "tls_cert": "--tlscert",
    "tls_key": "--tlskey",
    "inbox_prefix": "--inbox-prefix",
}
_AUTH = ("user", "password", "token", "nkey", "creds")
_METAVARS = {"nkey": "SEEDFILE", "creds": "FILE", "tls_ca": "PEM", "tls_cert": "PEM"}


def add_nats_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--nats", metavar="URL", help="NATS server URL (default: $NATS_URL, else embedded)"
    )
    group = p.add_argument_group("NATS credentials (flags win over the environment)")
    for field, flag in _FLAGS.items():
        group.add_argument(
            flag,
            dest=f"nats_{field}",
            metavar=_METAVARS.get(field, field.split("_")[-1].upper()),
            help=f"default: ${ENV[field]}",
        )


def apply_nats_options(args: argparse.Namespace) -> None:
    """Check the credentials the command will use and export them; raise if unusable."""
    if not hasattr(args, "nats"):
        return
    flags = {field: getattr(args, f"nats_{field}") for field in _FLAGS}
    environment = Credentials.from_env()
    if any(flags[field] is not None for field in _AUTH):
        # A flag naming how to authenticate replaces the environment's way, whichever it is.
        environment = environment.without(*_AUTH)
    credentials = environment.overridden(**flags)
    try:
        credentials.check()
    except CredentialsError as exc:
        raise CredentialsError(f"credentials: {exc}") from None
    exported = credentials.exported()
    for var in ENV.values():
        os.environ.pop(var, None)
    os.environ.update(exported)


def server_of(args: argparse.Namespace) -> str | None:
    """The server the command should use: ``--nats``, else ``NATS_URL``, else none given."""
    return args.nats or os.environ.get("NATS_URL")


class maybe_embedded:
    """The given URL, or an embedded server for the duration of the block."""

    def __init__(self, url: str | None, port: int) -> None:
        self._url = url
        self._port = port
        self._server: EmbeddedNats | None = None

    async def __aenter__(self) -> str:
        if self._url:
            return self._url
        self._server = EmbeddedNats(port=self._port or None)
        try:
            await self._server.__aenter__()
        except MeshError:
            # The usual port is taken (another mesh?): any free port will do.
            self._server = EmbeddedNats()
            await self._server.__aenter__()
        return self._server.url

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            await self._server.__aexit__(None, None, None)


# -- argument types (argparse turns ValueError into a usage error, exit 2) ----------------


def port_number(text: str) -> int:
    port = int(text)
    if not 0 <= port <= 65535:
        raise ValueError(text)
    return port


def positive(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 1024:
        raise ValueError(text)
    return value


def seconds(text: str) -> float:
    value = float(text)
    if not 0 < value <= 3600:
        raise ValueError(text)
    return value
