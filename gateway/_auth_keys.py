"""Key material of the gateway's JWT verifiers: read, checked, never shown (pure but for files).

Every refusal is a ValueError whose message says what is wrong with the key and
never shows it; :mod:`gateway._auth_config` puts it at the config path it came from.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from jwt import InvalidKeyError
from jwt.algorithms import HMACAlgorithm

MAX_KEY_FILE: Final = 64 * 1024
MIN_SECRET: Final = 32  # bytes: RFC 7518 wants an HS256 key at least as long as the hash
MIN_RSA_BITS: Final = 2048


@dataclass(frozen=True, slots=True)
class Verifier:
    """A JWT verifier with its key loaded (the key is never part of a repr)."""

    name: str
    algorithm: str
    key: Any = field(repr=False)  # bytes (HS256) or an RSAPublicKey (RS256)
    issuer: str
    audience: str
    leeway: float
    claim: str


def read_file(path: Path, limit: int) -> bytes:
    """A whole file of at most ``limit`` bytes; ValueError saying why not."""
    try:
        with path.open("rb") as file:
            data = file.read(limit + 1)
    except FileNotFoundError:
        raise ValueError(f"no such file: {path}") from None
    except IsADirectoryError:
        raise ValueError(f"a directory, not a file: {path}") from None
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or type(exc).__name__}") from None
    if len(data) > limit:
        raise ValueError(f"larger than {limit} bytes: {path}")
    return data


def rsa_public_key(path: Path) -> RSAPublicKey:
    """An RSA public key of at least :data:`MIN_RSA_BITS` from a PEM file."""
    pem = read_file(path, MAX_KEY_FILE)
    try:
        key = load_pem_public_key(pem)
    except (ValueError, TypeError):
        raise ValueError("not a PEM public key (a private key does not belong here)") from None
    if not isinstance(key, RSAPublicKey):
        raise ValueError("not an RSA public key")
    if key.key_size < MIN_RSA_BITS:
        raise ValueError(f"an RSA key of fewer than {MIN_RSA_BITS} bits")
    return key


def hs256_secret(*, env: str | None, path: Path | None, environ: Mapping[str, str]) -> bytes:
    """An HS256 secret from the environment variable ``env``, else the file at ``path``."""
    if env is not None:
        value = environ.get(env)
        if value is None:
            raise ValueError(f"environment variable {env} is not set")
        secret = value.encode()
    else:
        assert path is not None
        # A trailing newline is what `echo` and editors leave, not part of the secret.
        secret = read_file(path, MAX_KEY_FILE).rstrip(b"\r\n")
    if len(secret) < MIN_SECRET:
        raise ValueError(f"the secret is shorter than {MIN_SECRET} bytes")
    try:
        HMACAlgorithm(HMACAlgorithm.SHA256).prepare_key(secret)
    except InvalidKeyError:
        # PyJWT refuses these at every verification: say so now, not on every request.
        raise ValueError("the secret looks like a PEM or SSH key, not random bytes") from None
    return secret
