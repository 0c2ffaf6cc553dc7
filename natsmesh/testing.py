"""Helpers for testing code that uses natsmesh against a real nats-server.

Installed as a pytest plugin (entry point ``pytest11: natsmesh``), it provides
two function-scoped fixtures:

- ``nats_server``: an :class:`EmbeddedNats` started before the test and stopped
  after it (JetStream on, free port, temporary store);
- ``nats_url``: that server's URL, e.g. ``nats://127.0.0.1:40123``.

The fixtures are synchronous, so they work with any async test plugin (anyio,
pytest-asyncio) or none. Without pytest installed, the module still imports, for
use with other test runners::

    from natsmesh.testing import EmbeddedNats

    with EmbeddedNats() as server:
        ...
"""

from __future__ import annotations

from collections.abc import Iterator

from natsmesh.ops._binary import NatsServerNotFound, NatsServerStartFailed, free_port
from natsmesh.ops._embedded import EmbeddedNats

__all__ = [
    "EmbeddedNats",
    "NatsServerNotFound",
    "NatsServerStartFailed",
    "free_port",
]

try:
    import pytest
except ModuleNotFoundError:  # other test runners may import EmbeddedNats without pytest
    _HAVE_PYTEST = False
else:
    _HAVE_PYTEST = True

if _HAVE_PYTEST:
    __all__ += ["nats_server", "nats_url"]

    @pytest.fixture
    def nats_server() -> Iterator[EmbeddedNats]:
        """A real nats-server with JetStream, running for the duration of one test."""
        server = EmbeddedNats()
        server.start()
        try:
            yield server
        finally:
            server.stop()

    @pytest.fixture
    def nats_url(nats_server: EmbeddedNats) -> str:
        """The client URL of the ``nats_server`` fixture."""
        return nats_server.url
