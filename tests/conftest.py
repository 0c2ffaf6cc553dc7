"""Shared test configuration."""

import pytest


@pytest.fixture
def anyio_backend() -> str:
    """Run `@pytest.mark.anyio` tests on asyncio, the backend nats-py supports."""
    return "asyncio"
