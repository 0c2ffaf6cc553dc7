"""The NATS Services API (ADR-32) shapes: ``$SRV`` PING, INFO and STATS responses.

One set of pydantic models serves both sides: an instance builds its answers
from them, and discovery validates what any micro service (natsmesh or another
language's) sends back. Metadata is always an object of strings, never null.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field, field_validator

PING_TYPE: Final = "io.nats.micro.v1.ping_response"
INFO_TYPE: Final = "io.nats.micro.v1.info_response"
STATS_TYPE: Final = "io.nats.micro.v1.stats_response"

#: Service metadata key that marks an instance as natsmesh (value: the library version).
MESH_KEY: Final = "natsmesh.version"
SUBSET_KEY: Final = "natsmesh.subset"
PREFIX_KEY: Final = "natsmesh.prefix"


def _metadata(value: Any) -> dict[str, str]:
    # Some implementations send null; ADR-32 says an object of strings.
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError("metadata must be an object")
    return {str(k): str(v) for k, v in value.items()}


def _text(value: Any) -> Any:
    # nats.py's micro sends "description": null when none was given.
    return "" if value is None else value


def _list(value: Any) -> Any:
    # Go services send null for an empty list.
    return [] if value is None else value


class _Identity(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: str
    name: str = Field(max_length=256)
    id: str = Field(max_length=256)
    version: str = Field(default="", max_length=256)
    metadata: dict[str, str] = Field(default_factory=dict)

    _meta = field_validator("metadata", mode="before")(_metadata)
    _version = field_validator("version", mode="before")(_text)

    @property
    def is_mesh(self) -> bool:
        return MESH_KEY in self.metadata


class Ping(_Identity):
    type: str = PING_TYPE


class EndpointInfo(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str
    subject: str
    queue_group: str = ""
    metadata: dict[str, str] = Field(default_factory=dict)

    _meta = field_validator("metadata", mode="before")(_metadata)


class Info(_Identity):
    type: str = INFO_TYPE
    description: str = ""

    _description = field_validator("description", mode="before")(_text)
    endpoints: list[EndpointInfo] = Field(default_factory=list)

    _eps = field_validator("endpoints", mode="before")(_list)


class EndpointStats(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str
    subject: str
    queue_group: str = ""
    num_requests: int = 0
    num_errors: int = 0
    last_error: str = ""
    processing_time: int = 0
    average_processing_time: int = 0
    data: dict[str, Any] | None = None


class Stats(_Identity):
    type: str = STATS_TYPE
    started: str = ""
    endpoints: list[EndpointStats] = Field(default_factory=list)

    _eps = field_validator("endpoints", mode="before")(_list)


def rfc3339(moment: datetime) -> str:
    """UTC, with a ``Z`` suffix, as Go's time.RFC3339Nano prints it."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def dump(response: BaseModel) -> bytes:
    # exclude_none drops only EndpointStats.data when there is none, as Go's omitempty does.
    return response.model_dump_json(exclude_none=True).encode()
