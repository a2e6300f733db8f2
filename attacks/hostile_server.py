"""A lying coordinator: the real `mrff server`, with one lie patched in (the malicious-server tests in
tests/network and the audit's network cell, `attacks.network_cell`).

Run as `python -m attacks.hostile_server LIE -- SERVER-ARGS...`. Each lie changes what the server
proposes or does in a way an honest client must refuse or account for (SECURITY.md, its table of
weaknesses):

- weak-threshold (W2): announce t = floor(k/2) + 1, so 2t - k <= 2 colluding neighbours could unmask.
- huge-noise-survivors (W7): announce min_survivors = 10^6, so each client's noise share is ~0.
- drop-below-noise-survivors (W7): announce noise sized for every participant (min_survivors = n),
  then drop one client's update: the sum would carry less noise than the clients were told.
- tiny-k (W3): announce k = 2 neighbours.
- no-guard-bits (W8): announce max_abs = (2^(b-1) - 1) // n, the largest bound that cannot wrap, with
  no guard bits left: the output range check would then let junk (a dealer masking with another seed)
  through almost surely.
- weak-evaluation-threshold (W2 on the third sum): honest counts and update sums, but the federated
  evaluation's sum announced with t = floor(k/2) + 1.
- evaluation-without-target (W14): honest rounds, but the federated evaluation run over the update's
  survivors minus the first one, so that its difference with an evaluation over all of them would give
  that client's held-out labels.
- freeze-and-replay (W12, freeze and difference): every round is summed, reported to the clients as
  aborted, and the model frozen, so the next round is the same round again: each release costs the
  clients epsilon, which their ledgers count until their cap stops them.
- relabel-and-replay (W12): after round 0, announce round 0 again under a new run-id label.
- malformed-round-0 (W19): round 0's signed announcement has group fractions of the wrong length and
  round 1's a model configuration that is no JSON object; round 2 is honest. Clients refuse the bad
  rounds and play the honest one.
- network-cell (the audit's network cell, four rounds then a relabelled one, the CELL_* constants): rounds 0 and 1
  freeze and replay (each summed, reported aborted, the model frozen: round 1 is round 0 again); rounds 2
  and 3 end with federated evaluations of two models that differ in one place (round 3 announces round 2's
  starting model with one parameter changed); then round 3 is announced again under a new run-id label.
"""

from __future__ import annotations

import dataclasses
import runpy
import sys
from collections.abc import Callable
from typing import Any

from mrff_secure.secagg.config import SecAggConfig
from mrff_secure.secagg.server import ServerSession
from mrff_secure.wire.v1 import coordinator_pb2 as pb
from server import coordinator

LIES = (
    "weak-threshold",
    "huge-noise-survivors",
    "drop-below-noise-survivors",
    "tiny-k",
    "no-guard-bits",
    "weak-evaluation-threshold",
    "evaluation-without-target",
    "freeze-and-replay",
    "relabel-and-replay",
    "malformed-round-0",
    "network-cell",
)
# The network cell's rounds: which lie each plays (attacks.network_cell reads the outcome of each).
CELL_FROZEN_ROUNDS = (0, 1)  # summed, reported aborted, the model frozen
CELL_EVALUATED_ROUNDS = (2, 3)  # federated evaluations of two models that differ in one place
CELL_RELABELLED_ROUND = 3  # announced again under a new run-id label, after round 3
CELL_ROUNDS = 4  # the run's --rounds: rounds 0-3, then the relabelled round 3 (the fifth round played)
CELL_SHIFT = 0.5  # what round 3's model adds to one parameter of round 2's
CELL_RELABEL_WAIT_S = 3.0  # the relabelled round's train timeout (clients refuse as soon as they read it)


