"""The ``main()`` of every ``python -m examples.shop.<service>``: serve until a signal.

Only the public API: one :class:`natsmesh.ServiceRunner` per service object;
SIGINT or SIGTERM leaves their ``async with``, which drains them (no new
requests, those in flight finish) before the process exits 0.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import signal
from collections.abc import Sequence
from contextlib import AsyncExitStack

import anyio

from natsmesh import ServiceRunner, spec_of

log = logging.getLogger("examples.shop")

DEFAULT_NATS = "nats://127.0.0.1:4222"


async def serve(*services: object, nats: str) -> None:
    """Run the service objects on the NATS server at ``nats`` until SIGINT or SIGTERM."""
    # Listen first: a signal sent the moment the services answer must not kill the
    # process with the default handler before the receiver is in place.
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with AsyncExitStack() as stack:
            for target in services:
                runner = await stack.enter_async_context(ServiceRunner(target, nats=nats))
                log.info(
                    "%s %s is ready (instance %s)", runner.spec.name, runner.spec.version, runner.id
                )
            async for signum in signals:
                log.info("%s: draining", signal.Signals(signum).name)
                break


def run(*services: object, argv: Sequence[str] | None = None) -> None:
    """Parse ``--nats`` and serve the services until SIGINT or SIGTERM."""
    names = ", ".join(f"{spec_of(s).name} {spec_of(s).version}" for s in services)
    parser = argparse.ArgumentParser(description=f"Run {names} until SIGINT or SIGTERM.")
    parser.add_argument(
        "--nats",
        help=f"NATS server URL (default: $NATS_URL, else {DEFAULT_NATS})",
    )
    args = parser.parse_args(argv)
    url = args.nats or os.environ.get("NATS_URL") or DEFAULT_NATS
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    anyio.run(functools.partial(serve, *services, nats=url))
