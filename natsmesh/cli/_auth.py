"""The ``natsmesh auth`` commands: compile a mesh access policy into NATS authorization.

``natsmesh auth compile POLICY --out DIR [--rotate]`` writes ``DIR/auth.conf`` and
each identity's credentials (see :mod:`natsmesh.security._auth_files`). A policy or an output
directory that cannot be used is reported as ``path: reason`` lines, exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from natsmesh.security._auth_files import AUTH_CONF, CompileError, compile_policy
from natsmesh.security._policy import PolicyError

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add ``auth`` and its subcommands to the ``natsmesh`` parser's subparsers."""
    what = "mesh access policy: compile it to NATS authorization and credentials"
    auth = subparsers.add_parser("auth", help=what, description=what)
    commands = auth.add_subparsers(required=True, metavar="ACTION")
    p = commands.add_parser(
        "compile",
        help="write DIR/auth.conf and each identity's credentials",
        description=(
            "Compile POLICY (TOML) to DIR/auth.conf (include it from nats.conf) and, per "
            "identity, DIR/<identity>.nk or .password and DIR/<identity>.env. Existing "
            "seeds and passwords are kept unless --rotate."
        ),
    )
    p.add_argument("policy", metavar="POLICY", type=_policy_file, help="the policy (TOML)")
    p.add_argument("--out", required=True, metavar="DIR", help="directory to write to")
    p.add_argument(
        "--rotate", action="store_true", help="make new seeds and passwords for every identity"
    )
    p.set_defaults(command=_compile)


def _policy_file(text: str) -> str:
    path = Path(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"{text}: no such file")
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: a directory, not a file")
    return text


async def _compile(args: argparse.Namespace) -> int:
    try:
        compiled = compile_policy(args.policy, args.out, rotate=args.rotate)
    except PolicyError as exc:
        for problem in exc.problems:
            # "<file>": the file as a whole (unreadable, not TOML), no path within it.
            where = "" if problem.path == "<file>" else f"{problem.path}: "
            print(f"natsmesh: {args.policy}: {where}{problem.reason}", file=sys.stderr)
        return 2
    except CompileError as exc:
        print(f"natsmesh: {exc}", file=sys.stderr)
        return 2
    out = compiled.files[0].parent
    print(f"wrote {out / AUTH_CONF}; credentials of {', '.join(compiled.identities)} in {out}")
    if compiled.new_secrets:
        print(f"new secrets: {', '.join(compiled.new_secrets)}")
    return 0
