"""The audit's network cell (attacks/network_cell.py): a lying `mrff server` against two real `mrff client`
processes over mutual TLS on 127.0.0.1, the clients on their default policy. Each lie is refused or accounted:
the freeze-and-difference replay and the evaluation differencing cost exactly what each client's ledger says
(the server's own accountant agrees), and the relabelled replay is refused with the client's own line."""

from __future__ import annotations

import math

import pytest

from attacks.hostile_server import CELL_EVALUATED_ROUNDS, CELL_FROZEN_ROUNDS
from attacks.network_cell import RELABEL_REFUSAL, run_network_cell

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def cell(tmp_path_factory) -> dict:
    return run_network_cell(tmp_path_factory.mktemp("network-cell"), timeout_s=90)


def test_the_cell_holds_and_fits_the_audit_budget(cell) -> None:
    assert cell["verdict"] == "holds" and cell["leaked"] == []
    assert set(cell["lies"]) == {"freeze-and-difference", "evaluation-differencing", "relabelled-replay"}
    assert cell["seconds"] < 60


def test_a_frozen_replay_is_released_again_and_each_release_is_accounted(cell) -> None:
    lie = cell["lies"]["freeze-and-difference"]
    assert lie["outcome"] == "accounted", lie["evidence"]
    assert lie["rounds"] == list(CELL_FROZEN_ROUNDS)
    # both rounds' sums were obtained: the second release of the same input happened and is paid for
    assert [tuple(x) for x in lie["releases_obtained"]] == [
        (r, p) for r in CELL_FROZEN_ROUNDS for p in ("counts", "update")
    ]
    assert 0 < lie["server_epsilon"] < math.inf
    assert lie["client_epsilon"] == pytest.approx(lie["server_epsilon"], rel=1e-9)
    assert lie["client_epsilon_min"] == pytest.approx(lie["server_epsilon"], rel=1e-9)  # every client's ledger
    assert lie["ledgers_matching"] == 12


def test_evaluations_of_two_models_differing_in_one_place_are_both_accounted(cell) -> None:
    lie = cell["lies"]["evaluation-differencing"]
    assert lie["outcome"] == "accounted", lie["evidence"]
    first, second = lie["evaluated_models"]
    assert first and second and first != second  # the lie was played: two different models evaluated
    obtained = {tuple(x) for x in lie["releases_obtained"]}
    assert {(r, "evaluation") for r in CELL_EVALUATED_ROUNDS} <= obtained
    frozen = cell["lies"]["freeze-and-difference"]["server_epsilon"]
    assert lie["server_epsilon"] > frozen  # two more rounds and two evaluations cost more
    assert lie["client_epsilon"] == pytest.approx(lie["server_epsilon"], rel=1e-9)
    assert lie["client_epsilon_min"] == pytest.approx(lie["server_epsilon"], rel=1e-9)
    assert lie["ledgers_matching"] == 12


def test_a_replay_under_a_new_run_label_is_refused_by_every_client_process(cell) -> None:
    lie = cell["lies"]["relabelled-replay"]
    assert lie["outcome"] == "refused"
    lines = [line for line in lie["evidence"] if RELABEL_REFUSAL in line]
    assert len(lines) == 2 and all("6 of 6 logical clients failed" in line for line in lines), lie["evidence"]
    assert lie["server_record"] == "round_aborted"  # the server got nothing of it
    # nothing new was spent: the epsilon is the one after round 3
    assert lie["client_epsilon"] == pytest.approx(cell["lies"]["evaluation-differencing"]["client_epsilon"], rel=1e-9)
