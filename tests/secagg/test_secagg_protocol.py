"""The full round: exact sums, dropouts at every stage, thresholds, and mask uniformity."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from attacks.protocol_round import Round
from mrff_secure.errors import AggregationAborted, ProtocolViolation
from mrff_secure.round.inmemory import make_identities, run_round, simulation_policy, wire
from mrff_secure.secagg import packing
from mrff_secure.secagg.client import ClientSession
from mrff_secure.secagg.config import MAX_MODULUS_BITS, SecAggConfig, required_modulus_bits
from mrff_secure.secagg.context import SessionContext
from mrff_secure.secagg.encoding import from_ring, to_ring
from mrff_secure.secagg.messages import MaskedInput, ParticipantSet
from mrff_secure.secagg.server import ServerSession
from mrff_secure.secagg.stages import Stage


def _inputs(n: int, d: int, max_abs: int, seed: int = 0) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {c: rng.integers(-max_abs, max_abs + 1, d) for c in range(n)}


@settings(max_examples=15, deadline=None)
@given(n=st.integers(3, 12), d=st.integers(1, 16), log_max=st.integers(0, 30), data=st.data())
def test_secure_sum_equals_plain_sum(n, d, log_max, data):
    k = data.draw(st.integers(2, n - 1))
    max_abs = 2**log_max
    # short vectors keep up to 40 guard bits (config.guard_bits): skip those no 62-bit ring can hold
    assume(required_modulus_bits(n, max_abs, vector_length=d) <= MAX_MODULUS_BITS)
    config = SecAggConfig(num_clients=n, vector_length=d, max_abs=max_abs, num_neighbours=k)
    ids = sorted(data.draw(st.sets(st.integers(0, 2**31 - 3), min_size=n, max_size=n)))
    values = data.draw(st.lists(st.integers(-max_abs, max_abs), min_size=n * d, max_size=n * d))
    inputs = {c: np.array(values[i * d : (i + 1) * d], dtype=np.int64) for i, c in enumerate(ids)}
    result = run_round(config, round_id=data.draw(st.integers(0, 2**64 - 1)), inputs=inputs)
    plain = np.sum(np.stack(list(inputs.values())), axis=0)
    assert np.array_equal(result.total, plain)
    modular = np.bitwise_and(sum(to_ring(v, config.bits) for v in inputs.values()), (1 << config.bits) - 1)
    assert np.array_equal(result.ring_sum, modular)
    assert result.survivors == tuple(ids)


def test_wide_modulus_uses_uint64_words():
    config = SecAggConfig(num_clients=5, vector_length=8, max_abs=2**50)
    assert config.bits == 59  # 5 x 2^50 x 2^5 guard bits (5 x 8 coordinates >= 40) < 2^58
    inputs = _inputs(5, 8, 2**50)
    assert np.array_equal(run_round(config, round_id=2, inputs=inputs).total, sum(inputs.values()))


@pytest.mark.parametrize(
    "stage", [Stage.ADVERTISE_KEYS, Stage.SHARE_KEYS, Stage.MASKED_INPUT, Stage.CONSISTENCY_CHECK, Stage.UNMASK]
)
def test_dropouts_at_each_stage(stage):
    n, d = 14, 20
    config = SecAggConfig(num_clients=n, vector_length=d, max_abs=1000, num_neighbours=8, threshold=5)
    inputs = _inputs(n, d, 1000, seed=stage.value)
    dropped = {2, 9}
    result = run_round(config, round_id=11, inputs=inputs, dropouts={stage: dropped})
    in_sum = [c for c in range(n) if stage.value > Stage.MASKED_INPUT.value or c not in dropped]
    assert result.survivors == tuple(in_sum)
    assert np.array_equal(result.total, sum(inputs[c] for c in in_sum))


def test_a_dropout_at_reveal_seed_aborts_cleanly():
    config = SecAggConfig(num_clients=10, vector_length=5, max_abs=50)
    with pytest.raises(AggregationAborted, match=r"participants \[3\] did not reveal their graph seed"):
        run_round(config, round_id=4, inputs=_inputs(10, 5, 50), dropouts={Stage.REVEAL_SEED: {3}})
    # stage by stage: the server aborts before any graph or share exists, and refuses everything after
    r = Round(config, range(10), round_id=4)
    participants = r.advertise()
    for c in range(10):
        if c != 3:
            r.server.receive_seed_reveal(wire(r.clients[c].reveal_seed(participants)))
    with pytest.raises(AggregationAborted, match="did not reveal"):
        r.server.close_reveal_seed()
    assert r.server.stage is Stage.ABORTED and r.server.graph == {}
    late = r.clients[3].reveal_seed(participants)
    for refused in (
        lambda: r.server.receive_seed_reveal(late),
        r.server.close_reveal_seed,
        r.server.close_share_keys,
        r.server.finish,
    ):
        with pytest.raises(ProtocolViolation, match="server is in stage ABORTED"):
            refused()
    # the clients revealed nothing but their bundles and graph-seed openings: none has shared a key
    assert all(client.stage is Stage.SHARE_KEYS and client.neighbours == () for client in r.clients.values())


@pytest.mark.parametrize("stage", [Stage.SHARE_KEYS, Stage.MASKED_INPUT, Stage.CONSISTENCY_CHECK, Stage.UNMASK])
def test_one_dropout_at_each_stage_from_share_keys_on_with_the_default_threshold(stage):
    """Default k = 6 and t = 5 (the threshold stays below k): one neighbour of client 0 falls silent at
    each stage from SHARE_KEYS on, and the survivors' sum is exact (the dropped client is in it iff it
    uploaded)."""
    n, d = 12, 7
    config = SecAggConfig(num_clients=n, vector_length=d, max_abs=1000, num_neighbours=6)
    assert (config.k, config.t) == (6, 5)
    inputs = _inputs(n, d, 1000, seed=40 + stage.value)
    dropped = []

    def schedule(graph):
        dropped.append(graph[0][0])
        return {stage: {graph[0][0]}}

    result = run_round(config, round_id=40, inputs=inputs, dropouts=schedule)
    uploaded = stage.value > Stage.MASKED_INPUT.value
    assert result.survivors == tuple(c for c in range(n) if uploaded or c != dropped[0])
    assert np.array_equal(result.total, sum(inputs[c] for c in result.survivors))


def test_dropouts_spread_over_all_stages():
    n, d = 20, 10
    config = SecAggConfig(num_clients=n, vector_length=d, max_abs=50, num_neighbours=10, threshold=6)
    inputs = _inputs(n, d, 50, seed=5)
    schedule = {
        Stage.ADVERTISE_KEYS: {0},
        Stage.SHARE_KEYS: {5},
        Stage.MASKED_INPUT: {10},
        Stage.CONSISTENCY_CHECK: {15},
        Stage.UNMASK: {19},
    }
    result = run_round(config, round_id=12, inputs=inputs, dropouts=schedule)
    expected = [c for c in range(n) if c not in {0, 5, 10}]
    assert result.survivors == tuple(expected)
    assert np.array_equal(result.total, sum(inputs[c] for c in expected))


# --- just enough / one too many --------------------------------------------------------

N, K = 12, 4  # t = 3 (c_max = 1): a client can lose k - t = 1 neighbour
TARGET = 0


def _drop_neighbours(stage: Stage, how_many: int):
    def schedule(graph):
        return {stage: set(graph[TARGET][:how_many])}

    return schedule


@pytest.mark.parametrize("stage", [Stage.SHARE_KEYS, Stage.MASKED_INPUT, Stage.CONSISTENCY_CHECK, Stage.UNMASK])
def test_just_enough_neighbours_survive(stage):
    config = SecAggConfig(num_clients=N, vector_length=6, max_abs=100, num_neighbours=K, threshold=3)
    assert config.t == 3
    inputs = _inputs(N, 6, 100, seed=21)
    result = run_round(config, round_id=21, inputs=inputs, dropouts=_drop_neighbours(stage, K - config.t))
    assert TARGET in result.survivors
    assert np.array_equal(result.total, sum(inputs[c] for c in result.survivors))


@pytest.mark.parametrize("stage", [Stage.SHARE_KEYS, Stage.MASKED_INPUT, Stage.CONSISTENCY_CHECK, Stage.UNMASK])
def test_one_too_many_dropouts_abort(stage):
    config = SecAggConfig(num_clients=N, vector_length=6, max_abs=100, num_neighbours=K, threshold=3)
    inputs = _inputs(N, 6, 100, seed=22)
    with pytest.raises(AggregationAborted):
        run_round(config, round_id=22, inputs=inputs, dropouts=_drop_neighbours(stage, K - config.t + 1))


def test_too_few_clients_abort_before_anything_is_shared():
    config = SecAggConfig(num_clients=10, vector_length=3, max_abs=10, num_neighbours=6, threshold=4)
    inputs = _inputs(10, 3, 10)
    with pytest.raises(AggregationAborted, match="advertised"):
        run_round(config, round_id=1, inputs=inputs, dropouts={Stage.ADVERTISE_KEYS: set(range(6))})


def test_aborted_server_returns_nothing():
    config = SecAggConfig(num_clients=N, vector_length=6, max_abs=100, num_neighbours=K)
    identities = make_identities(list(range(N)))
    server = ServerSession(
        config, context=SessionContext.fresh(round_id=1), authority_public_key=identities.authority_public_key
    )
    with pytest.raises(AggregationAborted):
        server.close_advertise_keys()
    assert server.stage is Stage.ABORTED
    with pytest.raises(ProtocolViolation):
        server.finish()


# --- stage machine ----------------------------------------------------------------------


def test_client_rejects_out_of_order_calls_and_stays_aborted():
    config = SecAggConfig(num_clients=5, vector_length=3, max_abs=10)
    identities = make_identities(list(range(5)))
    client = identities.session(config, SessionContext.fresh(round_id=1), 0, simulation_policy(config))
    with pytest.raises(ProtocolViolation, match="expected UNMASK"):
        client.unmask(None)  # type: ignore[arg-type]
    assert client.stage is Stage.ADVERTISE_KEYS  # an out-of-order call changes nothing
    client.advertise_keys()
    with pytest.raises(ProtocolViolation, match="ADVERTISE_KEYS"):
        client.advertise_keys()
    with pytest.raises(ProtocolViolation):
        client.reveal_seed(ParticipantSet(2, ()))  # wrong round
    assert client.stage is Stage.ABORTED
    with pytest.raises(ProtocolViolation, match="ABORTED"):
        client.reveal_seed(ParticipantSet(1, ()))


def test_client_refuses_a_credential_for_another_key_or_id():
    config = SecAggConfig(num_clients=5, vector_length=3, max_abs=10)
    identities = make_identities(list(range(5)))
    context = SessionContext.fresh(round_id=1)
    from mrff_secure.errors import ConfigError

    with pytest.raises(ConfigError, match="another identity key|not the authority"):
        ClientSession(
            config,
            context=context,
            client_id=0,
            identity_key=identities.keys[1],
            credential=identities.credentials[0],
            authority_public_key=identities.authority_public_key,
        )
    with pytest.raises(ConfigError, match="not the authority"):
        ClientSession(
            config,
            context=context,
            client_id=0,
            identity_key=identities.keys[0],
            credential=identities.credentials[1],
            authority_public_key=identities.authority_public_key,
        )


def test_server_ignores_bad_client_messages_and_goes_on():
    n = 6
    config = SecAggConfig(num_clients=n, vector_length=4, max_abs=10)
    r = Round(config, range(n), round_id=3)
    adverts = [c.advertise_keys() for c in r.clients.values()]
    for a in adverts:
        r.server.receive_advertise_keys(a)
    with pytest.raises(ProtocolViolation, match="already"):
        r.server.receive_advertise_keys(adverts[0])
    r.participants = r.server.close_advertise_keys()
    r.reveal()
    r.share()
    masked = [c.masked_input(r.deliveries[c.client_id], np.arange(4)) for c in r.clients.values()]
    with pytest.raises(ProtocolViolation, match="expected 4 of"):
        r.server.receive_masked_input(
            MaskedInput(3, 0, config.bits, 3, packing.pack(np.zeros(3, np.uint64), config.bits))
        )
    with pytest.raises(ProtocolViolation):
        r.server.receive_masked_input(MaskedInput(3, 0, config.bits, 4, b"\x00"))
    for m in masked:
        r.server.receive_masked_input(wire(m))
    assert np.array_equal(r.finish_honestly().total, n * np.arange(4))


# --- what the server sees ---------------------------------------------------------------


@pytest.mark.parametrize("bits", [16, 20, 32])
def test_masked_vector_is_uniform(bits):
    """One client's upload, for an all-zero input, passes a chi-square test over its bytes."""
    n, d = 8, 4096
    config = SecAggConfig(num_clients=n, vector_length=d, max_abs=1, modulus_bits=bits)
    r = Round(config, range(n), round_id=9)
    r.advertise()
    r.reveal()
    clients, deliveries = r.clients, r.share()
    upload = clients[0].masked_input(deliveries[0], np.zeros(d, dtype=np.int64))
    assert len(upload.payload) * 8 == d * bits  # bits per value = the modulus width
    data = np.frombuffer(upload.payload, dtype=np.uint8)
    counts = np.bincount(data, minlength=256)
    expected = data.size / 256
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 330.5, chi2  # 255 degrees of freedom, p = 0.001
    values = from_ring(packing.unpack(upload.payload, bits, d), bits)
    assert np.count_nonzero(values == 0) < 20  # the zero input does not show through
