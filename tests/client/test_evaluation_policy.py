"""What a client sends to a federated evaluation (`ClientPolicy.check_evaluation`, `announced_evaluation_release`):
its scores only into a noisy evaluation, at most max_evaluations times, never when opted out; exact (DP off)
only if allow_exact_evaluation; and the release it accounts is built from the round's public parameters."""

import pytest

from client.policy import ClientPolicy
from client.proposal import announced_evaluation_release
from mrff_secure.round.spec import RoundSpec
from mrff_secure.secagg.policy import PolicyViolation
from mrff_secure.wire.v1 import coordinator_pb2 as pb


def test_scores_go_only_where_the_policy_allows():
    policy = ClientPolicy()
    assert policy.max_evaluations == 5 and not policy.allow_exact_evaluation
    policy.check_evaluation(noisy=True, scored=4)
    with pytest.raises(PolicyViolation, match="max_evaluations"):
        policy.check_evaluation(noisy=True, scored=5)
    with pytest.raises(PolicyViolation, match="allow_exact_evaluation"):
        policy.check_evaluation(noisy=False, scored=0)
    with pytest.raises(Exception, match="allow_exact_evaluation"):  # weaker than the safe defaults
        ClientPolicy(allow_exact_evaluation=True)
    ClientPolicy(allow_exact_evaluation=True, accept_weaker=True).check_evaluation(noisy=False, scored=0)
    with pytest.raises(PolicyViolation, match="join_evaluation"):
        ClientPolicy(join_evaluation=False).check_evaluation(noisy=True, scored=0)
    assert ClientPolicy.from_dict({"max_evaluations": 0}).to_dict()["max_evaluations"] == 0
    with pytest.raises(Exception, match="max_evaluations"):
        ClientPolicy(max_evaluations=-1)


def test_the_release_to_account_is_the_rounds_own():
    spec = RoundSpec(
        local_steps=1,
        optimizer="adam",
        lr=0.1,
        dp_mode="distributed",
        clip=1.0,
        noise_multiplier=0.7,
        min_survivors=6,
        min_group_size=5,
        mechanism="skellam",
        modulus_bits=40,
        count_cap=4,
    )
    body = pb.RoundBody(round_id=3, participants=list(range(8)))
    assert announced_evaluation_release(body, spec) is None  # no evaluation announced
    body.evaluation_secagg.CopyFrom(pb.SecAggParameters(modulus_bits=40, num_clients=8))
    release = announced_evaluation_release(body, spec)
    assert release is not None and release.noisy
    assert (release.mechanism, release.noise_multiplier, release.n_min, release.participants) == ("skellam", 0.7, 6, 8)
    body.evaluation_secagg.modulus_bits = 20
    with pytest.raises(PolicyViolation, match="modulus"):
        announced_evaluation_release(body, spec)
