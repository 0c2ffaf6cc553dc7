"""The JSON the dashboard shows: topology, services, one service's page (no I/O).

Built from an :class:`~natsmesh.traffic._aggregate.Aggregate` (what callers
counted), the ``$SRV`` INFO and STATS of every instance, and, for a service's
page, its route and registry tables and the controller's status rows. Names that
come from the wire are only ever data here; the page puts them in the DOM as text.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from natsmesh.dashboard._observer import Instances
from natsmesh.traffic._aggregate import Aggregate, Stat
from natsmesh.wire import _micro
from natsmesh.wire._control import RegistryTable, RouteTable, StatusView

#: An edge whose success ratio over the window is below this is failing (red).
FAILING_BELOW: Final = 0.95
_EMPTY: Final = Stat(0, 0, 0.0, None, None, None)


def _instance(info: _micro.Info, stats: _micro.Stats | None) -> dict[str, Any]:
    in_flight = 0
    ejected = False
    requests = errors = processing = 0
    last_error = ""
    if stats is not None:
        for ep in stats.endpoints:
            data = ep.data or {}
            in_flight = max(in_flight, _int(data.get("in_flight")))
            ejected = ejected or _int(data.get("queue_ejected")) > 0
            requests += ep.num_requests
            errors += ep.num_errors
            processing += ep.processing_time
            last_error = ep.last_error or last_error
    meta = info.metadata
    return {
        "id": info.id,
        "version": info.version,
        "subset": meta.get(_micro.SUBSET_KEY, ""),
        "zone": meta.get("natsmesh.zone", ""),
        "mesh": info.is_mesh,
        "in_flight": in_flight,
        "ejected": ejected,
        "requests": requests,
        "errors": errors,
        "average_ms": round(processing / requests / 1e6, 3) if requests else None,
        "last_error": last_error,
    }


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def services(aggregate: Aggregate, instances: Instances, now: float) -> list[dict[str, Any]]:
    """Every service that has instances or is called: traffic and instances."""
    by_name: dict[str, list[dict[str, Any]]] = {}
    for info in instances.infos:
        by_name.setdefault(info.name, []).append(
            _instance(info, instances.stats.get((info.name, info.id)))
        )
    callees = aggregate.callees(now)
    out = []
    for name in sorted(set(by_name) | set(callees)):
        members = by_name.get(name, [])
        stat = callees.get(name, _EMPTY)
        out.append(
            {
                "name": name,
                "instances": members,
                "count": len(members),
                "in_flight": sum(m["in_flight"] for m in members),
                "ejected": sum(1 for m in members if m["ejected"]),
                "subsets": sorted({m["subset"] for m in members if m["subset"]}),
                "zones": sorted({m["zone"] for m in members if m["zone"]}),
                **stat.as_json(),
            }
        )
    return out


def topology(aggregate: Aggregate, instances: Instances, now: float) -> dict[str, Any]:
    """Services and callers as nodes, observed calls as edges (caller → callee)."""
    edges = aggregate.edges(now)
    served = {info.name for info in instances.infos}
    nodes = {name: "service" for name in served}
    for caller, callee in edges:
        nodes.setdefault(caller, "client")
        nodes.setdefault(callee, "service")
    return {
        "nodes": [{"id": n, "kind": k} for n, k in sorted(nodes.items())],
        "edges": [
            {
                "source": caller,
                "target": callee,
                "failing": stat.success is not None and stat.success < FAILING_BELOW,
                **stat.as_json(),
            }
            for (caller, callee), stat in sorted(edges.items())
        ],
    }


def service(
    name: str,
    aggregate: Aggregate,
    instances: Instances,
    now: float,
    *,
    route: RouteTable | None,
    registry: RegistryTable | None,
    status: StatusView | None,
    failures: list[dict[str, Any]] | None = None,
) -> dict[str, Any] | None:
    """One service's page; None when nothing is known of it. ``failures``: its recent
    failed requests, newest first, each with its cause chain.
    """
    listed = [s for s in services(aggregate, instances, now) if s["name"] == name]
    if not listed:
        return None
    page = listed[0]
    endpoints: dict[str, dict[str, Any]] = {}
    for info in instances.infos:
        if info.name != name:
            continue
        for ep in info.endpoints:
            endpoints.setdefault(
                ep.name,
                {
                    "name": ep.name,
                    "subject": ep.subject,
                    "request_schema": ep.metadata.get("natsmesh.request_schema", ""),
                    "response_schema": ep.metadata.get("natsmesh.response_schema", ""),
                },
            )
    for ep_name, stat in aggregate.endpoints(now, name).items():
        endpoints.setdefault(ep_name, {"name": ep_name, "subject": ""}).update(stat.as_json())
    last_errors = [
        {"instance": i["id"], "error": i["last_error"]}
        for i in page["instances"]
        if i["last_error"]
    ]
    return {
        **page,
        "endpoints": sorted(endpoints.values(), key=lambda e: str(e["name"])),
        "routes": route.policy if route is not None else None,
        "registry": _registry(registry),
        "clients": _clients(name, status),
        "errors": failures or [],
        "last_errors": last_errors,
        "callers": [
            {"caller": c, **stat.as_json()}
            for (c, callee), stat in sorted(aggregate.edges(now).items())
            if callee == name
        ],
    }


def _registry(registry: RegistryTable | None) -> list[Mapping[str, Any]] | None:
    if registry is None:
        return None
    return [
        {"id": a.id, "version": a.version, "subset": a.subset, "zone": a.zone, "healthy": a.healthy}
        for a in registry.instances
    ]


def _clients(name: str, status: StatusView | None) -> list[dict[str, Any]] | None:
    if status is None:
        return None
    return [
        {
            "client": r.client,
            "kind": r.kind,
            "applied": r.applied,
            "latest": r.latest,
            "state": r.state,
            "reason": r.reason,
        }
        for r in status.rows
        if r.service == name
    ]
