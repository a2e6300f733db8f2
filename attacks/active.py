"""The malicious-server cells of the grid: active attacks against the real client code.

Each attack plays a lying server (alone, or with colluding clients) against real `ClientSession`s in
one in-memory round (`attacks.protocol_round.Round`: every message through its wire encoding) and
reports `refused` (the client raised the typed error that names the problem, before revealing what the
attack wanted) or `leaked` (the client answered). They are a summary for the audit: the full hostile
suite, one test per weakness, is tests/secagg/test_secagg_hostile.py and tests/network.

The model-inconsistency attack (Pasquini et al., CCS 2022) runs the network client's own secure-sum code
(`client.secure_sums.SecureSums.run`, one thread per client) against an in-memory server: the server
announces one model to the target and a crafted one to everyone else, inside one secure sum. It is refused
because a client's session is bound to the whole round body it accepted (W21: its digest is in the session
context every signature, commitment and the graph seed cover, and in the key bundle and participant entry),
so that clients holding different rounds cannot finish one sum together; its control (`bind_round_body=False`,
the client as it was before W21) leaks.

The clients hold `DEFAULT_POLICY` (c_max = 2 corrupt neighbours, at least 8 survivors to unmask), as
a network client's policy file would set it; a weaker policy passed in shows that the checks are
what stops the attacks (the tests' control: the same attacks then leak).
"""

from __future__ import annotations

import secrets
import threading
from dataclasses import dataclass, replace
from typing import Any, cast

import numpy as np
import torch

from attacks.protocol_round import Round
from client.policy import ClientPolicy
from client.round_calls import RoundCalls, RoundFailed
from client.secure_sums import SecureSums
from mrff_secure.errors import AggregationAborted, SecAggError
from mrff_secure.round.encoding import decode_sum, plan_configs, secure_round_plans
from mrff_secure.round.inmemory import make_identities, wire
from mrff_secure.round.participant import rotation_seed
from mrff_secure.round.spec import Phase
from mrff_secure.round.stages import BY_WIRE, STAGES, delivery_bytes
from mrff_secure.secagg.config import SecAggConfig
from mrff_secure.secagg.context import NONCE_BYTES, SessionContext
from mrff_secure.secagg.identity import verify_credential
from mrff_secure.secagg.messages import AdvertiseKeys, SeedReveal, SurvivorList, UnmaskRequest
from mrff_secure.secagg.policy import SecAggPolicy
from mrff_secure.secagg.server import AggregateResult, ServerSession
from mrff_secure.secagg.stages import Stage
from mrff_secure.wire import tensors
from mrff_secure.wire.v1 import coordinator_pb2 as pb
from server.coordinator import secagg_parameters

CLIENTS, NEIGHBOURS, LENGTH, MAX_ABS = 12, 6, 32, 1000
TARGET = 5
DEFAULT_POLICY = SecAggPolicy(min_survivors=8)


def _config(**changes: int) -> SecAggConfig:
    return SecAggConfig(
        **{**dict(num_clients=CLIENTS, vector_length=LENGTH, max_abs=MAX_ABS, num_neighbours=NEIGHBOURS), **changes}
    )


def _masked(round_id: int, policy: SecAggPolicy) -> Round:
    rng = np.random.default_rng(round_id)
    inputs = {c: rng.integers(-MAX_ABS, MAX_ABS + 1, LENGTH) for c in range(CLIENTS)}
    return Round(_config(), range(CLIENTS), round_id=round_id, policy=policy).until_masked(inputs)


def _weak_threshold(policy: SecAggPolicy) -> object:
    """Announce t = 4 with k = 6: two colluding neighbours could unmask a client by a split view."""
    config = _config(threshold=4)
    return make_identities([TARGET]).session(config, SessionContext.fresh(round_id=1), TARGET, policy)


def _both_shares(policy: SecAggPolicy) -> object:
    """Ask a neighbour of the target for both the self-mask share and the key share of the target."""
    r = _masked(2, policy)
    everyone = tuple(range(CLIENTS))
    listed = SurvivorList(r.round_id, everyone)
    signatures = {c: r.clients[c].consistency_check(listed) for c in everyone}
    asked = r.server.graph[TARGET][0]
    neighbours = r.server.graph[asked]
    request = UnmaskRequest(
        r.round_id, asked, tuple(v for v in neighbours), (TARGET,), tuple(signatures[v] for v in neighbours)
    )
    return r.clients[asked].unmask(wire(request))


