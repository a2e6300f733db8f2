"""The audit's network cell (attacks/network_cell.py): a lying `mrff server` against two real `mrff client`
processes over mutual TLS on 127.0.0.1, the clients on their default policy. Each lie is refused or accounted:
the freeze-and-difference replay and the evaluation differencing cost exactly what each client's ledger says
(the server's own accountant agrees), and the relabelled replay is refused with the client's own line."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from attacks.hostile_server import CELL_EVALUATED_ROUNDS, CELL_FROZEN_ROUNDS
from attacks.network_cell import RELABEL_REFUSAL, judge_cell, run_network_cell

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def played(tmp_path_factory) -> tuple[Path, dict]:
    workdir = tmp_path_factory.mktemp("network-cell")
    return workdir, run_network_cell(workdir, timeout_s=90)


@pytest.fixture()
def cell(played) -> dict:
    return played[1]


def test_the_cell_holds_and_fits_the_audit_budget(cell) -> None:
    assert cell["verdict"] == "holds" and cell["leaked"] == []
    assert set(cell["lies"]) == {"freeze-and-difference", "evaluation-differencing", "relabelled-replay"}
    assert cell["seconds"] < 60
    json.dumps(cell, allow_nan=False)  # the grid writes it as JSON


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


def _copy(played, tmp_path) -> Path:
    copy = tmp_path / "cell"
    shutil.copytree(played[0], copy)
    return copy


def test_a_release_the_ledger_did_not_record_is_judged_leaked(played, tmp_path) -> None:
    """The judge can fail: the same run, with user 4's ledger missing its round-1 entries (as if the client had
    released the replay without recording it), is a leak of the freeze-and-difference replay."""
    workdir = _copy(played, tmp_path)
    path = workdir / "state" / "user-4" / "ledger.json"
    ledger = json.loads(path.read_text())
    ledger["releases"] = [e for e in ledger["releases"] if e["round"] != 1]
    path.write_text(json.dumps(ledger))
    lie = judge_cell(workdir)["freeze-and-difference"]
    assert lie["outcome"] == "leaked"
    assert "user 4: the server unmasked its counts of round 1; its ledger has no entry" in lie["evidence"]


def test_a_relabelled_round_nobody_refused_is_not_called_refused(played, tmp_path) -> None:
    workdir = _copy(played, tmp_path)
    for log in workdir.glob("clients-*.log"):
        log.write_text("\n".join(line for line in log.read_text().splitlines() if RELABEL_REFUSAL not in line))
    assert judge_cell(workdir)["relabelled-replay"]["outcome"] == "inconclusive"
