"""How a natsmesh process proves who it is to NATS: credentials and TLS.

The NATS ecosystem's usual environment variables (those the ``nats`` CLI reads)
are honoured everywhere, and the CLI's flags of the same names win over them:

==========================  ==================  =========================================
environment                 flag                meaning
==========================  ==================  =========================================
``NATS_USER``               ``--user``          user name (with a password)
``NATS_PASSWORD``           ``--password``      password
``NATS_TOKEN``              ``--token``         a bearer token
``NATS_NKEY``               ``--nkey``          file holding an nkey seed (``SU...``)
``NATS_CREDS``              ``--creds``         a ``.creds`` file (JWT + seed)
``NATS_CA``                 ``--tlsca``         CA certificate(s) to verify the server
``NATS_CERT``               ``--tlscert``       client certificate (mutual TLS)
``NATS_KEY``                ``--tlskey``        the client certificate's private key
``NATS_INBOX_PREFIX``       ``--inbox-prefix``  where replies come back (per identity)
==========================  ==================  =========================================

Everything is checked before connecting, so a missing file or a half-given pair
is one clear :class:`CredentialsError`, not a connection that retries forever.
"""

from __future__ import annotations

import dataclasses
import os
import re
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from natsmesh.wire._errors import MeshError

__all__ = ["ENV", "Credentials", "CredentialsError"]

#: Field → environment variable, in the order the table above gives them.
ENV: Final = {
    "user": "NATS_USER",
    "password": "NATS_PASSWORD",
    "token": "NATS_TOKEN",
    "nkey": "NATS_NKEY",
    "creds": "NATS_CREDS",
    "tls_ca": "NATS_CA",
    "tls_cert": "NATS_CERT",
    "tls_key": "NATS_KEY",
    "inbox_prefix": "NATS_INBOX_PREFIX",
}
_MAX_VALUE: Final = 4096
# An inbox prefix is subject tokens without wildcards: the server grants it by prefix.
_PREFIX: Final = re.compile(r"[A-Za-z0-9_\-$]+(\.[A-Za-z0-9_\-$]+)*")


class CredentialsError(MeshError, ValueError):
    """Credentials that cannot work: missing files, half pairs, conflicting kinds."""


@dataclasses.dataclass(frozen=True, slots=True)
class Credentials:
    user: str | None = None
    password: str | None = dataclasses.field(default=None, repr=False)
    token: str | None = dataclasses.field(default=None, repr=False)
    nkey: str | None = None
    creds: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    inbox_prefix: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Credentials:
        env = os.environ if environ is None else environ
        return cls(**{field: env.get(var) or None for field, var in ENV.items()})

    def overridden(self, **values: str | None) -> Credentials:
        """These credentials with every given (non-None) value replacing its own."""
        return dataclasses.replace(self, **{k: v for k, v in values.items() if v is not None})

    def without(self, *fields: str) -> Credentials:
        return dataclasses.replace(self, **dict.fromkeys(fields))

    def exported(self) -> dict[str, str]:
        """The environment that carries these credentials to a child process."""
        return {
            var: value for field, var in ENV.items() if (value := getattr(self, field)) is not None
        }

    def check(self) -> None:
        """Raise :class:`CredentialsError` unless these credentials can be used."""
        for field in ENV:
            value = getattr(self, field)
            if value is not None and (len(value) > _MAX_VALUE or any(c in value for c in "\r\n\0")):
                raise CredentialsError(f"{ENV[field]}: not a usable value")
        if (self.user is None) != (self.password is None):
            raise CredentialsError("a user needs a password and a password a user")
        kinds = [k for k in ("user", "token", "nkey", "creds") if getattr(self, k) is not None]
        if len(kinds) > 1:
            raise CredentialsError(f"give one way to authenticate, not {' and '.join(kinds)}")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise CredentialsError("a client certificate needs its key and a key its certificate")
        for field in ("nkey", "creds", "tls_ca", "tls_cert", "tls_key"):
            path = getattr(self, field)
            if path is not None and not os.access(path, os.R_OK):
                raise CredentialsError(f"{ENV[field]}: cannot read {path}")
        if self.nkey is not None and not Path(self.nkey).read_text().strip().startswith("SU"):
            raise CredentialsError(f"{ENV['nkey']}: {self.nkey} holds no user nkey seed")
        if self.inbox_prefix is not None and not _PREFIX.fullmatch(self.inbox_prefix):
            raise CredentialsError(f"{ENV['inbox_prefix']}: not a subject prefix")

    def tls_context(self, *, required: bool) -> ssl.SSLContext | None:
        """A client TLS context when certificates are given or the URL asks for TLS."""
        if not required and self.tls_ca is None and self.tls_cert is None:
            return None
        context = ssl.create_default_context(cafile=self.tls_ca)
        if self.tls_cert is not None:
            try:
                context.load_cert_chain(self.tls_cert, self.tls_key)
            except (ssl.SSLError, OSError) as exc:
                raise CredentialsError(f"client certificate: {exc}") from None
        return context

    def connect_options(self, servers: list[str]) -> dict[str, Any]:
        """nats-py ``connect()`` keyword arguments for these credentials."""
        self.check()
        options: dict[str, Any] = {}
        if self.user is not None:
            options.update(user=self.user, password=self.password)
        if self.token is not None:
            options["token"] = self.token
        if self.nkey is not None:
            options["nkeys_seed"] = self.nkey
        if self.creds is not None:
            options["user_credentials"] = self.creds
        if self.inbox_prefix is not None:
            options["inbox_prefix"] = self.inbox_prefix
        tls = self.tls_context(required=any(s.startswith("tls://") for s in servers))
        if tls is not None:
            options["tls"] = tls
        return options
