"""W20 and W19 of the audit log.

W20: the signing key's holder can rewrite a finished log (drop an entry, change participants and epsilon,
recompute every digest, re-sign every head) and it verifies on its own: that is the documented limit. Each
client keeps receipts of the signed chain heads it was announced (client/receipts.py); with them
`mrff audit-log verify --receipts` names the rewritten entry. Verification uses only the key the user gives.

W19: refused calls are aggregated per kind and window, so a flood of them writes a bounded number of
records whose counts add up to the number of refused calls.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from client.receipts import check_receipts, read_receipts, receipts_path, record_receipt
from mrff_secure.app.cli import main
from mrff_secure.audit_log import HEAD, AuditLog, head_message, read_records, record_digest, verify
from mrff_secure.errors import ConfigError
from mrff_secure.wire import signing
from mrff_secure.wire.v1 import coordinator_pb2 as pb

ROOT = Path(__file__).resolve().parents[2]
ROUNDS = 4


def _announce(log: AuditLog, key: Ed25519PrivateKey, round_id: int, participants: list[int]) -> pb.SignedBody:
    """A round announcement as the coordinator signs it, carrying the log's chain head."""
    seq, digest = log.head()
    body = pb.RoundBody(run_id="run-1", round_id=round_id, participants=participants)
    body.audit_head.CopyFrom(pb.AuditHead(seq=seq, digest=digest))
    data = body.SerializeToString()
    return pb.SignedBody(body=data, signature=signing.sign_body(key, data))


def _run_with_receipts(run: Path, state: Path, key: Ed25519PrivateKey) -> None:
    """A finished run of ROUNDS rounds; clients 0 and 1 keep a receipt of every announcement."""
    log = AuditLog(run / "audit.jsonl", key, config_digest="c" * 64)
    log.append({"type": "run_started", "run_id": "run-1"}, sync=True)
    for client in (0, 1, 2):
        log.append({"type": "enrolled", "client": client})
    for r in range(ROUNDS):
        signed = _announce(log, key, r, [0, 1, 2])
        for client in (0, 1):
            assert record_receipt(state / f"user-{client}", signed, pb.RoundBody.FromString(signed.body))
        log.append({"type": "round", "round": r, "participants": [0, 1, 2], "epsilon": {"epsilon": 0.5 * (r + 1)}})
    log.append({"type": "run_finished", "rounds": ROUNDS}, sync=True)
    log.close()


def _rewrite(path: Path, key: Ed25519PrivateKey, *, drop_type: str, change) -> None:
    """What the signing key's holder can do: drop the first record of `drop_type`, change others with
    `change`, renumber, recompute the chain and re-sign every head."""
    records = [{k: v for k, v in r.items() if k not in ("digest",)} for r in read_records(path)]
    dropped = next(i for i, r in enumerate(records) if r["type"] == drop_type)
    kept = records[:dropped] + records[dropped + 1 :]
    if kept[dropped]["type"] == HEAD:  # its head signature goes too
        del kept[dropped]
    prev, out, digests = "0" * 64, [], []
    for seq, record in enumerate(kept):
        change(record)
        record["seq"], record["prev"] = seq, prev
        if record["type"] == HEAD:
            record["covers_seq"] = seq - 1
            record["head"] = digests[seq - 1]
            record["signature"] = key.sign(head_message(seq - 1, digests[seq - 1])).hex()
        record["digest"] = record_digest(record)
        prev = record["digest"]
        digests.append(prev)
        out.append(json.dumps(record, sort_keys=True, separators=(",", ":")))
    path.write_text("\n".join(out) + "\n")


def _pem(key: Ed25519PrivateKey, path: Path) -> Path:
    path.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return path


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mrff_secure.app.cli", "audit-log", "verify", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )


def _fewer_participants_and_epsilon(record: dict) -> None:
    if record["type"] == "round":
        record["participants"] = [0, 1]
        record["epsilon"] = {"epsilon": 0.01}


def test_a_log_rewritten_by_the_key_holder_verifies_alone_and_is_caught_by_any_clients_receipt(tmp_path):
    key = Ed25519PrivateKey.generate()
    run, state = tmp_path / "run", tmp_path / "state"
    run.mkdir()
    _run_with_receipts(run, state, key)
    pub = _pem(key, tmp_path / "signing.pub")
    log_path = run / "audit.jsonl"
    assert check_receipts(log_path, key.public_key(), [state]).ok  # the honest log agrees with every receipt
    assert main(["audit-log", "verify", str(run), "--signing-pub", str(pub), "--receipts", str(state)]) == 0
    receipts = read_receipts(receipts_path(state / "user-0"), key.public_key())
    assert [r.round_id for r in receipts] == list(range(ROUNDS))

    _rewrite(log_path, key, drop_type="enrolled", change=_fewer_participants_and_epsilon)
    assert verify(log_path, key.public_key()).ok  # the documented limit: alone, the rewrite verifies
    alone = _cli(str(run), "--signing-pub", str(pub))
    assert alone.returncode == 0 and "no client receipts checked" in alone.stdout, alone.stdout
    first = receipts[0]  # round 0 was announced when the log ended at entry 3 (the third enrolment)
    for receipt_file in (receipts_path(state / "user-0"), receipts_path(state / "user-1")):  # either client's
        caught = _cli(str(run), "--signing-pub", str(pub), "--receipts", str(receipt_file))
        assert caught.returncode == 1, caught.stdout
        assert caught.stdout.startswith("BROKEN") and f"entry {first.seq} " in caught.stdout, caught.stdout
        assert "rewritten" in caught.stdout and "receipt of round 0" in caught.stdout


