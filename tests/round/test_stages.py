"""The one stage table: every secure-aggregation stage once, in the state machines' order, each with its own
wire number and name, and the in-memory driver run from it sums exactly."""

from __future__ import annotations

import numpy as np
import pytest

from mrff_secure.errors import ConfigError
from mrff_secure.round.inmemory import run_round
from mrff_secure.round.stages import BY_NAME, BY_WIRE, OUTCOME, STAGES, WIRE_NAMES, delivery_bytes, step_named
from mrff_secure.secagg.config import SecAggConfig
from mrff_secure.secagg.messages import SurvivorList
from mrff_secure.secagg.stages import Stage
from mrff_secure.wire.v1 import coordinator_pb2 as pb


def test_the_table_holds_every_stage_once_in_protocol_order():
    assert [step.stage for step in STAGES] == [s for s in Stage if s not in (Stage.DONE, Stage.ABORTED)]
    assert len(BY_WIRE) == len(BY_NAME) == len(STAGES)
    for step in STAGES:
        assert pb.Stage.Name(step.wire).lower() == step.name == WIRE_NAMES[step.wire]
    assert WIRE_NAMES[OUTCOME] == "outcome" and OUTCOME not in BY_WIRE  # no client message at the outcome
    assert STAGES[0].delivered is None and all(step.delivered is not None for step in STAGES[1:])
    assert [step.close is None for step in STAGES] == [False] * (len(STAGES) - 1) + [True]


def test_a_stage_name_that_does_not_exist_is_named():
    assert step_named("reveal_seed").stage is Stage.REVEAL_SEED
    with pytest.raises(ConfigError, match="unknown stage 'reveal'"):
        step_named("reveal")


def test_a_message_shared_by_several_clients_is_serialized_once():
    shared = SurvivorList(7, (1, 2, 3))
    encoded = delivery_bytes({1: shared, 2: shared, 3: shared})
    assert set(encoded) == {1, 2, 3} and encoded[1] is encoded[2] is encoded[3]
    assert SurvivorList.from_bytes(encoded[1]) == shared


def test_the_in_memory_round_run_from_the_table_sums_exactly_with_a_dropout():
    config = SecAggConfig(num_clients=6, vector_length=20, max_abs=50)
    rng = np.random.default_rng(3)
    inputs = {c: rng.integers(-50, 51, size=20) for c in range(6)}
    result = run_round(config, round_id=1, inputs=inputs, dropouts={Stage.MASKED_INPUT: {4}})
    assert result.survivors == (0, 1, 2, 3, 5)
    assert np.array_equal(result.total, sum(inputs[c] for c in result.survivors))