def _few_survivors(policy: SecAggPolicy) -> object:
    """Ask the target to help unmask a sum over 7 survivors (the target and its neighbours only, as if the
    rest had dropped), below the default policy's floor of 8."""
    r = _masked(3, policy)
    keep = tuple(sorted(set(r.server.graph[TARGET]) | {TARGET}))
    return r.clients[TARGET].consistency_check(SurvivorList(r.round_id, keep))


def _stale_bundle(policy: SecAggPolicy) -> None:
    """Replay the target's key bundle from another session (another nonce), relabelled to this round: its
    signature binds the session, so it does not verify (checked here where the server admits it; the
    neighbours' own check is in tests/secagg, W11)."""
    r = Round(_config(), range(CLIENTS), round_id=4, policy=policy)
    other = replace(r.context, nonce=bytes(32))
    stale = replace(r.session(TARGET, context=other).advertise_keys(), round_id=r.round_id)
    r.server.receive_advertise_keys(wire(stale))


def _list_without_the_client(policy: SecAggPolicy) -> object:
    """A survivor list that omits the client it is shown to (a split view's first step)."""
    r = _masked(5, policy)
    return r.clients[TARGET].consistency_check(
        SurvivorList(r.round_id, tuple(c for c in range(CLIENTS) if c != TARGET))
    )


# ------------------------------------------------------------------ model inconsistency (Pasquini et al. 2022)
MODEL_INCONSISTENCY = "model inconsistency: another model to the target inside one sum (Pasquini et al.)"
UPDATE_LENGTH = 24  # the update vector's length in the model-inconsistency round (DP off: exact sums)
WAIT_S = 20.0  # a stage that never completes (a client refused) ends the sum after this long


class _LyingServerSession(ServerSession):
    """The attacker's server session: it admits every certified key bundle and every graph-seed reveal without
    checking them against the session (it would not refuse its own lie); only the clients check each other's."""

    def receive_advertise_keys(self, message: AdvertiseKeys) -> None:
        self._expect(Stage.ADVERTISE_KEYS, message)
        self._identities[message.client_id] = verify_credential(
            self._authority, message.credential, client_id=message.client_id
        )
        self._bundles[message.client_id] = message

    def receive_seed_reveal(self, message: SeedReveal) -> None:
        self._expect(Stage.REVEAL_SEED, message)
        self._reveals[message.client_id] = message.reveal


@dataclass
class _Delivery:
    payload: bytes


class ClientsRefused(AggregationAborted):
    """The sum never finished because clients refused it; `evidence`: their refusal lines."""

    def __init__(self, message: str, evidence: list[str]) -> None:
        super().__init__(message)
        self.evidence = evidence


class _UnboundSums(SecureSums):
    """The control: the network client as it was before W21, its sessions bound to the run, phase, round and nonce
    only (every body gets the same all-zero round-body digest), so rounds that differ elsewhere share one session."""

    @staticmethod
    def session_context(body: pb.RoundBody, phase: Phase, params: pb.SecAggParameters) -> SessionContext:
        context = SecureSums.session_context(body, phase, params)
        return replace(context, round_body_digest=bytes(len(context.round_body_digest)))