def test_only_an_epsilon_changed_after_the_last_receipt_is_caught_by_the_end_of_run_receipt(tmp_path):
    key = Ed25519PrivateKey.generate()
    run, state = tmp_path / "run", tmp_path / "state"
    run.mkdir()
    log = AuditLog(run / "audit.jsonl", key)
    log.append({"type": "run_started", "run_id": "run-1"}, sync=True)
    log.append({"type": "round", "round": 0, "epsilon": {"epsilon": 2.0}}, sync=True)
    finished = _announce(log, key, 1, [])  # the end-of-run announcement, after the last round's record
    record_receipt(state / "user-0", finished, pb.RoundBody.FromString(finished.body))
    log.append({"type": "run_finished", "rounds": 1}, sync=True)
    log.close()

    def lower_epsilon(record: dict) -> None:
        if record["type"] == "round":
            record["epsilon"] = {"epsilon": 0.5}

    records = read_records(run / "audit.jsonl")
    records.insert(1, {"type": "placeholder"})  # _rewrite drops it again: nothing but epsilon changes
    (run / "audit.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    _rewrite(run / "audit.jsonl", key, drop_type="placeholder", change=lower_epsilon)
    assert verify(run / "audit.jsonl", key.public_key()).ok
    report = check_receipts(run / "audit.jsonl", key.public_key(), [state])
    assert not report.ok and report.problem.startswith("rewritten: entry 3 ")  # the head signed after round 0


def test_receipts_are_checked_against_the_given_key_and_the_runs_id(tmp_path):
    key = Ed25519PrivateKey.generate()
    run, state = tmp_path / "run", tmp_path / "state"
    run.mkdir()
    _run_with_receipts(run, state, key)
    other = Ed25519PrivateKey.generate()
    with pytest.raises(ConfigError, match="line 1: the receipt's signature does not verify"):
        check_receipts(run / "audit.jsonl", other.public_key(), [state / "user-0" / "receipts.jsonl"])
    foreign = tmp_path / "foreign" / "user-0"
    log = AuditLog(tmp_path / "other.jsonl", key)
    log.append({"type": "run_started", "run_id": "run-2"}, sync=True)
    signed = _announce(log, key, 0, [0])
    body = pb.RoundBody.FromString(signed.body)
    body.run_id = "run-2"
    data = body.SerializeToString()
    record_receipt(foreign, pb.SignedBody(body=data, signature=signing.sign_body(key, data)), body)
    report = check_receipts(run / "audit.jsonl", key.public_key(), [foreign])
    assert not report.ok and "none of the 1 receipts is of the log's run 'run-1'" in report.problem
    assert not record_receipt(tmp_path / "x", signed, pb.RoundBody(run_id="run-1"))  # no head: nothing kept


def test_verify_uses_only_a_key_the_user_gives_never_one_from_the_run_folder(tmp_path):
    forger = Ed25519PrivateKey.generate()
    run = tmp_path / "run"
    (run / "certs").mkdir(parents=True)
    log = AuditLog(run / "audit.jsonl", forger)  # a log forged under another key, its key beside it
    log.append({"type": "run_started", "run_id": "forged"}, sync=True)
    log.append({"type": "run_finished", "rounds": 0}, sync=True)
    log.close()
    _pem(forger, run / "certs" / "signing.pub")
    done = _cli(str(run))
    assert done.returncode == 2 and "pass --signing-pub FILE" in done.stderr and "out of band" in done.stderr
    assert "Traceback" not in done.stderr and not done.stdout
    trusted = _pem(Ed25519PrivateKey.generate(), tmp_path / "trusted.pub")
    assert _cli(str(run), "--signing-pub", str(trusted)).returncode == 1  # signed by another key


def test_ten_thousand_refused_calls_write_a_bounded_number_of_records_whose_counts_add_up(tmp_path):
    key = Ed25519PrivateKey.generate()
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, key, refusal_window_s=3600.0)
    log.append({"type": "run_started", "run_id": "r"}, sync=True)
    size_before = path.stat().st_size
    calls = 10_000
    for i in range(calls):
        # one flooding client with a few kinds of refusal whose reasons carry varying numbers, and spoofed ids
        record = {
            "type": "rejected",
            "client": 7 if i % 2 else i,
            "method": ("Submit", "Enrol", "Fetch")[i % 3],
            "status": "INVALID_ARGUMENT",
            "reason": f"message of {i} bytes exceeds the limit of 1048576",
            "round": None,
        }
        log.record_refusal(record)
    log.close()  # flushes the pending counts
    assert verify(path).ok
    rejected = [r for r in read_records(path) if r["type"] == "rejected"]
    assert sum(r["count"] for r in rejected) == calls
    assert len(rejected) <= 2 * (256 + 1)  # at most one first and one aggregate record per kind (and overflow)
    grown = path.stat().st_size - size_before
    assert grown < 200_000, grown  # instead of about 3.5 MB at one ~350-byte record per call


def test_refusal_windows_end_and_a_signed_record_covers_the_counts_so_far(tmp_path):
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, Ed25519PrivateKey.generate(), refusal_window_s=0.2)
    refusal = {"type": "rejected", "client": 3, "method": "Submit", "status": "UNAUTHENTICATED", "reason": "x"}
    for _ in range(5):
        log.record_refusal(dict(refusal))
    log.append({"type": "round", "round": 0}, sync=True)  # the 4 suppressed are written before it
    records = read_records(path)
    assert [r.get("count") for r in records if r["type"] == "rejected"] == [1, 4]
    assert records[-2]["type"] == "round" and records[-1]["type"] == HEAD
    import time

    time.sleep(0.3)
    for _ in range(3):  # a new window: its first refusal is written at once again
        log.record_refusal(dict(refusal))
    log.close()
    counts = [r.get("count") for r in read_records(path) if r["type"] == "rejected"]
    assert counts == [1, 4, 1, 2] and sum(counts) == 8
