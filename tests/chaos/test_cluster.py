"""A 3-server cluster, the KV at 3 replicas, under faults (scenarios in scenarios_cluster.py).

Bounds on times are generous ("did not hang", "within the budget"): the figures
themselves are in the table printed at the end of the run.
"""

from __future__ import annotations

import pytest

from chaos.figures import Figures

pytestmark = pytest.mark.timeout(1800)

#: The catalog's budget per call (chaos/shop.py): a call that took longer waited it out.
BUDGET = 3.0
#: A route change reaches every client within the 10 s reconcile even when a KV watch stalls.
CONVERGE = 25.0


@pytest.mark.chaos("kv-leader-kill")
def test_kill_9_of_the_kv_leader_loses_no_call(figures: Figures) -> None:
    assert figures.failed == 0, figures.errors
    assert figures.p99_fault < BUDGET
    assert figures.notes["kv writable after kill s"] < 30
    assert figures.notes["replicas current s"] < 30
    assert figures.converge is not None
    assert figures.converge < CONVERGE


@pytest.mark.chaos("controller-kill")
def test_kill_9_of_the_controller_the_standby_takes_over(figures: Figures) -> None:
    assert figures.failed == 0, figures.errors
    assert figures.notes["takeover s"] < 20  # a 3 s lease
    assert figures.converge is not None
    assert figures.converge < CONVERGE


@pytest.mark.chaos("sigstop-p2c")
def test_a_frozen_instance_in_p2c_mode_loses_no_idempotent_call(figures: Figures) -> None:
    assert figures.failed == 0, figures.errors
    assert figures.p99_fault < BUDGET
    assert figures.longest_gap < BUDGET
    assert figures.converge is not None
    assert figures.converge < CONVERGE


@pytest.mark.chaos("sigstop-queue")
def test_a_frozen_instance_in_queue_mode_loses_no_idempotent_call(figures: Figures) -> None:
    assert figures.failed == 0, figures.errors
    assert figures.notes["calls past 2 tries"] == 0  # no retry went back to the frozen one
    assert figures.p99_fault < BUDGET
    assert figures.longest_gap < BUDGET


@pytest.mark.chaos("rolling-restart")
def test_a_rolling_restart_loses_no_call(figures: Figures) -> None:
    assert figures.failed == 0, figures.errors
    assert figures.notes["put failed"] == 0  # drained: not even a call that is never retried
    assert figures.notes["exit codes"] == [0, 0, 0]
    assert figures.converge is not None
    assert figures.converge < CONVERGE


@pytest.mark.chaos("lame-duck")
def test_lame_duck_mode_moves_the_clients_off_without_a_failed_call(figures: Figures) -> None:
    assert figures.failed == 0, figures.errors
    assert figures.notes["client moved"]
    assert figures.notes["server exit"] == 0
    assert figures.converge is not None
    assert figures.converge < CONVERGE


@pytest.mark.chaos("partition")
def test_a_partitioned_server_its_clients_fail_over_and_the_majority_writes(
    figures: Figures,
) -> None:
    assert figures.failed == 0, figures.errors
    assert figures.p99_fault < BUDGET
    assert figures.notes["kv writable on majority after s"] < 30
    assert figures.notes["majority converged s"] < CONVERGE
    assert figures.converge is not None  # the minority's client, after the heal
    assert figures.converge < CONVERGE
