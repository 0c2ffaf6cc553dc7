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

__all__ = ["add_nats_options", "apply_nats_options", "server_of"]

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