def _play_frozen(honest_play: Callable[[Any, int], None], coordinator_self: Any, r: int) -> None:
    """Round r played and summed, reported to the clients as aborted, and the model frozen."""
    frozen = dict(coordinator_self.state.params)
    honest_end = coordinator_self.gate.end_round

    def lying_end(rs: Any, outcome: pb.RoundOutcome) -> None:
        honest_end(rs, pb.RoundOutcome(round_id=outcome.round_id, completed=False, reason="aborted"))

    coordinator_self.gate.end_round = lying_end
    try:
        honest_play(coordinator_self, r)
    finally:
        coordinator_self.gate.end_round = honest_end
    coordinator_self.state.params = frozen
    coordinator_self.state.last_completed = -1


def _patch_freeze() -> None:
    """Every round summed, reported to the clients as aborted, and the model frozen: the next round is the
    same round again under the next round id (its sum minus the last one, the target left out, is the
    target's update: the freeze-and-difference attack of W12)."""
    honest_play = coordinator.Coordinator._play_round

    def play(self: Any, r: int) -> None:
        _play_frozen(honest_play, self, r)

    coordinator.Coordinator._play_round = play  # type: ignore[method-assign]


def _patch_relabel() -> None:
    """After round 0, round 0 again under a new run-id label."""
    honest_play = coordinator.Coordinator._play_round
    replayed: list[int] = []

    def play(self: Any, r: int) -> None:
        honest_play(self, r)
        if r == 0 and not replayed:
            replayed.append(r)
            self.state.next_round = 0
            self.state.run_id = "relabelled-" + self.state.run_id

    coordinator.Coordinator._play_round = play  # type: ignore[method-assign]


def _patch_network_cell() -> None:
    """The network cell's schedule (module docstring, CELL_*): one run plays the three lies in turn."""
    honest_play = coordinator.Coordinator._play_round
    honest_due = coordinator.Coordinator._evaluation_due
    relabelled: list[int] = []

    def due(self: Any, r: int) -> bool:
        return r in CELL_EVALUATED_ROUNDS and not relabelled and honest_due(self, r)

    def play(self: Any, r: int) -> None:
        if relabelled or r not in CELL_FROZEN_ROUNDS:
            starting = dict(self.state.params)
            honest_play(self, r)
            if r == CELL_EVALUATED_ROUNDS[0] and not relabelled:  # round 3 evaluates round 2's model, one place changed
                name = sorted(starting)[0]
                changed = starting[name].clone()
                changed.view(-1)[0] += CELL_SHIFT
                self.state.params = {**starting, name: changed}
        else:
            _play_frozen(honest_play, self, r)
        if r == CELL_RELABELLED_ROUND and not relabelled:
            relabelled.append(r)
            self.state.next_round = r
            self.state.run_id = "relabelled-" + self.state.run_id
            self.settings = dataclasses.replace(self.settings, train_timeout=CELL_RELABEL_WAIT_S)

    coordinator.Coordinator._play_round = play  # type: ignore[method-assign]
    coordinator.Coordinator._evaluation_due = due  # type: ignore[method-assign]


def _patch_configs(change: Callable[[SecAggConfig], SecAggConfig]) -> None:
    honest = coordinator.plan_configs

    def lying(plans: Any, num_clients: int, *, options: Any = None) -> Any:
        return tuple(change(c) for c in honest(plans, num_clients, options=options))

    coordinator.plan_configs = lying


def _patch_announced_dp(change: Callable[[Any], None]) -> None:
    """Sign a round body whose DP parameters differ from what the server itself computes with."""
    _patch_announced_body(lambda body: change(body.dp))


def _patch_announced_body(change: Callable[[pb.RoundBody], None]) -> None:
    """Sign round bodies changed by `change(body)` (the server itself plays the honest round)."""
    honest = coordinator.Coordinator._body

    def lying(self: Any, *args: Any, **kwargs: Any) -> pb.SignedBody:
        signed = honest(self, *args, **kwargs)
        body = pb.RoundBody.FromString(signed.body)
        if body.finished:
            return signed
        change(body)
        signed_again: pb.SignedBody = self._sign(body)
        return signed_again

    coordinator.Coordinator._body = lying  # type: ignore[method-assign]


