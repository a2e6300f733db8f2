"""A client takes the round's lr and decoupled weight decay from the signed body, and refuses malformed ones."""

from __future__ import annotations

import pytest

from client.policy import ClientPolicy
from client.proposal import accepted_spec
from mrff_secure.errors import ConfigError
from mrff_secure.wire.v1 import coordinator_pb2 as pb


def _body(lr: float, weight_decay: float) -> pb.RoundBody:
    body = pb.RoundBody(run_id="r", round_id=0, secure=True, min_group_size=5)
    body.training.CopyFrom(pb.TrainingParameters(local_steps=1, optimizer="adam", lr=lr, weight_decay=weight_decay))
    body.dp.CopyFrom(
        pb.DPParameters(
            mode="distributed",
            clip=1.0,
            noise_multiplier=1.0,
            min_survivors=9,
            mechanism="discrete_gaussian",
            modulus_bits=32,
            count_cap=10,
        )
    )
    return body


def test_the_signed_lr_and_weight_decay_are_what_the_client_trains_with() -> None:
    spec = accepted_spec(_body(0.025, 0.5), ClientPolicy(), user=0)
    assert (spec.lr, spec.weight_decay) == (0.025, 0.5)
    assert accepted_spec(_body(0.1, 0.0), ClientPolicy(), user=0).weight_decay == 0.0  # not announced: none


@pytest.mark.parametrize(
    "lr, weight_decay, needle",
    [
        (0.1, float("nan"), "weight_decay must be a finite number"),
        (0.1, -1.0, "weight_decay must be a finite number >= 0"),
        (float("inf"), 0.0, "lr must be a finite number"),
        (-0.1, 0.0, "lr must be a finite number > 0"),
        (0.5, 2.0, "lr x weight_decay must be below 1"),
    ],
)
def test_a_malformed_lr_or_weight_decay_refuses_the_round(lr, weight_decay, needle) -> None:
    with pytest.raises(ConfigError, match=needle):
        accepted_spec(_body(lr, weight_decay), ClientPolicy(), user=0)
