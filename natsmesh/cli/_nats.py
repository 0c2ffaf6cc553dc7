"""The options every command that talks to NATS takes: where, and as whom.

Flags win over the environment (``NATS_URL``, ``NATS_CREDS``, ... as the ``nats``
CLI reads them). The winners are checked once, then exported to this process's
environment: every connection the command makes (the controller's, each
service's, the gateway's and its worker processes') uses the same identity.
"""

from __future__ import annotations

import argparse
import os
from typing import Final

from natsmesh.cli._exit import ListenError, UsageError
from natsmesh.ops._binary import NatsPortInUse
from natsmesh.ops._embedded import EmbeddedNats
from natsmesh.transport._credentials import ENV, Credentials, CredentialsError
from natsmesh.transport._transport import DEFAULT_URL, server_urls

__all__ = [
    "DEFAULT_NATS_PORT",
    "add_connect_timeout",
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


DEFAULT_NATS_PORT: Final = 4222
DEFAULT_CONNECT_TIMEOUT: Final = 3.0


def add_nats_options(p: argparse.ArgumentParser, *, embedded: bool = False) -> None:
    """``--nats`` and the credentials; ``embedded``: the command starts a server without one."""
    otherwise = "an embedded nats-server" if embedded else "nats://127.0.0.1:4222"
    p.add_argument(
        "--nats",
        metavar="URL",
        help=f"NATS server URL, several comma-separated (default: $NATS_URL, else {otherwise})",
    )
    group = p.add_argument_group("NATS credentials (flags win over the environment)")
    for field, flag in _FLAGS.items():
        group.add_argument(
            flag,
            dest=f"nats_{field}",
            metavar=_METAVARS.get(field, field.split("_")[-1].upper()),
            help=f"default: ${ENV[field]}",
        )


def add_connect_timeout(p: argparse.ArgumentParser) -> None:
    """``--connect-timeout``, for commands that do one thing and exit."""
    p.add_argument(
        "--connect-timeout",
        type=seconds,
        default=DEFAULT_CONNECT_TIMEOUT,
        metavar="SECONDS",
        help=f"give up when no NATS server answers within this time"
        f" ({DEFAULT_CONNECT_TIMEOUT:g}; exit code 7)",
    )


def apply_nats_options(args: argparse.Namespace) -> None:
    """Check the server URLs and credentials the command will use and export them.

    Raises UsageError or CredentialsError when they cannot be used.
    """
    if not hasattr(args, "nats"):
        return
    if server_of(args):
        try:
            server_urls(server_of(args))
        except ValueError as exc:
            raise UsageError(str(exc)) from None
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
    """The given URL, or an embedded server for the duration of the block.

    ``port`` None is the usual port (4222), or any free one when it is taken. An
    explicit port that is taken is a :class:`ListenError` naming it; 0 is any free
    port. On another port than the usual one, :attr:`note` says so for the ready
    line, with the ``NATS_URL`` other shells need.
    """

    def __init__(self, url: str | None, port: int | None, *, flag: str = "--nats-port") -> None:
        self._url = url
        self._port = port
        self._flag = flag
        self._server: EmbeddedNats | None = None
        self.note = ""

    async def __aenter__(self) -> str:
        if self._url:
            return self._url
        port = DEFAULT_NATS_PORT if self._port is None else self._port
        try:
            self._server = await EmbeddedNats(port=port or None).__aenter__()
        except NatsPortInUse:
            if self._port is not None:
                raise ListenError(
                    f"port {port} on 127.0.0.1 is taken (another nats-server?): stop what"
                    f" listens there, or choose another with {self._flag} (0: any free port)"
                ) from None
            self._server = await EmbeddedNats().__aenter__()
            self.note = f" (port {port} was taken; in other shells: export NATS_URL={{url}})"
        url = self._server.url
        if not self.note and url != DEFAULT_URL:
            # Commands in other shells default to the usual port: they need to be told.
            self.note = " (in other shells: export NATS_URL={url})"
        self.note = self.note.format(url=url)
        return url

    @property
    def version(self) -> str:
        """The embedded server's version ("" when a URL was given)."""
        return "" if self._server is None else self._server.version

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            await self._server.__aexit__(None, None, None)


# -- argument types: argparse shows an ArgumentTypeError's words, then exits 2 ----------


def port_number(text: str) -> int:
    return _integer(text, 0, 65535)


def positive(text: str) -> int:
    return _integer(text, 1, 1024)


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value <= 3600:  # NaN fails too
        raise argparse.ArgumentTypeError(f"{text!r}: expected seconds, more than 0 and up to 3600")
    return value


def _integer(text: str, low: int, high: int) -> int:
    try:
        value = int(text)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise argparse.ArgumentTypeError(f"{text!r}: expected an integer within {low}..{high}")
    return value