class _InMemorySum:
    """The server side of one secure sum for the network client's `SecureSums.run`: its `calls.fetch` and
    `calls.submit`, in memory, with a `ServerSession` (here the attacker's). Every message goes through its byte
    encoding; a stage closes when every client it was delivered to has answered; a client that fails ends the sum
    for everyone."""

    def __init__(self, server: ServerSession, participants: tuple[int, ...]) -> None:
        self.server = server
        self.condition = threading.Condition()
        self.expected: dict[int, set[int]] = {STAGES[0].wire: set(participants)}
        self.answered: dict[int, set[int]] = {step.wire: set() for step in STAGES}
        self.delivered: dict[int, dict[int, bytes]] = {}
        self.result: AggregateResult | None = None
        self.failure: str | None = None
        self.refusals: dict[int, str] = {}  # user -> what its own client code said when it stopped

    def fail(self, reason: str, user: int | None = None) -> None:
        with self.condition:
            self.failure = self.failure or reason
            if user is not None:
                self.refusals[user] = reason
            self.condition.notify_all()

    def calls(self, user: int) -> RoundCalls:
        outer = self

        class Calls:
            def fetch(self, body: pb.RoundBody, phase: Phase, wire_stage: int) -> _Delivery:
                with outer.condition:  # a delivery already made is handed over (its client judges it itself)
                    outer.condition.wait_for(
                        lambda: outer.failure is not None or user in outer.delivered.get(wire_stage, {}), WAIT_S
                    )
                    delivered = outer.delivered.get(wire_stage, {})
                    if user not in delivered:
                        raise AggregationAborted(outer.failure or f"stage {wire_stage} never reached user {user}")
                    return _Delivery(delivered[user])

            def submit(self, body: pb.RoundBody, phase: Phase, wire_stage: int, reply: Any) -> None:
                outer.receive(user, wire_stage, reply)

        return cast(RoundCalls, Calls())

    def receive(self, user: int, wire_stage: int, reply: Any) -> None:
        step = BY_WIRE[wire_stage]
        with self.condition:
            try:
                step.receive(self.server, wire(reply))
                self.answered[wire_stage].add(user)
                if self.answered[wire_stage] != self.expected[wire_stage]:
                    return
                if step.close is None:
                    self.result = self.server.finish()
                else:
                    deliveries = delivery_bytes(step.close(self.server))
                    following = STAGES[STAGES.index(step) + 1].wire
                    self.delivered[following] = deliveries
                    self.expected[following] = set(deliveries)
            except SecAggError as exc:
                self.failure = self.failure or f"the server: {type(exc).__name__}: {exc}"
            self.condition.notify_all()


