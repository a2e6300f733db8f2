"""The client's own privacy ledger (client/ledger.py): every release written before it leaves, one release per
input, the epsilon cap, the bound on aborted sessions, honest-share accounting, survival across restarts, and
a property test: whatever a server does, the ledger is never below the epsilon of what was actually sent."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from client.ledger import ClientLedger, LedgerRefusal
from mrff_secure.errors import CheckpointError
from mrff_secure.round.accountant import RoundAccountant
from mrff_secure.round.release import RoundRelease

DELTA = 1e-5


def release(z: float = 2.0, *, colluding: int = 2, n_min: int = 8, participants: int = 10) -> RoundRelease:
    return RoundRelease(
        dp_mode="distributed",
        secure_aggregation=True,
        clip=1.0,
        noise_multiplier=z,
        num_blocks=2,
        num_groups=4,
        delta_size=300,
        participants=participants,
        n_min=n_min,
        mechanism="discrete_gaussian",
        modulus_bits=32,
        count_cap=10,
        colluding_survivors=colluding,
    )


def ledger(tmp_path, *, cap: float = 10.0, aborted: int = 2) -> ClientLedger:
    return ClientLedger(tmp_path / "ledger.json", user=3, delta=DELTA, max_epsilon=cap, max_aborted_sessions=aborted)


def play(book: ClientLedger, run: str, r: int, rel: RoundRelease, *, session: str = "s") -> None:
    book.begin_session(run, r, (rel,))
    book.record_release(run, r, "counts", f"{session}-c", rel.phase("counts"))
    book.record_release(run, r, "update", f"{session}-u", rel.phase("update"))


def test_every_release_is_on_disk_before_it_is_sent_and_survives_a_restart(tmp_path):
    book = ledger(tmp_path)
    rel = release()
    book.begin_session("run-a", 0, (rel,))
    book.record_release("run-a", 0, "counts", "0:ab", rel.phase("counts"))
    after_counts = book.epsilon()
    assert after_counts > 0
    reopened = ledger(tmp_path)  # a restarted client reads the same budget
    assert reopened.epsilon() == after_counts and len(reopened.entries) == 1
    reopened.record_release("run-a", 0, "update", "1:cd", rel.phase("update"))
    # both phases recorded apart cost exactly what the whole round costs
    whole = RoundAccountant(delta=DELTA)
    whole.step(release=rel)
    assert reopened.epsilon() == pytest.approx(whole.epsilon(), rel=1e-9)
    state = json.loads((tmp_path / "ledger.json").read_text())
    assert [e["phase"] for e in state["releases"]] == ["counts", "update"]
    assert state["epsilon"] == pytest.approx(reopened.epsilon())


def test_a_round_already_released_is_never_released_again(tmp_path):
    book = ledger(tmp_path)
    rel = release()
    book.begin_session("run-a", 0, (rel,))
    book.record_release("run-a", 0, "counts", "0:ab", rel.phase("counts"))
    spent = book.epsilon()
    with pytest.raises(LedgerRefusal, match="already released its counts"):
        book.begin_session("run-a", 0, (rel,))  # the server "aborted" and replays the round
    with pytest.raises(LedgerRefusal, match="already released"):
        book.record_release("run-a", 0, "counts", "2:ef", rel.phase("counts"))
    assert book.epsilon() == spent and len(book.entries) == 1
    # after a restart too
    with pytest.raises(LedgerRefusal, match="already released"):
        ledger(tmp_path).begin_session("run-a", 0, (rel,))


def test_the_cap_refuses_a_round_before_anything_is_sent(tmp_path):
    rel = release(z=1.0)
    rounds = RoundAccountant(delta=DELTA)
    two, three = [rounds.step(release=rel) for _ in range(3)][1:]
    cap = (two + three) / 2  # room for two rounds, not three
    book = ledger(tmp_path, cap=cap)
    play(book, "run-a", 0, rel)
    play(book, "run-a", 1, rel)
    spent = book.epsilon()
    with pytest.raises(LedgerRefusal, match="past its cap"):
        book.begin_session("run-a", 2, (rel,))
    with pytest.raises(LedgerRefusal, match="past its cap"):  # a new run label spends the same data: refused too
        book.begin_session("run-b", 0, (rel,))
    assert book.epsilon() == spent <= cap and len(book.entries) == 4


def test_noiseless_releases_are_refused_by_any_finite_cap(tmp_path):
    book = ledger(tmp_path)
    with pytest.raises(LedgerRefusal, match="inf"):
        book.begin_session("run-a", 0, (release(z=0.0),))
    assert book.entries == []


def test_aborted_sessions_of_a_round_are_bounded(tmp_path):
    book = ledger(tmp_path, aborted=2)
    rel = release()
    for _ in range(3):  # two aborted before anything was sent, then a third try
        book.begin_session("run-a", 0, (rel,))
    with pytest.raises(LedgerRefusal, match="max_aborted_sessions=2"):
        book.begin_session("run-a", 0, (rel,))
    with pytest.raises(LedgerRefusal, match="max_aborted_sessions=2"):
        ledger(tmp_path, aborted=2).begin_session("run-a", 0, (rel,))  # the count survives a restart
    book.begin_session("run-a", 1, (rel,))  # another round is unaffected


def test_colluding_survivors_cost_the_noise_they_know():
    honest_only = RoundAccountant(delta=DELTA)
    honest_only.step(release=release(colluding=2, n_min=4))
    all_counted = RoundAccountant(delta=DELTA)
    all_counted.step(release=release(colluding=0, n_min=4))
    assert honest_only.epsilon() > 1.3 * all_counted.epsilon()
    none_left = RoundAccountant(delta=DELTA)
    none_left.step(release=release(colluding=4, n_min=4))
    assert math.isinf(none_left.epsilon())


@pytest.mark.parametrize(
    "text, needle",
    [
        ("{not json", "damaged or unreadable"),
        (json.dumps({"format": "mrff-client-ledger", "version": 1, "user": 4, "releases": [], "inputs": []}), "user 4"),
        (json.dumps({"format": "other"}), "not a mrff-client-ledger"),
    ],
)
def test_a_damaged_ledger_stops_the_client_by_name(tmp_path, text, needle):
    (tmp_path / "ledger.json").write_text(text)
    with pytest.raises(CheckpointError, match=needle):
        ledger(tmp_path)


# One server action per step: announce round r of a run (the client plays as far as the server lets it),
# where the session stops (before anything is sent, after the counts, after the update).
ACTIONS = st.lists(
    st.tuples(st.sampled_from(["run-a", "run-b"]), st.integers(0, 3), st.sampled_from(["none", "counts", "update"])),
    max_size=25,
)


@settings(max_examples=60, deadline=None)
@given(actions=ACTIONS, z=st.sampled_from([0.7, 1.5, 4.0]))
def test_the_ledger_is_never_below_what_was_actually_sent(tmp_path_factory, actions, z):
    folder = tmp_path_factory.mktemp("ledger")
    book = ClientLedger(folder / "ledger.json", user=3, delta=DELTA, max_epsilon=12.0, max_aborted_sessions=2)
    rel = release(z=z)
    sent: list[RoundRelease] = []  # what left the client, by the worker's own order of calls
    for i, (run, r, stops_after) in enumerate(actions):
        try:
            book.begin_session(run, r, (rel,))
            for phase in ("counts", "update"):
                book.record_release(run, r, phase, f"{i}-{phase}", rel.phase(phase))
                sent.append(rel.phase(phase))
                if stops_after == phase:
                    break
        except LedgerRefusal:
            pass
        if i % 7 == 6:
            book = ClientLedger(folder / "ledger.json", user=3, delta=DELTA, max_epsilon=12.0, max_aborted_sessions=2)
    truth = RoundAccountant(delta=DELTA)
    for item in sent:
        truth.step(release=item)
    assert book.epsilon() >= truth.epsilon() - 1e-9
    assert book.epsilon() <= 12.0
    rounds = [(e.run_id, e.round_id, e.phase) for e in book.entries]
    assert len(rounds) == len(set(rounds))  # no phase of a round released twice
