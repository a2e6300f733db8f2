"""The stage gate without a network: what a request thread may submit or fetch, and when a stage closes.

The gate is a function of request and state (server/stage_gate.py), so each refusal the gRPC tests
check through a real server is checked here directly, in milliseconds, with real message encodings.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from mrff_secure.round.spec import Phase, RoundSpec
from mrff_secure.secagg import messages, packing, primitives
from mrff_secure.secagg.config import SecAggConfig
from mrff_secure.wire import signing
from mrff_secure.wire.v1 import coordinator_pb2 as pb
from server.errors import (
    BadSignature,
    Malformed,
    NotParticipant,
    Replay,
    ShuttingDown,
    WrongLength,
    WrongRound,
    WrongStage,
)
from server.stage_gate import PhaseState, RoundState, StageGate, Stopped

SPEC = RoundSpec(
    local_steps=1,
    optimizer="adam",
    lr=0.1,
    dp_mode="off",
    clip=1.0,
    noise_multiplier=0.0,
    min_survivors=1,
    min_group_size=5,
    mechanism="discrete_gaussian",
    modulus_bits=32,
    count_cap=65,
)

PARTICIPANTS = (1, 2, 3)
RUN_ID = "run-under-test"
KEYS = {c: primitives.generate_identity_key() for c in (*PARTICIPANTS, 9)}
SESSION_NONCE = b"n" * 16  # the fixture's phase: secagg round 8, this nonce


def _public(client: int) -> bytes:
    return primitives.identity_public_bytes(KEYS[client])


def _submit(
    gate: StageGate,
    client: int,
    round_id: int,
    phase: int,
    stage: int,
    payload: bytes,
    *,
    key=None,
    secagg_round: int = 8,
    nonce: bytes = SESSION_NONCE,
    signature: bytes | None = None,
) -> None:
    """Submit as a client does: signed by its identity key over the stage's context (or as told)."""
    if signature is None:
        signed = signing.stage_payload(RUN_ID, phase, secagg_round, nonce, stage, client, payload)
        signature = primitives.sign(key if key is not None else KEYS[client], signed)
    gate.submit(client, round_id, phase, stage, payload, signature)


def _config() -> SecAggConfig:
    return SecAggConfig(num_clients=len(PARTICIPANTS), vector_length=6, max_abs=100)


def _masked_input(
    client: int, secagg_round: int, config: SecAggConfig, *, length: int | None = None, sender: int | None = None
) -> bytes:
    n = config.vector_length if length is None else length
    values = np.arange(n, dtype=np.uint64) + np.uint64(client)
    return messages.MaskedInput(
        secagg_round, client if sender is None else sender, config.bits, n, packing.pack(values, config.bits)
    ).to_bytes()


@pytest.fixture()
def gate_with_phase():
    """A gate with round 4 open and its counts phase's masked-input stage accepting uploads (plain sum)."""
    gate = StageGate(RUN_ID)
    for c in PARTICIPANTS:
        gate.open_session(c, _public(c))
    rs = RoundState(4, PARTICIPANTS, SPEC, announcement=pb.SignedBody(body=b"r4"))
    gate.begin_round(rs)
    ps = PhaseState(Phase.COUNTS, _config(), secagg_round_id=8, nonce=b"n" * 16)
    gate.open_phase(rs, ps)
    result: dict = {}

    def drive():
        try:
            result["stage"] = gate.run_stage(ps, pb.MASKED_INPUT, set(PARTICIPANTS), timeout=0.6)
        except Stopped:  # the fixture's teardown stops a stage a test left open
            result["stopped"] = True

    driver = threading.Thread(target=drive)
    driver.start()
    deadline = time.monotonic() + 2
    while ps.stage != pb.MASKED_INPUT and time.monotonic() < deadline:
        time.sleep(0.005)
    yield gate, rs, ps, driver, result
    gate.stop()
    driver.join(5)


