"""A lying coordinator for the malicious-server tests: the real `mrff server`, with one lie patched in.

Run as `python tests/network/hostile_server.py LIE -- SERVER-ARGS...`. Each lie changes what the
server proposes or does in a way an honest client must refuse (SECURITY.md, its table of weaknesses):

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
"""

from __future__ import annotations

import sys

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
)


def _patch_freeze() -> None:
    """Every round summed, reported to the clients as aborted, and the model frozen: the next round is the
    same round again under the next round id (its sum minus the last one, the target left out, is the
    target's update: the freeze-and-difference attack of W12)."""
    honest_play = coordinator.Coordinator._play_round

    def play(self, r):
        frozen = dict(self.state.params)
        honest_end = self.gate.end_round

        def lying_end(rs, outcome):
            honest_end(rs, pb.RoundOutcome(round_id=outcome.round_id, completed=False, reason="aborted"))

        self.gate.end_round = lying_end
        try:
            honest_play(self, r)
        finally:
            self.gate.end_round = honest_end
        self.state.params = frozen
        self.state.last_completed = -1

    coordinator.Coordinator._play_round = play


def _patch_relabel() -> None:
    """After round 0, round 0 again under a new run-id label."""
    honest_play = coordinator.Coordinator._play_round
    replayed: list[int] = []

    def play(self, r):
        honest_play(self, r)
        if r == 0 and not replayed:
            replayed.append(r)
            self.state.next_round = 0
            self.state.run_id = "relabelled-" + self.state.run_id

    coordinator.Coordinator._play_round = play


def _patch_configs(change) -> None:
    honest = coordinator.plan_configs

    def lying(plans, num_clients, *, options=None):
        return tuple(change(c) for c in honest(plans, num_clients, options=options))

    coordinator.plan_configs = lying


def _patch_announced_dp(change) -> None:
    """Sign a round body whose DP parameters differ from what the server itself computes with."""
    _patch_announced_body(lambda body: change(body.dp))


def _patch_announced_body(change) -> None:
    """Sign round bodies changed by `change(body)` (the server itself plays the honest round)."""
    honest = coordinator.Coordinator._body

    def lying(self, *args, **kwargs):
        signed = honest(self, *args, **kwargs)
        body = pb.RoundBody.FromString(signed.body)
        if body.finished:
            return signed
        change(body)
        return self._sign(body)

    coordinator.Coordinator._body = lying


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

        def weak(num_clients, modulus_bits, options=None):
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

        def without_target(self, rs, config, nonce, survivors, record, evaluated_model):
            return honest_evaluate(self, rs, config, nonce, tuple(survivors[1:]), record, evaluated_model)

        coordinator.Coordinator._evaluate = without_target
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

        def blind(config, secagg_round_id, nonce):
            params = honest(config, secagg_round_id, nonce)
            params.max_abs = ((1 << (config.bits - 1)) - 1) // config.num_clients
            return params

        coordinator.secagg_parameters = blind
    elif lie == "huge-noise-survivors":
        _patch_announced_dp(lambda dp: setattr(dp, "min_survivors", 10**6))
    elif lie == "drop-below-noise-survivors":
        coordinator.min_survivors = lambda n, fraction: n
        honest_receive = ServerSession.receive_masked_input
        victim: dict[int, int] = {}

        def receive(self, message):
            # phase 2 only (odd secagg round ids): ignore the first upload, as if that client had dropped
            if self.round_id % 2 == 1 and victim.setdefault(self.round_id, message.client_id) == message.client_id:
                return
            honest_receive(self, message)

        ServerSession.receive_masked_input = receive
        coordinator.Coordinator._check_survivors = lambda self, *args: None  # and skip the honest server's own check
    elif lie == "freeze-and-replay":
        _patch_freeze()
    elif lie == "relabel-and-replay":
        _patch_relabel()
    elif lie == "malformed-round-0":

        def malform(body):
            if body.round_id == 0:
                del body.group_fractions[1:]
            elif body.round_id == 1:
                body.training.model_config_json = "[1, 2"

        _patch_announced_body(malform)
    else:
        raise SystemExit(f"unknown lie {lie!r}; one of {LIES}")


if __name__ == "__main__":
    lie, separator, *server_args = sys.argv[1:]
    if separator != "--":
        raise SystemExit("usage: hostile_server.py LIE -- SERVER-ARGS...")
    install(lie)
    from mrff_secure.app.cli import main

    sys.exit(main(["server", *server_args]))
