"""The ``main()`` of every ``python -m examples.shop.<service>``: serve until a signal.

:func:`natsmesh.serve` does the work: SIGINT or SIGTERM drains the instances (no
new requests, those in flight finish) before the process exits 0.
"""

from __future__ import annotations

import argparse
import functools
import logging
from collections.abc import Sequence

import anyio

from natsmesh import ServiceRunner, serve, spec_of

log = logging.getLogger("examples.shop")


def _ready(runners: list[ServiceRunner]) -> None:
    for runner in runners:
        log.info("%s %s is ready (instance %s)", runner.spec.name, runner.spec.version, runner.id)


def run(*services: object, argv: Sequence[str] | None = None) -> None:
    """Parse ``--nats`` and serve the services until SIGINT or SIGTERM."""
    names = ", ".join(f"{spec_of(s).name} {spec_of(s).version}" for s in services)
    parser = argparse.ArgumentParser(description=f"Run {names} until SIGINT or SIGTERM.")
    parser.add_argument("--nats", help="NATS server URL (default: $NATS_URL, else localhost)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    anyio.run(functools.partial(serve, services, nats=args.nats, ready=_ready))
