"""natsmesh: a service mesh for Python services whose network is NATS.

Declare a service with ``@service`` and ``@endpoint``, run it with
``ServiceRunner`` (or ``natsmesh serve module:attr``), and call it through ``Mesh``.
"""

from natsmesh._version import __version__
from natsmesh.client._client import Mesh
from natsmesh.services._context import Context
from natsmesh.services._runtime import ServiceRunner
from natsmesh.services._serve import serve
from natsmesh.services._spec import ServiceSpec, endpoint, service, spec_of
from natsmesh.traffic._routes import HttpRoute, Retries, RouteConfigError, ServicePolicy
from natsmesh.transport._credentials import CredentialsError
from natsmesh.wire._codec import Limits
from natsmesh.wire._errors import (
    CallError,
    Cause,
    DeadlineExceeded,
    ErrorKind,
    InstanceLost,
    InvalidName,
    InvalidReply,
    InvalidRequest,
    MeshError,
    MessageTooLarge,
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

__all__ = [
    "CallError",
    "Cause",
    "Context",
    "CredentialsError",
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
    "MessageTooLarge",
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
