"""Unit tests of the audit log, the server checkpoint and the client's private store (no network)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from client.process import parse_pause, parse_users  # parse_users: mrff_secure.checks, used by the client
from client.state import UserStore
from mrff_secure.audit_log import AuditLog, read_records, verify
from mrff_secure.errors import CheckpointError, ConfigError
from server import checkpoint


def write_log(path, n=4):
    log = AuditLog(path)
    for i in range(n):
        log.append({"type": "round", "round": i, "model_digest": f"{i:064x}"}, sync=True)
    log.close()


def test_audit_chain_verifies_and_links(tmp_path) -> None:
    path = tmp_path / "audit.jsonl"
    write_log(path)
    report = verify(path)
    assert report.ok and report.records == 4
    records = read_records(path)
    assert records[0]["prev"] == "0" * 64
    assert all(b["prev"] == a["digest"] for a, b in zip(records, records[1:]))


@pytest.mark.parametrize("damage", ["edit", "delete", "swap", "insert"])
def test_audit_tampering_is_detected(tmp_path, damage) -> None:
    path = tmp_path / "audit.jsonl"
    write_log(path)
    lines = path.read_text().splitlines()
    if damage == "edit":
        lines[1] = lines[1].replace('"round":1', '"round":7')
    elif damage == "delete":
        del lines[2]
    elif damage == "swap":
        lines[1], lines[2] = lines[2], lines[1]
    else:
        lines.insert(2, lines[1])
    path.write_text("\n".join(lines) + "\n")
    report = verify(path)
    assert not report.ok and report.problem


def test_audit_log_verify_command(tmp_path, capsys) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from mrff_secure.app.cli import main

    key = Ed25519PrivateKey.generate()
    pub = tmp_path / "signing.pub"
    pub.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, key)
    for i in range(3):
        log.append({"type": "round", "round": i}, sync=True)
    log.append({"type": "run_finished", "rounds": 3}, sync=True)
    log.close()
    assert main(["audit-log", "verify", str(tmp_path), "--signing-pub", str(pub)]) == 0
    assert capsys.readouterr().out.startswith("ok: 8 records")
    path.write_text(path.read_text().replace('"round":1', '"round":7'))
    assert main(["audit-log", "verify", str(tmp_path), "--signing-pub", str(pub)]) == 1
    out = capsys.readouterr().out
    assert "BROKEN" in out and "line 3" in out


def test_torn_last_line_is_cut_on_reopen_and_noted(tmp_path) -> None:
    path = tmp_path / "audit.jsonl"
    write_log(path, 3)
    with open(path, "ab") as handle:
        handle.write(b'{"type":"round","rou')  # a crash mid-append
    assert verify(path).torn_tail
    log = AuditLog(path)
    assert log.repaired
    log.append({"type": "resumed", "repaired": log.repaired}, sync=True)
    log.close()
    assert verify(path).ok and verify(path).records == 4


def test_damaged_audit_log_is_refused_on_open(tmp_path) -> None:
    path = tmp_path / "audit.jsonl"
    write_log(path, 3)
    path.write_text(path.read_text().replace('"round":1', '"round":2'))
    with pytest.raises(CheckpointError):
        AuditLog(path)


def test_checkpoint_round_trip_and_corruption(tmp_path) -> None:
    params = {"a": torch.randn(3, 4), "b": torch.randn(5)}
    checkpoint.save(tmp_path, params, {"next_round": 3})
    loaded, meta = checkpoint.load(tmp_path)
    assert meta["next_round"] == 3 and list(loaded) == ["a", "b"]
    assert all(torch.equal(loaded[k], params[k]) for k in params)
    assert not list(tmp_path.glob(".*tmp"))  # atomic write left no temporary file
    data = (tmp_path / checkpoint.FILENAME).read_bytes()
    (tmp_path / checkpoint.FILENAME).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt"):
        checkpoint.load(tmp_path)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        checkpoint.load(tmp_path / "missing")


def test_checkpoint_refuses_pickled_objects(tmp_path) -> None:
    np.savez(tmp_path / checkpoint.FILENAME, __meta__=np.array([{"x": 1}], dtype=object))
    with pytest.raises(CheckpointError):
        checkpoint.load(tmp_path)


def test_user_store_commits_only_completed_rounds(tmp_path) -> None:
    store = UserStore(tmp_path, 3)
    key = store.identity_key()
    assert store.identity_key().private_bytes_raw() == key.private_bytes_raw()  # stable across restarts
    template = {"user.vector": ((4,), torch.float32)}
    assert store.load_private(template) is None
    store.save_pending(0, {"user.vector": torch.ones(4)})
    assert store.commit(0)
    assert torch.equal(store.load_private(template)["user.vector"], torch.ones(4))
    store.save_pending(1, {"user.vector": torch.full((4,), 2.0)})
    store.resolve(last_completed_round=0)  # round 1 never completed: discarded
    assert store.pending_round() is None
    assert torch.equal(store.load_private(template)["user.vector"], torch.ones(4))
    store.save_pending(2, {"user.vector": torch.full((4,), 3.0)})
    store.resolve(last_completed_round=2)  # completed while we were away: committed
    assert torch.equal(store.load_private(template)["user.vector"], torch.full((4,), 3.0))
    with pytest.raises(CheckpointError):
        store.load_private({"user.vector": ((5,), torch.float32)})
    store.private_path.write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match="corrupt"):
        store.load_private(template)


def test_cli_value_parsing() -> None:
    assert parse_users("0-3,7") == [0, 1, 2, 3, 7]
    assert parse_pause("1:update:share_keys") == (1, 2, 2)
    for bad in ("", "5-2", "a-b", "-1"):
        with pytest.raises(ConfigError):
            parse_users(bad)
    with pytest.raises(ConfigError):
        parse_pause("1:updates:share_keys")


def test_server_command_refuses_bad_run_folders(tmp_path, certs, capsys) -> None:
    from mrff_secure.app.cli import main

    base = ["--certs", str(certs), "--synthetic-users", "8", "--maxlen", "10", "--attribute-dim", "4"]
    assert main(["server", "--run-dir", str(tmp_path / "nothing"), "--resume", "--certs", str(certs)]) == 2
    assert "cannot resume" in capsys.readouterr().err
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.npz").write_bytes(b"x")
    assert main(["server", "--run-dir", str(run)] + base) == 2
    assert "already holds a run" in capsys.readouterr().err
    (run / "config.toml").write_text("[data]\nsynthetic_users = 8\nmaxlen = 10\n[model]\nattribute_dim = 4\n")
    # a corrupt checkpoint is a runtime failure (exit 1), named in one line
    assert main(["server", "--run-dir", str(run), "--resume", "--address", "127.0.0.1:0", "--certs", str(certs)]) == 1
    err = capsys.readouterr().err
    assert "corrupt" in err.strip().splitlines()[-1] and "Traceback" not in err
    (run / "checkpoint.npz").write_bytes(b"")  # empty: once an EOFError traceback
    assert main(["server", "--run-dir", str(run), "--resume", "--address", "127.0.0.1:0", "--certs", str(certs)]) == 1
    assert "empty, cut short or corrupt" in capsys.readouterr().err
    # a resumed run keeps its own configuration: a run setting on the command line is refused, naming it
    assert main(["server", "--run-dir", str(run), "--resume"] + base) == 2
    assert "drop --synthetic-users, --maxlen, --attribute-dim" in capsys.readouterr().err
