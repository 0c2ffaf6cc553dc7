"""Compile an access policy into files: nats-server's authorization and each identity's secrets.

``compile_policy(policy_file, out)`` writes, in ``out``:

==========================  ======  ==================================================
file                        mode    holds
==========================  ======  ==================================================
``auth.conf``               0644    ``authorization { users = [...] }``: public nkeys,
                                    bcrypt hashes and permissions, for ``include``
``<identity>.nk``           0600    the identity's nkey seed (``auth = "nkey"``)
``<identity>.password``     0600    its password (``auth = "password"``)
``<identity>.env``          0600    its environment: ``NATS_NKEY`` or ``NATS_USER`` and
                                    ``NATS_PASSWORD``, and ``NATS_INBOX_PREFIX``
==========================  ======  ==================================================

Seeds and passwords already in ``out`` are kept (a re-compile must not lock out
running services) unless ``rotate``. Everything is prepared, checked and written
to temporary files first, then renamed into place: bad input or an unwritable
directory leaves ``out`` as it was.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import bcrypt
import nkeys  # type: ignore[import-untyped]  # ships no type information

from natsmesh.security._policy import Identity, load_policy
from natsmesh.security._render import (
    NkeyUser,
    PasswordUser,
    User,
    env_text,
    render_authorization,
)
from natsmesh.wire._errors import MeshError

__all__ = ["AUTH_CONF", "CompileError", "Compiled", "compile_policy"]

AUTH_CONF: Final = "auth.conf"
_BCRYPT_COST: Final = 11  # what `nats server passwd` uses
_MAX_SECRET_FILE: Final = 4096


class CompileError(MeshError):
    """The policy compiled, but its files cannot be written (or existing ones are unusable)."""


@dataclass(frozen=True, slots=True)
class Compiled:
    """What :func:`compile_policy` wrote: every file, and which secrets are new."""

    files: tuple[Path, ...]
    identities: tuple[str, ...]
    new_secrets: tuple[str, ...]  # identities whose seed or password was (re)generated


def compile_policy(policy_file: str | Path, out: str | Path, *, rotate: bool = False) -> Compiled:
    """Compile ``policy_file`` into ``out`` (created if missing).

    Raises PolicyError (the policy is invalid) or CompileError (the files are not).
    """
    policy = load_policy(policy_file)
    out = Path(out).absolute()
    _prepare_dir(out)
    files: dict[str, tuple[bytes, int]] = {}
    users: dict[str, User] = {}
    fresh: list[str] = []
    for identity in policy.identity:
        user, new = _credentials(out, identity, rotate=rotate, files=files)
        users[identity.name] = user
        if new:
            fresh.append(identity.name)
    files[AUTH_CONF] = (render_authorization(policy, users).encode(), 0o644)
    _write_all(out, files)
    names = tuple(i.name for i in policy.identity)
    return Compiled(tuple(out / name for name in files), names, tuple(fresh))


def _prepare_dir(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise CompileError(f"{out}: exists and is not a directory") from None
    except OSError as exc:
        raise CompileError(f"{out}: cannot create: {exc.strerror or exc}") from None
    if not out.is_dir():
        raise CompileError(f"{out}: not a directory")
    if not os.access(out, os.W_OK | os.X_OK):
        raise CompileError(f"{out}: not writable")


def _credentials(
    out: Path, identity: Identity, *, rotate: bool, files: dict[str, tuple[bytes, int]]
) -> tuple[User, bool]:
    """The identity's user entry; adds its secret and env files to ``files``."""
    name = identity.name
    if identity.auth == "nkey":
        seed_file = out / f"{name}.nk"
        seed = None if rotate else _existing(seed_file)
        new = seed is None
        if seed is None:
            seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER).decode()
        public = _public_key(seed_file, seed)
        files[seed_file.name] = ((seed + "\n").encode(), 0o600)
        env = env_text(identity, nkey_path=str(seed_file))
        user: User = NkeyUser(public)
    else:
        password_file = out / f"{name}.password"
        password = None if rotate else _existing(password_file)
        new = password is None
        if password is None:
            password = secrets.token_urlsafe(32)
        elif not password.isprintable() or " " in password:
            raise CompileError(f"{password_file}: not a password; remove it or pass --rotate")
        files[password_file.name] = ((password + "\n").encode(), 0o600)
        env = env_text(identity, password=password)
        # 2a: the spelling nats-server's own `nats server passwd` writes.
        salt = bcrypt.gensalt(rounds=_BCRYPT_COST, prefix=b"2a")
        user = PasswordUser(bcrypt.hashpw(password.encode(), salt).decode())
    files[f"{name}.env"] = (env.encode(), 0o600)
    return user, new


def _existing(path: Path) -> str | None:
    """The secret a previous compile left in ``path``, or None when there is none."""
    try:
        with path.open("rb") as file:
            data = file.read(_MAX_SECRET_FILE + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CompileError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        text = data.decode("ascii").strip()
    except UnicodeDecodeError:
        text = ""
    if not text or len(data) > _MAX_SECRET_FILE:
        raise CompileError(f"{path}: unusable; remove it or pass --rotate")
    return text


def _public_key(path: Path, seed: str) -> str:
    try:
        public = str(nkeys.from_seed(seed.encode()).public_key.decode())
    except Exception:  # nkeys raises several unrelated types for a bad seed
        public = ""
    if not public.startswith("U"):
        raise CompileError(f"{path}: not a user nkey seed; remove it or pass --rotate")
    return public


def _write_all(out: Path, files: dict[str, tuple[bytes, int]]) -> None:
    """Write every file to a temporary name first, then rename them all into place."""
    staged: list[tuple[Path, Path]] = []
    try:
        for name, (data, mode) in files.items():
            fd, tmp_name = tempfile.mkstemp(dir=out, prefix=f".{name}.", suffix=".tmp")
            staged.append((Path(tmp_name), out / name))
            with os.fdopen(fd, "wb") as file:
                os.fchmod(file.fileno(), mode)
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
    except OSError as exc:
        for staged_file, _ in staged:
            with contextlib.suppress(OSError):
                staged_file.unlink()
        raise CompileError(f"{out}: cannot write: {exc.strerror or exc}") from None
    # The mode was set on the temporary file (fchmod ignores the umask), so a secret
    # file someone loosened by hand is tightened again by every compile.
    for staged_file, final in staged:
        os.replace(staged_file, final)
