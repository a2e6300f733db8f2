"""The audit log an auditor can trust: `mrff audit-log verify` tells an intact, signed, finished log from
an empty one, one cut short, one rewritten with its digests recomputed, and one signed by another key,
and says which, in one line (exit 1); a finished run is not resumed onto its log."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from mrff_secure.audit_log import AuditLog, read_records, record_digest, verify
from mrff_secure.errors import CheckpointError

ROOT = Path(__file__).resolve().parents[2]


def _write_run(path: Path, key: Ed25519PrivateKey, rounds: int = 30, finish: bool = True) -> None:
    log = AuditLog(path, key, config_digest="c" * 64)
    log.append({"type": "run_started", "run_id": "r", "settings": {"rounds": rounds}}, sync=True)
    for client in range(3):
        log.append({"type": "enrolled", "client": client})
    for r in range(rounds):
        log.append({"type": "round", "round": r, "epsilon": {"epsilon": 0.5 * (r + 1), "delta": 1e-5}}, sync=True)
    if finish:
        log.append({"type": "run_finished", "rounds": rounds}, sync=True)
    log.close()


def _pem(key: Ed25519PrivateKey, folder: Path) -> Path:
    path = folder / "signing.pub"
    path.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return path


def _verify_cli(run_dir: Path, pub: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "mrff_secure.app.cli",
            "audit-log",
            "verify",
            str(run_dir),
            "--signing-pub",
            str(pub),
            *extra,
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )


@pytest.fixture()
def signed_run(tmp_path):
    key = Ed25519PrivateKey.generate()
    run = tmp_path / "run"
    run.mkdir()
    _write_run(run / "audit.jsonl", key)
    return run, key, _pem(key, tmp_path)


def test_a_finished_signed_log_verifies_and_carries_time_version_and_config(signed_run):
    run, key, pub = signed_run
    report = verify(run / "audit.jsonl", key.public_key())
    assert report.ok and report.status == "ok" and report.finished
    records = read_records(run / "audit.jsonl")
    heads = [r for r in records if r["type"] == "head_signature"]
    assert len(heads) == 32  # after run_started, every round and run_finished; not after enrolments
    assert all(r["config_digest"] == "c" * 64 and r["software"] for r in heads)
    assert all("T" in r["time"] for r in records)
    done = _verify_cli(run, pub)
    assert done.returncode == 0 and done.stdout.startswith("ok:") and "Traceback" not in done.stderr


def test_an_empty_log_is_refused(tmp_path):
    key = Ed25519PrivateKey.generate()
    run = tmp_path / "run"
    run.mkdir()
    (run / "audit.jsonl").write_bytes(b"")
    assert verify(run / "audit.jsonl", key.public_key()).problem.startswith("empty")
    done = _verify_cli(run, _pem(key, tmp_path))
    assert done.returncode == 1 and "empty" in done.stdout and "Traceback" not in done.stderr


def test_a_log_cut_short_by_25_records_is_named_unfinished(signed_run):
    run, key, pub = signed_run
    path = run / "audit.jsonl"
    lines = path.read_bytes().split(b"\n")[:-1]
    path.write_bytes(b"\n".join(lines[:-25]) + b"\n")  # ends with a round record whose signature was cut
    report = verify(path, key.public_key())
    assert (
        not report.ok
        and report.status == "unfinished"
        and "was cut after line 41 (its last signature)" in report.problem
    )
    assert "the last 1 records are not covered by a signature" in report.problem
    done = _verify_cli(run, pub)
    assert done.returncode == 1 and done.stdout.startswith("UNFINISHED") and "cut" in done.stdout
    assert _verify_cli(run, pub, "--allow-unfinished").returncode == 0
    path.write_bytes(b"\n".join(lines[:-26]) + b"\n")  # cut right after that signature: no unsigned tail
    report = verify(path, key.public_key())
    assert (
        report.status == "unfinished" and "cut after line 41" in report.problem and "not covered" not in report.problem
    )


def test_a_rewritten_log_with_recomputed_digests_is_refused(signed_run):
    run, key, pub = signed_run
    path = run / "audit.jsonl"
    prev = "0" * 64
    out = []
    for record in read_records(path):  # every epsilon to 0.1, the chain recomputed: all a forger can do
        record = {k: v for k, v in record.items() if k != "digest"}
        if record["type"] == "round":
            record["epsilon"]["epsilon"] = 0.1
        if record["type"] == "head_signature":
            record["head"] = prev
        record["prev"] = prev
        record["digest"] = record_digest(record)
        prev = record["digest"]
        out.append(json.dumps(record, sort_keys=True, separators=(",", ":")))
    path.write_text("\n".join(out) + "\n")
    report = verify(path, key.public_key())
    assert report.status == "broken" and report.problem.startswith("rewritten")
    done = _verify_cli(run, pub)
    assert done.returncode == 1 and "rewritten" in done.stdout


def test_another_key_is_named(signed_run, tmp_path):
    run, _, _ = signed_run
    other = tmp_path / "other"
    other.mkdir()
    done = _verify_cli(run, _pem(Ed25519PrivateKey.generate(), other))
    assert done.returncode == 1 and "signed by another key" in done.stdout


def test_an_unsigned_log_and_a_missing_key_are_refused(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    _write_run(run / "audit.jsonl", None)  # a log written without a key: a chain anyone could rebuild
    key = Ed25519PrivateKey.generate()
    assert verify(run / "audit.jsonl", key.public_key()).problem.startswith("unsigned")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mrff_secure.app.cli",
            "audit-log",
            "verify",
            str(run),
            "--signing-pub",
            str(tmp_path / "missing.pub"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert done.returncode == 2 and "no signing public key" in done.stderr and "Traceback" not in done.stderr


def test_nothing_is_appended_to_a_finished_log_and_a_torn_line_is_repaired(signed_run):
    run, key, _ = signed_run
    with pytest.raises(CheckpointError, match="finished run"):
        AuditLog(run / "audit.jsonl", key).append({"type": "resumed"})
    fresh = run.parent / "fresh.jsonl"
    _write_run(fresh, key, rounds=2, finish=False)
    with open(fresh, "ab") as handle:
        handle.write(b'{"type": "round", "ro')  # a crash mid-append
    log = AuditLog(fresh, key)
    assert "torn" in log.repaired
    log.append({"type": "run_finished", "rounds": 2}, sync=True)
    log.close()
    assert verify(fresh, key.public_key()).ok
