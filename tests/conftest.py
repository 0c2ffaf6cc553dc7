"""Shared test configuration."""

import pytest


@pytest.fixture
def anyio_backend() -> str:
    """Run `@pytest.mark.anyio` tests on asyncio, the backend nats-py supports."""
    return "asyncio"


def pytest_addoption(parser: pytest.Parser) -> None:
    """The chaos suite's options (tests/chaos/conftest.py reads them)."""
    group = parser.getgroup("chaos", "the chaos suite (tests/chaos)")
    group.addoption(
        "--chaos-long",
        action="store_true",
        help="the long variants: a 10-minute soak, longer faults (for manual runs)",
    )
    group.addoption(
        "--chaos-jobs",
        type=int,
        default=2,
        help="chaos scenarios that run at once (default 2; the soak always runs alone)",
    )