def test_an_upload_is_taken_once_and_every_misdirected_one_is_refused_by_name(gate_with_phase):
    gate, rs, ps, driver, result = gate_with_phase
    config = ps.config
    _submit(gate, 1, 4, Phase.COUNTS, pb.MASKED_INPUT, _masked_input(1, 8, config))
    assert np.array_equal(ps.plain[1], np.arange(6) + 1)
    refusals = [
        (
            Replay,
            "already answered",
            lambda: _submit(gate, 1, 4, Phase.COUNTS, pb.MASKED_INPUT, _masked_input(1, 8, config)),
        ),
        (WrongRound, "round 5 is not running", lambda: _submit(gate, 2, 5, Phase.COUNTS, pb.MASKED_INPUT, b"")),
        (NotParticipant, "not a participant", lambda: _submit(gate, 9, 4, Phase.COUNTS, pb.MASKED_INPUT, b"")),
        (WrongStage, "phase update is not open", lambda: _submit(gate, 2, 4, Phase.UPDATE, pb.MASKED_INPUT, b"")),
        (WrongStage, "share_keys is not open", lambda: _submit(gate, 2, 4, Phase.COUNTS, pb.SHARE_KEYS, b"")),
        (WrongStage, "takes no client messages", lambda: _submit(gate, 2, 4, Phase.COUNTS, pb.OUTCOME, b"")),
        (Malformed, "does not parse", lambda: _submit(gate, 2, 4, Phase.COUNTS, pb.MASKED_INPUT, b"\x00junk")),
        (
            NotParticipant,
            "in the name of client 3",
            lambda: _submit(gate, 2, 4, Phase.COUNTS, pb.MASKED_INPUT, _masked_input(2, 8, config, sender=3)),
        ),
        (
            WrongRound,
            "secagg round 9",
            lambda: _submit(gate, 2, 4, Phase.COUNTS, pb.MASKED_INPUT, _masked_input(2, 9, config)),
        ),
        (
            WrongLength,
            "expected 6",
            lambda: _submit(gate, 2, 4, Phase.COUNTS, pb.MASKED_INPUT, _masked_input(2, 8, config, length=5)),
        ),
    ]
    for error, words, call in refusals:
        with pytest.raises(error, match=words):
            call()
    assert set(ps.plain) == {1}, "a refused upload must leave nothing behind"


def test_a_stage_closes_at_its_deadline_naming_the_dropouts_and_late_uploads_are_refused(gate_with_phase):
    gate, rs, ps, driver, result = gate_with_phase
    config = ps.config
    _submit(gate, 2, 4, Phase.COUNTS, pb.MASKED_INPUT, _masked_input(2, 8, config))
    _submit(gate, 3, 4, Phase.COUNTS, pb.MASKED_INPUT, _masked_input(3, 8, config))
    driver.join(5)
    received, missing = result["stage"]
    assert received == {2, 3} and missing == [1]
    with pytest.raises(WrongStage, match="none \\(closing\\)"):
        _submit(gate, 1, 4, Phase.COUNTS, pb.MASKED_INPUT, _masked_input(1, 8, config))
    assert set(ps.plain) == {2, 3}
    # the dropout is not sampled again until its next authenticated call
    token = gate.open_session(1, _public(1))
    assert gate.wait_for_clients(3) == [1, 2, 3]
    assert gate.authenticate(1, token) and not gate.authenticate(1, b"x" * 32)


def test_a_stage_with_every_answer_closes_before_its_deadline(gate_with_phase):
    gate, rs, ps, driver, result = gate_with_phase
    started = time.monotonic()
    for c in PARTICIPANTS:
        _submit(gate, c, 4, Phase.COUNTS, pb.MASKED_INPUT, _masked_input(c, 8, ps.config))
    driver.join(5)
    assert time.monotonic() - started < 0.5
    assert result["stage"] == ({1, 2, 3}, [])


def test_fetch_waits_for_the_published_message_and_gives_each_client_only_its_own():
    gate = StageGate(RUN_ID)
    rs = RoundState(0, PARTICIPANTS, SPEC, announcement=pb.SignedBody(body=b"r0"))
    gate.begin_round(rs)
    ps = PhaseState(Phase.UPDATE, _config(), secagg_round_id=1, nonce=b"n" * 16)
    gate.open_phase(rs, ps)
    assert gate.fetch(1, 0, Phase.UPDATE, pb.REVEAL_SEED, wait=0.05) is None  # nothing published yet: waited, None
    got: dict = {}
    reader = threading.Thread(target=lambda: got.update(one=gate.fetch(1, 0, Phase.UPDATE, pb.REVEAL_SEED, wait=5)))
    reader.start()
    time.sleep(0.05)
    stage = threading.Thread(
        target=lambda: gate.run_stage(ps, pb.REVEAL_SEED, {1, 2}, 0.3, outbox={1: b"for one", 2: b"for two"})
    )
    stage.start()
    reader.join(5)
    assert got["one"] == ("payload", b"for one")
    with pytest.raises(NotParticipant, match="no part in stage reveal_seed"):
        gate.fetch(3, 0, Phase.UPDATE, pb.REVEAL_SEED, wait=0.1)
    with pytest.raises(NotParticipant, match="not a participant"):
        gate.fetch(7, 0, Phase.UPDATE, pb.REVEAL_SEED, wait=0.1)
    with pytest.raises(Malformed, match="unknown phase"):
        gate.fetch(1, 0, 99, pb.REVEAL_SEED, wait=0.1)
    stage.join(5)
    outcome = pb.RoundOutcome(round_id=0, completed=True, survivors=2)
    gate.end_round(rs, outcome)
    assert gate.fetch(3, 0, Phase.UPDATE, pb.OUTCOME, wait=0) == ("outcome", outcome)