def _model_inconsistency(policy: SecAggPolicy, *, bind_round_body: bool = True) -> dict[str, Any]:
    """The server sends the target the real model and every other client a crafted one whose update is zero (a
    model with dead units, Pasquini et al. CCS 2022), all inside one secure sum of the update phase: the sum would
    be the target's update alone. Each client runs the network client's own secure-sum code on the round body it
    was sent (signed bodies of the same run, round and session, differing in their model and its digest). The
    clients refuse (W21: each session is bound to the round body its client accepted): `ClientsRefused`, with the
    target's refusal line and another client's. If the sessions finished together: leaked, with the evidence.

    `bind_round_body=False` (the control): the clients as they were before W21 (`_UnboundSums`, sessions bound
    to the run, phase, round and nonce only): the sum finishes and is the target's update alone."""
    n = CLIENTS
    client_policy = ClientPolicy(
        min_participants=policy.min_participants,
        min_neighbours=policy.min_neighbours,
        corrupt_neighbours=policy.corrupt_neighbours,
        min_survivors=policy.min_survivors,
        corrupt_fraction=policy.corrupt_fraction,
        security_bits=policy.security_bits,
        accept_weaker=True,  # only the secure-aggregation part of the policy is used here
    )
    plans = secure_round_plans(
        delta_size=UPDATE_LENGTH - 1,
        num_blocks=0,
        num_groups=0,
        dp_mode="off",
        mechanism=None,
        clip=1.0,
        noise_multiplier=0.0,
        n_clients=n,
        n_min=1,
        modulus_bits=32,
        count_cap=1,
    )
    config = plan_configs(plans, n)[1]
    run_id, round_id, sid, nonce = "pasquini-run", 0, 1, secrets.token_bytes(NONCE_BYTES)
    generator = torch.Generator().manual_seed(0)
    models = {  # what the server sends: the real model to the target, a crafted one to the others
        "target": {"w": torch.randn(4, 4, generator=generator)},
        "crafted": {"w": torch.zeros(4, 4)},
    }
    bodies = {}
    for name, params in models.items():
        body = pb.RoundBody(run_id=run_id, round_id=round_id, secure=True, participants=range(n))
        body.parameters.extend(tensors.to_proto(params))
        body.model_digest = tensors.digest(params)
        body.update_secagg.CopyFrom(secagg_parameters(config, sid, nonce))
        bodies[name] = body
    rng = np.random.default_rng(5)
    target_update = np.clip(rng.normal(0.0, 0.1, plans.size), -0.2, 0.2)
    target_update[-1] = 1.0  # the example count's slot
    identities = make_identities(range(n))
    sums_class = SecureSums if bind_round_body else _UnboundSums
    server = _LyingServerSession(  # its own session: the one the majority's round body gives (it admits any bundle)
        config,
        context=sums_class.session_context(bodies["crafted"], Phase.UPDATE, bodies["crafted"].update_secagg),
        authority_public_key=identities.authority_public_key,
        participants=range(n),
    )
    exchange = _InMemorySum(server, tuple(range(n)))
    crashes: dict[int, BaseException] = {}  # not a refusal: the attack itself is broken, and says so

    def play(user: int) -> None:
        body = bodies["target" if user == TARGET else "crafted"]
        update = target_update if user == TARGET else np.zeros(plans.size)  # the crafted model's update is zero
        sums = sums_class(
            user,
            exchange.calls(user),
            identity_key=identities.keys[user],
            credential=identities.credentials[user],
            authority_public_key=identities.authority_public_key,
            policy=client_policy,
            insecure_seed=None,
        )
        try:
            sums.run(
                body,
                Phase.UPDATE,
                body.update_secagg,
                sums.upload(plans, Phase.UPDATE, update, body),
                plans,
                on_release=lambda phase, session: None,
            )
        except RoundFailed as exc:
            exchange.fail(f"user {user}: {exc}", user)
        except Exception as exc:  # noqa: BLE001 - raised again below, in the caller's thread
            crashes[user] = exc
            exchange.fail(f"user {user} crashed: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=play, args=(user,), daemon=True) for user in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT_S * len(STAGES))
    if crashes:
        user = min(crashes)
        raise RuntimeError(f"the model-inconsistency attack broke in user {user}'s thread") from crashes[user]
    if exchange.result is None:  # the target's own refusal, and another client's: each says why it stopped
        others = sorted(u for u in exchange.refusals if u != TARGET)
        evidence = [exchange.refusals[u] for u in ([TARGET] if TARGET in exchange.refusals else []) + others[:1]]
        raise ClientsRefused(evidence[0] if evidence else exchange.failure or "the secure sum did not finish", evidence)
    decoded = decode_sum(
        plans.update,
        exchange.result.ring_sum,
        survivors=len(exchange.result.survivors),
        rotation_seed=rotation_seed(0, round_id, Phase.UPDATE),
    )
    error = float(np.max(np.abs(decoded - target_update)))
    digests = {name: bytes(body.model_digest).hex()[:16] for name, body in bodies.items()}
    return {
        "evidence": [
            f"the target (user {TARGET}) was sent model {digests['target']}..., the other {n - 1} clients model "
            f"{digests['crafted']}...; all {len(exchange.result.survivors)} finished one secure sum together (a "
            "session bound to run, phase, round and nonce, not to the round body it was sent)",
            f"the unmasked sum is the target's update alone: largest difference {error:.3g} over {plans.size} "
            "coordinates (DP off; under distributed DP it carries every participant's noise share, which the "
            "target's ledger accounts, but no other client's update hides it)",
        ],
        "max_abs_error": error,
    }


ACTIVE_ATTACKS = {
    "weak threshold (2t - k <= c_max)": _weak_threshold,
    "both shares of one client requested": _both_shares,
    "unmask below the survivor floor": _few_survivors,
    "key bundle replayed from another session": _stale_bundle,
    "survivor list that omits the client (split view)": _list_without_the_client,
    MODEL_INCONSISTENCY: _model_inconsistency,
}


def run_active_attacks(policy: SecAggPolicy = DEFAULT_POLICY) -> dict:
    """Every active attack: {name: {"outcome": "refused" | "leaked", "error": ..., "evidence": [...] when an
    attack says what it obtained}} and a verdict."""
    results: dict[str, dict[str, Any]] = {}
    for name, attack in ACTIVE_ATTACKS.items():
        try:
            obtained = attack(policy)
        except SecAggError as exc:
            results[name] = {"outcome": "refused", "error": f"{type(exc).__name__}: {exc}"}
            if isinstance(exc, ClientsRefused):  # the clients' own refusal lines
                results[name]["evidence"] = exc.evidence
        else:
            results[name] = {"outcome": "leaked", "error": None}
            if isinstance(obtained, dict) and "evidence" in obtained:
                results[name]["evidence"] = obtained["evidence"]
    leaked = [n for n, r in results.items() if r["outcome"] == "leaked"]
    return {
        "threat_model": "malicious-server",
        "attacks": results,
        "verdict": "holds" if not leaked else "fails",
        "leaked": leaked,
        "see": "tests/secagg/test_secagg_hostile.py, tests/network/test_malicious_server.py",
    }
