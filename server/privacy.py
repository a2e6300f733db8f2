"""The coordinator's privacy accounting: the one accountant of `mrff_secure.round.accountant`, per round.

A networked run's rounds differ (the participants, and so n_min and the integer plans, change with
who is online), so each completed round adds the RDP curve of its own release (both phases, the
mechanism as the clients encoded it) and epsilon is converted once from the sum. Adjacency is
zero-out (secure aggregation); `epsilon_replace_one` is given beside it. A user is accounted as
taking part in every completed round (no amplification by sampling is claimed: the server sees who
takes part).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

from mrff_secure.dp.accounting import DISCRETE_ORDERS, json_epsilon, rdp_to_epsilon
from mrff_secure.errors import CheckpointError
from mrff_secure.round.accountant import (
    ADJACENCY_TEXT,
    ZERO_OUT,
    RoundRelease,
    calibrate_release,
    privacy_warnings,
    round_rdp_curve,
)
from mrff_secure.round.spec import RoundSpec
from mrff_secure.round.update_vector import UpdateLayout


def round_release(spec: RoundSpec, layout: UpdateLayout, participants: int) -> RoundRelease:
    """The public description of one networked round (what the clients encode with)."""
    blocks = layout.num_blocks if layout.num_groups else 0
    return RoundRelease(dp_mode=spec.dp_mode, secure_aggregation=True, clip=spec.clip,
                        noise_multiplier=spec.noise_multiplier if spec.dp_mode == "distributed" else 0.0,
                        num_blocks=blocks, num_groups=layout.num_groups, delta_size=layout.delta_size,
                        participants=participants,
                        n_min=spec.min_survivors if spec.dp_mode == "distributed" else participants,
                        mechanism=spec.mechanism if spec.dp_mode == "distributed" else None,
                        modulus_bits=spec.modulus_bits, count_cap=spec.count_cap)


def calibrate(spec: RoundSpec, layout: UpdateLayout, *, participants: int, target_epsilon: float, rounds: int,
              delta: float) -> float:
    """z that spends `target_epsilon` over `rounds` rounds of `participants` clients: the headline of the
    ledger below (the discrete bound of the mechanism the clients encode), so the ledger's epsilon after
    `rounds` such rounds is <= the target and close to it. What the calibration had to say is logged."""
    calibration = calibrate_release(round_release(spec, layout, participants), target_epsilon=target_epsilon,
                                    rounds=max(rounds, 1), delta=delta)
    for note in calibration.notes:
        logging.getLogger(__name__).warning("calibration: %s", note)
    return calibration.noise_multiplier


class NetworkLedger:
    """RDP of the completed rounds (zero-out and replace-one), summed; JSON state for checkpoints."""

    def __init__(self, delta: float) -> None:
        self.delta = float(delta)
        self.rounds = 0
        self.noiseless_rounds = 0
        self._zero_out = np.zeros(len(DISCRETE_ORDERS))
        self._replace_one = np.zeros(len(DISCRETE_ORDERS))

    def record_round(self, release: RoundRelease) -> dict[str, Any]:
        """Account one completed round; return the epsilon so far (JSON-ready) for the audit record."""
        self.rounds += 1
        if release.dp_mode != "distributed" or release.noise_multiplier == 0:
            self.noiseless_rounds += 1
        else:
            self._zero_out = self._zero_out + round_rdp_curve(release)
            self._replace_one = self._replace_one + round_rdp_curve(release, replace_one=True)
        return self.summary()

    def epsilon(self, curve: np.ndarray) -> float:
        if self.noiseless_rounds:
            return math.inf
        if self.rounds == 0:
            return 0.0
        if not np.all(np.isfinite(curve)):
            return math.inf
        return rdp_to_epsilon(orders=DISCRETE_ORDERS, rdp=curve, delta=self.delta)

    def summary(self) -> dict[str, Any]:
        """JSON-ready: epsilons as floats or "inf" (a noiseless round: no guarantee, never 0.0 or null)."""
        eps = self.epsilon(self._zero_out)
        return {"epsilon": json_epsilon(eps), "delta": self.delta, "rounds_accounted": self.rounds,
                "noiseless_rounds": self.noiseless_rounds, "adjacency": ZERO_OUT,
                "adjacency_meaning": ADJACENCY_TEXT[ZERO_OUT],
                "epsilon_replace_one": json_epsilon(self.epsilon(self._replace_one)),
                "bound": "RDP of the distributed integer mechanism as the clients encoded it, both phases, every "
                         "completed round, for a user in every round (no amplification by sampling)",
                "warnings": privacy_warnings(epsilon=eps, delta=self.delta,
                                             noise_multiplier=0.0 if self.noiseless_rounds else 1.0)}

    def state_dict(self) -> dict[str, Any]:
        return {"version": 1, "delta": self.delta, "rounds": self.rounds, "noiseless_rounds": self.noiseless_rounds,
                "zero_out": self._zero_out.tolist(), "replace_one": self._replace_one.tolist()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        try:
            if state["version"] != 1:
                raise ValueError(f"version {state['version']!r}")
            zero_out = np.asarray(state["zero_out"], dtype=np.float64)
            replace_one = np.asarray(state["replace_one"], dtype=np.float64)
            if zero_out.shape != (len(DISCRETE_ORDERS),) or replace_one.shape != zero_out.shape:
                raise ValueError("curves have the wrong length")
            self.delta, self.rounds = float(state["delta"]), int(state["rounds"])
            self.noiseless_rounds = int(state["noiseless_rounds"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"the checkpoint's privacy ledger is not readable: {exc}") from exc
        self._zero_out, self._replace_one = zero_out, replace_one