def test_announcements_reach_waiting_clients_and_the_end_is_seen_by_all():
    gate = StageGate(RUN_ID)
    for c in (1, 2):
        gate.open_session(c, _public(c))
    assert gate.get_round(-1, wait=0.05, client_id=1) is None
    got: dict = {}
    waiter = threading.Thread(target=lambda: got.update(r=gate.get_round(-1, wait=5, client_id=1)))
    waiter.start()
    gate.announce(0, pb.SignedBody(body=b"round 0"))
    waiter.join(5)
    assert got["r"].body == b"round 0"
    assert gate.get_round(0, wait=0.01) is None  # nothing newer than round 0
    gate.announce(1, pb.SignedBody(body=b"end"), finished=True)
    assert gate.get_round(0, wait=0, client_id=1).body == b"end" and not gate.all_saw_finish()
    gate.get_round(0, wait=0, client_id=2)
    assert gate.all_saw_finish()


def test_stop_ends_a_waiting_stage_and_refuses_waiting_requests():
    gate = StageGate(RUN_ID)
    rs = RoundState(0, PARTICIPANTS, SPEC, announcement=pb.SignedBody(body=b"r0"))
    gate.begin_round(rs)
    ps = PhaseState(Phase.COUNTS, _config(), secagg_round_id=0, nonce=b"n" * 16)
    gate.open_phase(rs, ps)
    raised: list = []

    def drive():
        try:
            gate.run_stage(ps, pb.MASKED_INPUT, set(PARTICIPANTS), timeout=30)
        except Stopped as exc:
            raised.append(exc)

    driver = threading.Thread(target=drive)
    driver.start()
    time.sleep(0.05)
    started = time.monotonic()
    gate.stop()
    driver.join(5)
    assert raised and time.monotonic() - started < 1
    with pytest.raises(ShuttingDown):
        gate.get_round(-1, wait=5)


def test_a_stage_message_not_signed_by_the_senders_enrolled_key_is_refused_and_the_stage_goes_on(gate_with_phase):
    gate, rs, ps, driver, result = gate_with_phase
    config = ps.config
    genuine = _masked_input(1, 8, config)
    forged = [
        ("is not signed", dict(signature=b"")),
        ("does not verify", dict(key=KEYS[2])),  # another enrolled client signs in client 1's name
        ("does not verify", dict(key=primitives.generate_identity_key())),  # an outsider's key
        ("does not verify", dict(signature=bytes(64))),
        ("does not verify", dict(secagg_round=9)),  # signed for another session
        ("does not verify", dict(nonce=b"m" * 16)),
    ]
    for words, how in forged:
        with pytest.raises(BadSignature, match=words):
            _submit(gate, 1, 4, Phase.COUNTS, pb.MASKED_INPUT, genuine, **how)
    signature = primitives.sign(
        KEYS[1], signing.stage_payload(RUN_ID, Phase.COUNTS, 8, SESSION_NONCE, pb.MASKED_INPUT, 1, genuine)
    )
    with pytest.raises(BadSignature, match="does not verify"):  # a valid signature over other bytes
        gate.submit(
            1, 4, Phase.COUNTS, pb.MASKED_INPUT, _masked_input(1, 8, config, length=6)[:-1] + b"\x01", signature
        )
    with pytest.raises(BadSignature, match="does not verify"):  # signed for another run
        gate.submit(
            1,
            4,
            Phase.COUNTS,
            pb.MASKED_INPUT,
            genuine,
            primitives.sign(
                KEYS[1], signing.stage_payload("other-run", Phase.COUNTS, 8, SESSION_NONCE, pb.MASKED_INPUT, 1, genuine)
            ),
        )
    assert ps.plain == {} and ps.received == set(), "a forged message must leave nothing behind"
    gate.submit(1, 4, Phase.COUNTS, pb.MASKED_INPUT, genuine, signature)  # the genuine one still goes through
    assert np.array_equal(ps.plain[1], np.arange(6) + 1)
