"""How the ``natsmesh`` command line fails: one line on stderr and a documented exit code.

The codes live in :data:`EXIT_CODES`, shown by ``natsmesh --help``; the CLI's
docstring and the README list the same (a test compares the three).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Final

from natsmesh.transport._credentials import CredentialsError
from natsmesh.wire._errors import (
    DeadlineExceeded,
    InvalidReply,
    MeshError,
    NatsRefused,
    NatsUnreachable,
    NoResponders,
    RemoteError,
)

__all__ = ["EXIT_CODES", "ListenError", "UsageError", "epilog", "fail"]

EXIT_CODES: Final[Mapping[int, str]] = {
    0: "success",
    1: "any other failure",
    2: "usage: a bad argument, option, payload or credentials",
    3: "no responders",
    4: "deadline exceeded",
    5: "the service answered with an error",
    6: "the reply is invalid",
    7: "cannot connect to NATS (no server within --connect-timeout, or credentials refused)",
    8: "cannot listen where told to (a port given explicitly is taken)",
    130: "interrupted (Ctrl-C)",
    141: "standard output closed early (natsmesh ... | head)",
}

_CALL_ERRORS: Final[Mapping[type[BaseException], int]] = {
    NoResponders: 3,
    DeadlineExceeded: 4,
    RemoteError: 5,
    InvalidReply: 6,
    NatsUnreachable: 7,
}

_START_NATS: Final = (
    "start one with 'natsmesh up' (or 'natsmesh nats'),"
    " or point NATS_URL or --nats at a running server"
)
_CHECK_CREDENTIALS: Final = (
    "check --user/--password, --token, --nkey, --creds (or NATS_USER, NATS_CREDS, ...)"
)
_MAX_DETAILS: Final = 10


class UsageError(ValueError):
    """A bad argument, option or payload that argparse could not check itself (exit 2)."""


class ListenError(Exception):
    """The command cannot listen where it was told to, e.g. an explicit port is taken (exit 8)."""


def epilog() -> str:
    """The exit codes as ``--help`` shows them."""
    lines = [f"  {code:>3}  {meaning}" for code, meaning in EXIT_CODES.items()]
    return "exit codes:\n" + "\n".join(lines)


def fail(exc: BaseException) -> int:
    """Report ``exc`` as one line on stderr and return its exit code.

    Raises ``exc`` again when it is none of the failures a user can meet (a bug:
    its traceback is wanted). A group of one exception (from a task group) is
    reported as that exception.
    """
    leaf = _leaf(exc)
    if _broken_pipe(leaf):
        # Whoever read our output stopped (`| head`). Python would flush stdout again at
        # exit and report the same error: point it at /dev/null instead.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    if isinstance(leaf, UsageError | CredentialsError):
        code = 2
    elif isinstance(leaf, ListenError):
        code = 8
    elif isinstance(leaf, MeshError | OSError | ValueError):
        code = next((c for t, c in _CALL_ERRORS.items() if isinstance(leaf, t)), 1)
    else:
        raise exc
    print(f"natsmesh: {_message(leaf)}", file=sys.stderr)
    return code


def _message(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, NatsRefused):
        return f"{text}: {_CHECK_CREDENTIALS}"
    if isinstance(exc, NatsUnreachable):
        return f"{text}: {_START_NATS}"
    if isinstance(exc, RemoteError) and exc.details:
        # The field paths and reasons, as Python's InvalidRequest.details and the gateway show.
        shown = [_detail(d) for d in exc.details[:_MAX_DETAILS]]
        more = len(exc.details) - len(shown)
        return f"{text}: {'; '.join(shown)}" + (f"; and {more} more" if more > 0 else "")
    return text


def _detail(detail: Mapping[str, object]) -> str:
    loc = detail.get("loc")
    path = ".".join(str(p) for p in loc) if isinstance(loc, list | tuple) else ""
    reason = " ".join(str(detail.get("msg", "invalid")).split())[:200]
    return f"{path or '(payload)'}: {reason}"


def _leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _broken_pipe(exc: BaseException) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return any(_broken_pipe(e) for e in exc.exceptions)
    return isinstance(exc, BrokenPipeError)
