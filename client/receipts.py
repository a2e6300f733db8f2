"""Receipts of the server's audit-log chain head: evidence a client keeps of what the log said.

Every signed round announcement carries the audit log's chain head as the server saw it when it announced
the round (RoundBody.audit_head: the index of the log's last record and its digest). A client appends each
announcement it verified to STATE_DIR/user-<id>/receipts.jsonl, one JSON line each, with the signed bytes
and the server's signature, so the receipt proves, to anyone holding the server's signing public key, that
the server said "entry `seq` of the log of run `run_id` has digest `digest`".

A log rewritten afterwards by whoever holds the signing key (an entry dropped, participants or epsilon
changed, every digest recomputed and every head re-signed) still verifies on its own, but no longer has that
digest at that index: `mrff audit-log verify --signing-pub KEY --receipts FILE...` (check_receipts) names it.

Line: {"run_id", "round", "audit_seq", "audit_digest" (read from the body, for people), "body" (base64 of
the signed RoundBody bytes), "signature" (hex), "received" (UTC)}. Only "body" and "signature" are trusted.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from google.protobuf.message import DecodeError

from mrff_secure.audit_log import read_records, utc_now
from mrff_secure.errors import AuthenticationError, ConfigError
from mrff_secure.wire import signing
from mrff_secure.wire.v1 import coordinator_pb2 as pb

log = logging.getLogger("mrff.client")

RECEIPTS_FILE = "receipts.jsonl"


def receipts_path(user_folder: Path) -> Path:
    return Path(user_folder) / RECEIPTS_FILE


def record_receipt(user_folder: Path, signed: pb.SignedBody, body: pb.RoundBody) -> bool:
    """Append the audit head of a round announcement we verified (`signed`, parsed as `body`) to the user's
    receipts file; False when the body carries no head (nothing to keep) or the file cannot be written (a
    warning is logged: the client goes on)."""
    if not body.HasField("audit_head"):
        return False
    line = {
        "run_id": body.run_id,
        "round": body.round_id,
        "audit_seq": body.audit_head.seq,
        "audit_digest": body.audit_head.digest,
        "body": base64.b64encode(bytes(signed.body)).decode("ascii"),
        "signature": bytes(signed.signature).hex(),
        "received": utc_now(),
    }
    data = (json.dumps(line, sort_keys=True, separators=(",", ":")) + "\n").encode()
    path = receipts_path(user_folder)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, data)  # one write on an O_APPEND file: the line lands whole after the earlier ones
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        log.warning("cannot append the audit receipt of round %d to %s: %s", body.round_id, path, exc)
        return False
    return True


@dataclass(frozen=True)
class Receipt:
    source: str  # "FILE line N"
    run_id: str
    round_id: int
    seq: int
    digest: str


def read_receipts(path: Path, public_key: Ed25519PublicKey) -> list[Receipt]:
    """The receipts in one file, each checked against the server's signing key. ConfigError naming the file
    and line of one that is not JSON, not a receipt, or not signed by that key; a torn last line (a crash
    mid-append) is skipped."""
    try:
        lines = Path(path).read_bytes().split(b"\n")
    except OSError as exc:
        raise ConfigError(f"cannot read the receipts file {path}: {exc}") from exc
    out = []
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        where = f"{path} line {number}"
        try:
            entry = json.loads(raw)
            signed_body = base64.b64decode(entry["body"], validate=True)
            signature = bytes.fromhex(entry["signature"])
        except (ValueError, KeyError, TypeError, binascii.Error) as exc:
            if number == len(lines):  # no newline after it: a torn append
                continue
            raise ConfigError(f"{where} is not a receipt: {exc}") from exc
        try:
            signing.verify_body(public_key, signed_body, signature)
        except AuthenticationError as exc:
            raise ConfigError(f"{where}: the receipt's signature does not verify under the key given") from exc
        try:
            body = pb.RoundBody.FromString(signed_body)
        except DecodeError as exc:
            raise ConfigError(f"{where}: the signed body is not a round announcement") from exc
        if not body.HasField("audit_head"):
            raise ConfigError(f"{where}: the signed announcement carries no audit-log head")
        out.append(Receipt(where, body.run_id, body.round_id, body.audit_head.seq, body.audit_head.digest))
    return out


def receipt_files(paths: Iterable[Path]) -> list[Path]:
    """Receipts files named directly, or every receipts.jsonl under a folder (a client's STATE_DIR)."""
    out: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(path.rglob(RECEIPTS_FILE))
            if not found:
                raise ConfigError(f"no {RECEIPTS_FILE} under {path}")
            out.extend(found)
        elif path.is_file():
            out.append(path)
        else:
            raise ConfigError(f"no receipts file at {path}")
    return out


@dataclass(frozen=True)
class ReceiptReport:
    ok: bool
    checked: int  # receipts of this run compared with the log
    other_runs: int  # receipts of other runs (skipped)
    problem: str = ""


def check_receipts(log_path: Path, public_key: Ed25519PublicKey, paths: Iterable[Path]) -> ReceiptReport:
    """Every receipt of the log's run must find its digest at its index in the log. Call after
    audit_log.verify said the chain is intact. Not ok: a receipt contradicts the log (naming the index),
    or no receipt is of this log's run."""
    records = read_records(log_path)
    run_id = next((r.get("run_id") for r in records if r.get("type") == "run_started"), None)
    receipts = [receipt for path in receipt_files(paths) for receipt in read_receipts(path, public_key)]
    mine = [receipt for receipt in receipts if receipt.run_id == run_id]
    others = len(receipts) - len(mine)
    if not mine:
        return ReceiptReport(
            False,
            0,
            others,
            f"none of the {len(receipts)} receipts is of the log's run {run_id!r}: they prove nothing about this "
            "log (or its run id was rewritten)",
        )
    for receipt in mine:
        if receipt.seq >= len(records):
            return ReceiptReport(
                False,
                len(mine),
                others,
                f"rewritten: the receipt of round {receipt.round_id} ({receipt.source}) was signed when the log "
                f"had entry {receipt.seq}; the log has only {len(records)} entries",
            )
        found = records[receipt.seq].get("digest")
        if found != receipt.digest:
            return ReceiptReport(
                False,
                len(mine),
                others,
                f"rewritten: entry {receipt.seq} (line {receipt.seq + 1}) of the log has digest {found}, but the "
                f"server signed digest {receipt.digest} for it (receipt of round {receipt.round_id}, {receipt.source})",
            )
    return ReceiptReport(True, len(mine), others)
