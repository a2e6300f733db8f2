"""The coordinator's privacy accounting: the one accountant of `mrff_secure.round.accountant`, per round.

A networked run's rounds differ (the participants, and so n_min and the integer plans, change with
who is online), so each completed round adds the RDP curve of its own release (both phases, the
mechanism as the clients encoded it) and epsilon is converted once from the sum. Each phase is accounted
when it is released (the phase-1 counts of a round aborted later included), with the noise of the
survivors less the c_max colluding ones, exactly as each client's own ledger (client/ledger.py) does. Adjacency is
zero-out (secure aggregation); `epsilon_replace_one` is given beside it. A user is accounted as
taking part in every completed round (no amplification by sampling is claimed: the server sees who
takes part).
"""

from __future__ import annotations

import logging
from typing import Any

from mrff_secure.dp.accounting import json_epsilon
from mrff_secure.round.accountant import RoundAccountant, calibrate_release, privacy_warnings
from mrff_secure.round.evaluation_release import evaluation_release
from mrff_secure.round.release import ADJACENCY_TEXT, ZERO_OUT, RoundRelease, network_round_release
from mrff_secure.round.spec import RoundSpec
from mrff_secure.round.update_vector import UpdateLayout
from mrff_secure.secagg.config import DEFAULT_CORRUPT_NEIGHBOURS


def round_release(
    spec: RoundSpec, layout: UpdateLayout, participants: int, *, corrupt_neighbours: int = DEFAULT_CORRUPT_NEIGHBOURS
) -> RoundRelease:
    """The public description of one networked round (what the clients encode with and account in their own
    ledgers): the noise of the survivors less the `corrupt_neighbours` colluding ones."""
    return network_round_release(spec, layout, participants, colluding_survivors=corrupt_neighbours)


def calibrate(
    spec: RoundSpec,
    layout: UpdateLayout,
    *,
    participants: int,
    target_epsilon: float,
    rounds: int,
    delta: float,
    corrupt_neighbours: int = DEFAULT_CORRUPT_NEIGHBOURS,
    evaluations: int = 0,
) -> float:
    """z that spends `target_epsilon` over `rounds` rounds of `participants` clients: the headline of the
    ledger below (the discrete bound of the mechanism the clients encode), so the ledger's epsilon after
    `rounds` such rounds is <= the target and close to it; `evaluations` federated evaluations (the run's planned
    ones) are included, so rounds and evaluations together spend it. What the calibration had to say is logged."""
    calibration = calibrate_release(
        round_release(spec, layout, participants, corrupt_neighbours=corrupt_neighbours),
        target_epsilon=target_epsilon,
        rounds=max(rounds, 1),
        delta=delta,
        evaluation=evaluation_release(spec, participants, colluding_survivors=corrupt_neighbours)
        if evaluations
        else None,
        evaluations=evaluations,
    )
    for note in calibration.notes:
        logging.getLogger(__name__).warning("calibration: %s", note)
    return calibration.noise_multiplier


def ledger_summary(ledger: RoundAccountant) -> dict[str, Any]:
    """The coordinator's epsilon so far, JSON-ready for the audit record: epsilons as floats or "inf" (a
    noiseless round: no guarantee, never 0.0 or null)."""
    eps = ledger.epsilon()
    return {
        "epsilon": json_epsilon(eps),
        "delta": ledger.delta,
        "rounds_accounted": sum(
            n
            for release, n in ledger.history
            if isinstance(release, RoundRelease) and release.phases in ("both", "counts")
        ),
        "releases_accounted": ledger.rounds,
        "evaluations_accounted": ledger.evaluations,  # federated evaluations released (each a DP release)
        "noiseless_rounds": ledger.noiseless_rounds,
        "adjacency": ZERO_OUT,
        "adjacency_meaning": ADJACENCY_TEXT[ZERO_OUT],
        "epsilon_replace_one": json_epsilon(ledger.epsilon(replace_one=True)),
        "bound": "RDP of the distributed integer mechanism as the clients encoded it, every phase released "
        "(aborted rounds included) and every released federated evaluation, the noise of the survivors less the "
        "c_max colluding ones, for a user in every round (no amplification by sampling)",
        "warnings": privacy_warnings(
            epsilon=eps,
            delta=ledger.delta,
            noise_multiplier=0.0 if ledger.noiseless_rounds or ledger.noiseless_evaluations else 1.0,
        ),
    }
