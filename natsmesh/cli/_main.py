"""The ``natsmesh`` command line.

``--nats`` is honoured everywhere, else ``NATS_URL``. Commands that list things
take ``--json``. Failures print one line on stderr and exit non-zero. The exit
codes (``_cli_exit.EXIT_CODES``, shown by ``natsmesh --help``): 0 success, 1 any
other failure, 2 usage, 3 no responders, 4 deadline exceeded, 5 the service
answered with an error, 6 the reply is invalid, 7 cannot connect to NATS, 8 cannot
listen where told to, 130 interrupted, 141 standard output closed early.

Commands that do one thing and exit (``call``, ``ls``, ``info``, ``stats``,
``routes``, ``status``, ``bench``) give up after ``--connect-timeout`` when no
NATS server answers; long-running ones (``serve``, ``gateway``, ``controller``,
``up --nats``) keep trying, and log each change of the connection's state once.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Awaitable, Callable, Sequence

from natsmesh.cli._auth import register as register_auth
from natsmesh.cli._bench import add_bench
from natsmesh.cli._control import add_commands
from natsmesh.cli._discover import add_discovery
from natsmesh.cli._exit import epilog, fail
from natsmesh.cli._nats import (
    add_connect_timeout,
    add_nats_options,
    apply_nats_options,
    maybe_embedded,
    port_number,
)
from natsmesh.cli._observe import add_observe
from natsmesh.cli._serve import add_serve
from natsmesh.cli._up import add_gateway, add_up
from natsmesh.ops._loop import add_loop_options
from natsmesh.ops._loop import run as run_on_loop
from natsmesh.services._serve import wait_for_signal


def main(argv: Sequence[str] | None = None) -> None:
    try:
        code = _main(argv)
        sys.stdout.flush()  # here, where a closed pipe is still ours to report
    except KeyboardInterrupt:
        code = 130
    except Exception as exc:  # one line and its exit code; a bug keeps its traceback
        code = fail(exc)
    sys.exit(code)


def _main(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(argv)  # --help and usage errors exit here (SystemExit)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    apply_nats_options(args)
    command: Callable[[argparse.Namespace], Awaitable[int]] = args.command
    return _run(command, args)


def _run(command: Callable[[argparse.Namespace], Awaitable[int]], args: argparse.Namespace) -> int:
    return run_on_loop(command, args, loop=getattr(args, "loop", "auto"))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="natsmesh",
        description="A service mesh on NATS.",
        epilog=epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    def command(
        name: str, func: Callable[[argparse.Namespace], Awaitable[int]], help: str
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(command=func)
        # Also after the command (`natsmesh call -v ...`); SUPPRESS keeps the default
        # from overriding a -v given before it.
        p.add_argument(
            "-v",
            "--verbose",
            action="store_true",
            default=argparse.SUPPRESS,
            help="log debug messages",
        )
        return p

    def nats_option(p: argparse.ArgumentParser) -> None:
        add_nats_options(p)

    def one_shot(p: argparse.ArgumentParser) -> None:
        add_nats_options(p)
        add_connect_timeout(p)

    add_up(command)
    add_gateway(command, nats_option)
    add_serve(command)
    add_observe(command)
    add_discovery(command, one_shot)

    add_commands(command, nats_option, one_shot)
    register_auth(sub)

    def bench_options(p: argparse.ArgumentParser) -> None:
        add_nats_options(p, embedded=True)
        add_connect_timeout(p)

    add_bench(command, bench_options)

    p = command("nats", _nats, "run an embedded nats-server in the foreground")
    p.add_argument(
        "--port",
        type=port_number,
        default=None,
        help="client port (default: 4222, else any free port, which the ready line shows;"
        " a port given here that is taken is an error; 0: any free port)",
    )
    add_loop_options(sub.choices)

    return parser


# -- commands ------------------------------------------------------------------------------


async def _nats(args: argparse.Namespace) -> int:
    embedded = maybe_embedded(None, args.port, flag="--port")
    async with embedded as url:
        version = embedded.version
        line = f"nats-server {version} at {url}{embedded.note} | Ctrl-C to stop"
        await wait_for_signal(ready=lambda: print(line, flush=True))
    return 0