def install(lie: str) -> None:
    if lie == "weak-threshold":
        _patch_configs(
            lambda c: SecAggConfig(
                num_clients=c.num_clients,
                vector_length=c.vector_length,
                max_abs=c.max_abs,
                modulus_bits=c.bits,
                num_neighbours=c.k,
                threshold=c.k // 2 + 1,
            )
        )
    elif lie == "weak-evaluation-threshold":
        honest_evaluation = coordinator.evaluation_config

        def weak(num_clients: int, modulus_bits: int, options: Any = None) -> SecAggConfig:
            c = honest_evaluation(num_clients, modulus_bits, options)
            return SecAggConfig(
                num_clients=c.num_clients,
                vector_length=c.vector_length,
                max_abs=c.max_abs,
                modulus_bits=c.bits,
                num_neighbours=c.k,
                threshold=c.k // 2 + 1,
            )

        coordinator.evaluation_config = weak
    elif lie == "evaluation-without-target":
        honest_evaluate = coordinator.Coordinator._evaluate

        def without_target(
            self: Any,
            rs: Any,
            config: Any,
            nonce: bytes,
            survivors: Any,
            record: Any,
            evaluated_model: str,
            on_open: Any = None,
        ) -> Any:
            return honest_evaluate(self, rs, config, nonce, tuple(survivors[1:]), record, evaluated_model, on_open)

        coordinator.Coordinator._evaluate = without_target  # type: ignore[method-assign]
    elif lie == "tiny-k":
        _patch_configs(
            lambda c: SecAggConfig(
                num_clients=c.num_clients,
                vector_length=c.vector_length,
                max_abs=c.max_abs,
                modulus_bits=c.bits,
                num_neighbours=2,
                threshold=2,
            )
        )
    elif lie == "no-guard-bits":
        honest = coordinator.secagg_parameters

        def blind(config: SecAggConfig, secagg_round_id: int, nonce: bytes) -> pb.SecAggParameters:
            params = honest(config, secagg_round_id, nonce)
            params.max_abs = ((1 << (config.bits - 1)) - 1) // config.num_clients
            return params

        coordinator.secagg_parameters = blind
    elif lie == "huge-noise-survivors":
        _patch_announced_dp(lambda dp: setattr(dp, "min_survivors", 10**6))
    elif lie == "drop-below-noise-survivors":
        coordinator.min_survivors = lambda n, fraction: n  # type: ignore[assignment]
        honest_receive = ServerSession.receive_masked_input
        victim: dict[int, int] = {}

        def receive(self: Any, message: Any) -> None:
            # phase 2 only (odd secagg round ids): ignore the first upload, as if that client had dropped
            if self.round_id % 2 == 1 and victim.setdefault(self.round_id, message.client_id) == message.client_id:
                return
            honest_receive(self, message)

        ServerSession.receive_masked_input = receive  # type: ignore[method-assign]
        coordinator.Coordinator._check_survivors = lambda self, *args: None  # type: ignore[method-assign]  # and skip the honest server's own check
    elif lie == "freeze-and-replay":
        _patch_freeze()
    elif lie == "relabel-and-replay":
        _patch_relabel()
    elif lie == "malformed-round-0":

        def malform(body: pb.RoundBody) -> None:
            if body.round_id == 0:
                del body.group_fractions[1:]
            elif body.round_id == 1:
                body.training.model_config_json = "[1, 2"

        _patch_announced_body(malform)
    elif lie == "network-cell":
        _patch_network_cell()
    else:
        raise SystemExit(f"unknown lie {lie!r}; one of {LIES}")


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[1] != "--":
        raise SystemExit("usage: python -m attacks.hostile_server LIE -- SERVER-ARGS...")
    install(argv[0])
    # `mrff server` itself, run as a program (as `python -m mrff_secure.app.cli server ...`): the attack library
    # does not import the app layer; only this child process runs it, with the lie installed.
    sys.argv = ["mrff", "server", *argv[2:]]
    try:
        runpy.run_module("mrff_secure.app.cli", run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
