"""The malicious-server cells of the grid: active attacks against the real client code.

Each attack plays a lying server (alone, or with colluding clients) against real `ClientSession`s in
one in-memory round (`attacks.protocol_round.Round`: every message through its wire encoding) and
reports `refused` (the client raised the typed error that names the problem, before revealing what the
attack wanted) or `leaked` (the client answered). They are a summary for the audit: the full hostile
suite, one test per weakness, is tests/secagg/test_secagg_hostile.py and tests/network.

The clients hold `DEFAULT_POLICY` (c_max = 2 corrupt neighbours, at least 8 survivors to unmask), as
a network client's policy file would set it; a weaker policy passed in shows that the checks are
what stops the attacks (the tests' control: the same attacks then leak).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from attacks.protocol_round import Round
from mrff_secure.errors import SecAggError
from mrff_secure.round.inmemory import make_identities, wire
from mrff_secure.secagg.config import SecAggConfig
from mrff_secure.secagg.context import SessionContext
from mrff_secure.secagg.messages import SurvivorList, UnmaskRequest
from mrff_secure.secagg.policy import SecAggPolicy

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


ACTIVE_ATTACKS = {
    "weak threshold (2t - k <= c_max)": _weak_threshold,
    "both shares of one client requested": _both_shares,
    "unmask below the survivor floor": _few_survivors,
    "key bundle replayed from another session": _stale_bundle,
    "survivor list that omits the client (split view)": _list_without_the_client,
}


def run_active_attacks(policy: SecAggPolicy = DEFAULT_POLICY) -> dict:
    """Every active attack: {name: {"outcome": "refused" | "leaked", "error": ...}} and a verdict."""
    results: dict[str, dict[str, str | None]] = {}
    for name, attack in ACTIVE_ATTACKS.items():
        try:
            attack(policy)
        except SecAggError as exc:
            results[name] = {"outcome": "refused", "error": f"{type(exc).__name__}: {exc}"}
        else:
            results[name] = {"outcome": "leaked", "error": None}
    leaked = [n for n, r in results.items() if r["outcome"] == "leaked"]
    return {
        "threat_model": "malicious-server",
        "attacks": results,
        "verdict": "holds" if not leaked else "fails",
        "leaked": leaked,
        "see": "tests/secagg/test_secagg_hostile.py, tests/network/test_malicious_server.py",
    }
