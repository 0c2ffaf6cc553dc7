"""The registry's pure state machine: announce, heartbeat, leave, expire."""

from __future__ import annotations

import pytest

from natsmesh.control._registry import Registry
from natsmesh.wire._control import Announcement, Heartbeat, Leave, RegistryTable


def ann(service: str = "svc", id: str = "a", **kw: object) -> Announcement:
    return Announcement.model_validate(
        {"service": service, "id": id, "version": "1.0.0", "subset": "v1", **kw}
    )


def test_announce_reports_a_change_only_when_something_changed() -> None:
    r = Registry(expiry=5)
    assert r.announce(ann(), now=0) == {"svc"}
    assert r.announce(ann(), now=1) == set()
    assert r.announce(ann(zone="eu"), now=2) == {"svc"}
    assert [i.zone for i in r.table("svc").instances] == ["eu"]


def test_heartbeats_keep_instances_and_unknown_ones_are_flagged() -> None:
    r = Registry(expiry=5)
    r.announce(ann(), now=0)
    assert r.heartbeat(Heartbeat(service="svc", id="a"), now=4) == (set(), False)
    assert r.expire(now=8) == set()  # seen at 4, expiry 5
    assert r.heartbeat(Heartbeat(service="svc", id="zz"), now=8) == (set(), True)
    changed, _ = r.heartbeat(Heartbeat(service="svc", id="a", healthy=False), now=8)
    assert changed == {"svc"}
    assert not r.table("svc").instances[0].healthy


def test_leave_and_expiry_remove() -> None:
    r = Registry(expiry=5)
    r.announce(ann(id="a"), now=0)
    r.announce(ann(id="b"), now=3)
    assert r.leave(Leave(service="svc", id="a")) == {"svc"}
    assert r.leave(Leave(service="svc", id="a")) == set()
    assert r.expire(now=7) == set()
    assert r.expire(now=8.5) == {"svc"}
    assert r.table("svc") == RegistryTable(service="svc", instances=())


def test_foreign_services_expire_on_their_own_clock() -> None:
    r = Registry(expiry=5, foreign_expiry=25)
    r.announce(ann(id="m"), now=0)
    r.announce(ann(service="other", id="f", mesh=False), now=0)
    r.expire(now=10)
    assert r.table("svc").instances == ()
    assert [i.id for i in r.table("other").instances] == ["f"]


def test_a_foreign_instance_never_joins_a_natsmesh_service() -> None:
    r = Registry(expiry=5)
    assert r.announce(ann(id="m"), now=0) == {"svc"}
    assert r.announce(ann(id="evil", mesh=False), now=0) == set()
    assert [i.id for i in r.table("svc").instances] == ["m"]


def test_a_natsmesh_instance_displaces_foreign_ones_of_its_name() -> None:
    r = Registry(expiry=5)
    r.announce(ann(id="f", mesh=False), now=0)
    assert r.announce(ann(id="m"), now=1) == {"svc"}
    assert [i.id for i in r.table("svc").instances] == ["m"]


def test_seed_keeps_stored_instances_for_one_expiry() -> None:
    r = Registry(expiry=5)
    r.seed(RegistryTable(service="svc", instances=(ann(id="old"),)), now=100)
    assert r.instance_count() == 1
    assert r.expire(now=106) == {"svc"}


@pytest.mark.parametrize("bad", [0, -1])
def test_expiry_must_be_positive(bad: float) -> None:
    with pytest.raises(ValueError, match="positive"):
        Registry(expiry=bad)
