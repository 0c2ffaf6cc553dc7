"""natsmesh: a service mesh for Python services whose network is NATS.

Declare a service with ``@service`` and ``@endpoint``, run it with
``ServiceRunner`` (or ``natsmesh serve module:attr``), and call it through ``Mesh``.
"""

from natsmesh._client import Mesh
from natsmesh._codec import Limits
from natsmesh._context import Context
from natsmesh._errors import (
    CallError,
    Cause,
    DeadlineExceeded,
    ErrorKind,
    InstanceLost,
    InvalidName,
    InvalidReply,
    InvalidRequest,
    MeshError,
    NatsRefused,
    NatsUnreachable,
    NoResponders,
    Overloaded,
    PermissionDenied,
    RemoteError,
    ServiceError,
    SpecError,
    UnknownEndpoint,
)
from natsmesh._routes import HttpRoute, Retries, RouteConfigError, ServicePolicy
from natsmesh._runtime import ServiceRunner
from natsmesh._serve import serve
from natsmesh._spec import ServiceSpec, endpoint, service, spec_of
from natsmesh._version import __version__

__all__ = [
    "CallError",
    "Cause",
    "Context",
    "DeadlineExceeded",
    "ErrorKind",
    "HttpRoute",
    "InstanceLost",
    "InvalidName",
    "InvalidReply",
    "InvalidRequest",
    "Limits",
    "Mesh",
    "MeshError",
    "NatsRefused",
    "NatsUnreachable",
    "NoResponders",
    "Overloaded",
    "PermissionDenied",
    "RemoteError",
    "Retries",
    "RouteConfigError",
    "ServiceError",
    "ServicePolicy",
    "ServiceRunner",
    "ServiceSpec",
    "SpecError",
    "UnknownEndpoint",
    "__version__",
    "endpoint",
    "serve",
    "service",
    "spec_of",
]
