"""nats-py, as natsmesh uses it: the one module that imports it.

Everything natsmesh takes from nats-py (the client, its message and subscription
types, its errors, JetStream's key-value types, the NUID) is named here, and the
rest of the transport imports it from here; above the transport nothing does
(``lint-imports``: "only natsmesh.transport._nats imports nats"). What nats-py
version natsmesh's private uses of it were tested with is in
:mod:`natsmesh.transport._nats_internals`.
"""

from __future__ import annotations

import nats.aio.client as client_module
import nats.errors as errors
import nats.js.errors as js_errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import AuthorizationError, MaxPayloadError, NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import KeyValueConfig, RePublish
from nats.js.kv import KeyValue
from nats.nuid import NUID

__all__ = [
    "NATS",
    "NUID",
    "AuthorizationError",
    "KeyValue",
    "KeyValueConfig",
    "MaxPayloadError",
    "Msg",
    "NatsTimeoutError",
    "NoRespondersError",
    "RePublish",
    "Subscription",
    "client_module",
    "errors",
    "js_errors",
]
