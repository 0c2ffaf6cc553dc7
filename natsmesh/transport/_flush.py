"""A flush that means what it says: the server has processed everything sent before it.

nats-py 2.16's ``flush()`` writes its PING straight to the socket, ahead of the
commands still waiting in the connection's outgoing buffer for its flusher task
(``Client._send_ping``). When the server reads that PING apart from the SUB behind
it, its PONG comes back before the subscription exists, and a message published
the moment ``flush()`` returned is dropped: a "ready" service misses its first
request, a test its first message (about 4 runs in 100 on a fresh server).

:func:`flush` first hands the buffer to the socket and waits for that
(``_flush_pending(force_flush=True)``, on a nats-py in ``TESTED_NATS_PY`` only);
the PING then follows everything before it. The fallback, public: two flushes, the
first one's wait lets the flusher write the buffer, the second one's PING goes
after it (ordered unless the socket pushes back longer than a round trip).
"""

from __future__ import annotations

from natsmesh.transport._nats import NATS
from natsmesh.transport._nats_internals import internals_allowed

__all__ = ["flush"]

#: nats-py's own default.
FLUSH_TIMEOUT = 10.0


async def flush(nc: NATS, timeout: float = FLUSH_TIMEOUT) -> None:
    """Return once the server has processed every command ``nc`` sent before the call."""
    if internals_allowed() and hasattr(nc, "_flush_pending"):
        await nc._flush_pending(force_flush=True)  # see the module docstring
    else:
        await nc.flush(timeout)  # type: ignore[arg-type]  # a float works: wait_for's
    await nc.flush(timeout)  # type: ignore[arg-type]
