"""The audit log: hash-chained JSON records whose chain head the server signs.

record = {...fields, "time": UTC ISO 8601, "seq": n, "prev": digest of record n-1 (64 zero hex digits
for the first)}; digest = SHA-256 of the canonical JSON (sorted keys, no spaces) of the record
without "digest", stored as "digest". Changing, removing, reordering or inserting a line breaks the
chain. A chain alone has no key, so anyone can rewrite a log and recompute every digest: after every
run start, resume, round (completed or aborted) and run end the server appends a `head_signature`
record, its Ed25519 signature (the server's signing key, `mrff certs`' signing.key) over
(SIGNATURE_DOMAIN, covers_seq, head digest), with the software version and the configuration digest.

`verify(path, public_key)` names what it finds, from the key the verifier trusts (never one stored in
the run folder):
- broken: an empty log, a line that is not JSON, a broken chain, an altered record, a signature that
  does not verify ("signed by another key" when not even the first does; "rewritten" when a later one
  fails);
- unfinished: intact and signed, but the log does not end with a signed run_finished: the run did not
  finish, or the log was cut after its last signature (records after it are named as unsigned);
- ok: intact, signed through a run_finished record.
Appends are flushed (and fsynced for the records that get a signature).

Refused calls are aggregated (`record_refusal`), so a flood of them cannot grow the log without bound:
the first refusal of a kind (client, method, status, reason) in a window of
`refusal_window_s` is written at once with "count": 1; further ones of that kind in the window are
counted and written as one record ("aggregated": true, "count": how many) when the window ends, before
the next signed record, and at close. At most `MAX_REFUSAL_KINDS` kinds per window; refusals of any
further kind are counted together under one "overflow" record. Summing "count" over the rejected records
gives the number of refused calls.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from mrff_secure.errors import CheckpointError

GENESIS = "0" * 64
SIGNATURE_DOMAIN = b"mrff-secure/v1/audit-head\x00"
SIGNED_TYPES = ("run_started", "resumed", "round", "round_aborted", "run_finished")
HEAD = "head_signature"
REFUSAL_WINDOW_S = 60.0
MAX_REFUSAL_KINDS = 256  # distinct refusal kinds per window before they are counted together


def refusal_kind(record: dict[str, Any]) -> tuple[Any, ...]:
    """What refusals are aggregated by: client, method, status and reason."""
    return (record.get("client"), record.get("method"), record.get("status"), str(record.get("reason", ""))[:500])


@dataclass
class _RefusalWindow:
    first: dict[str, Any]  # the record written at once
    started: str  # UTC time of the first refusal
    ends: float  # monotonic time the window closes
    suppressed: int = 0  # refusals of this kind since, not yet written
    last: str = ""


def record_digest(record: dict[str, Any]) -> str:
    body = {k: v for k, v in record.items() if k != "digest"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def head_message(covers_seq: int, head: str) -> bytes:
    return SIGNATURE_DOMAIN + int(covers_seq).to_bytes(8, "big") + bytes.fromhex(head)


def software_version() -> str:
    from mrff_secure import __version__

    return __version__


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class VerifyReport:
    ok: bool  # intact, signed, and finished (status "ok")
    records: int  # complete records whose chain is intact
    last_digest: str
    problem: str = ""
    torn_tail: bool = False  # the last line is incomplete (a crash mid-append)
    status: str = "ok"  # ok | unfinished | broken
    signed_through: int = -1  # the last record a valid signature covers
    finished: bool = False


def _broken(
    records: int, prev: str, problem: str, *, torn_tail: bool = False, signed_through: int = -1
) -> VerifyReport:
    return VerifyReport(
        False, records, prev, problem, torn_tail=torn_tail, status="broken", signed_through=signed_through
    )


def verify(path: Path, public_key: Ed25519PublicKey | None = None) -> VerifyReport:
    """Check the chain and, with `public_key`, every head signature (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        return _broken(0, GENESIS, f"{path} does not exist")
    lines = path.read_bytes().split(b"\n")
    torn = bool(lines and lines[-1])  # bytes after the last newline
    complete = lines[:-1]
    if not complete:
        return _broken(0, GENESIS, "empty: the log holds no complete record", torn_tail=torn)
    prev = GENESIS
    records: list[dict[str, Any]] = []
    for number, raw in enumerate(complete, start=1):
        try:
            record = json.loads(raw)
        except ValueError:
            return _broken(number - 1, prev, f"line {number} is not JSON")
        if not isinstance(record, dict):
            return _broken(number - 1, prev, f"line {number} is not a JSON object")
        if record.get("seq") != number - 1:
            return _broken(number - 1, prev, f"line {number} has seq {record.get('seq')!r}, expected {number - 1}")
        if record.get("prev") != prev:
            return _broken(number - 1, prev, f"line {number} does not link to the previous record")
        if record.get("digest") != record_digest(record):
            return _broken(number - 1, prev, f"line {number} was altered (digest mismatch)")
        prev = record["digest"]
        records.append(record)
    count = len(records)
    if torn:
        return _broken(count, prev, f"line {count + 1} is incomplete (torn write)", torn_tail=True)
    if public_key is None:
        return VerifyReport(True, count, prev, "chain intact (signatures not checked: no key given)")
    signed_through, valid, last_head = -1, 0, -1
    for record in records:
        if record.get("type") != HEAD:
            continue
        seq, head = record.get("covers_seq"), record.get("head")
        try:
            if not (
                isinstance(seq, int)
                and 0 <= seq < record["seq"]
                and isinstance(head, str)
                and len(head) == 64
                and records[seq]["digest"] == head
            ):
                raise InvalidSignature
            public_key.verify(bytes.fromhex(str(record.get("signature", ""))), head_message(seq, head))
        except (InvalidSignature, ValueError):
            what = (
                "signed by another key (no signature verifies under the key given)"
                if valid == 0
                else f"rewritten: the signature of line {record['seq'] + 1} does not verify (the log is intact "
                f"and signed through line {signed_through + 1})"
            )
            return _broken(count, prev, what, signed_through=signed_through)
        valid += 1
        signed_through, last_head = max(signed_through, seq), record["seq"]
    if valid == 0:
        return _broken(count, prev, "unsigned: no head signature in the log", signed_through=-1)
    finished = any(r.get("type") == "run_finished" for r in records[: signed_through + 1])
    unsigned = [r for r in records[signed_through + 1 :] if r.get("type") != HEAD]
    if finished and not unsigned:
        return VerifyReport(True, count, prev, status="ok", signed_through=signed_through, finished=True)
    tail = f"; the last {len(unsigned)} records are not covered by a signature" if unsigned else ""
    what = (
        "records after the signed end of the run"
        if finished
        else f"incomplete: no signed run_finished record: the run did not finish, or the log was cut after "
        f"line {last_head + 1} (its last signature){tail}"
    )
    return VerifyReport(
        False,
        count,
        prev,
        what,
        status="broken" if finished else "unfinished",
        signed_through=signed_through,
        finished=finished,
    )


class AuditLog:
    """Append-only writer. Opening an existing log verifies it; a torn last line (crash mid-append)
    is cut off and noted in the next record, any other damage is refused. With `signing_key`, every
    record of SIGNED_TYPES is followed by a signed head."""

    def __init__(
        self,
        path: Path,
        signing_key: Ed25519PrivateKey | None = None,
        *,
        config_digest: str = "",
        refusal_window_s: float = REFUSAL_WINDOW_S,
    ) -> None:
        self.path = Path(path)
        self.refusal_window_s = refusal_window_s
        self._refusals: dict[tuple[Any, ...], _RefusalWindow] = {}
        self._lock = threading.Lock()
        self._signing_key, self.config_digest = signing_key, config_digest
        self.repaired = ""
        self.finished = False
        if self.path.exists() and self.path.stat().st_size > 0:
            report = verify(self.path, signing_key.public_key() if signing_key is not None else None)
            if report.status == "broken" and not report.torn_tail:
                raise CheckpointError(f"audit log {self.path} is damaged: {report.problem}")
            if report.torn_tail:
                size = len(self.path.read_bytes().rsplit(b"\n", 1)[0]) + 1 if report.records else 0
                with open(self.path, "r+b") as handle:
                    handle.truncate(size)
                self.repaired = report.problem
            self.finished = report.finished
            self._seq, self._prev = report.records, report.last_digest
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._seq, self._prev = 0, GENESIS
        self._handle = open(self.path, "ab")

    @property
    def last_digest(self) -> str:
        return self._prev

    def head(self) -> tuple[int, str]:
        """(index, digest) of the last record written (-1 and GENESIS for an empty log)."""
        with self._lock:
            return self._seq - 1, self._prev

    def _write(self, record: dict[str, Any]) -> str:
        full = {**record, "seq": self._seq, "prev": self._prev}
        full.setdefault("time", utc_now())
        full["digest"] = record_digest(full)
        self._handle.write((json.dumps(full, sort_keys=True, separators=(",", ":"), allow_nan=False) + "\n").encode())
        self._seq += 1
        self._prev = full["digest"]
        return full["digest"]

    def _flush_refusals(self, now: float | None) -> None:
        """Write the suppressed counts of the windows that ended by `now` (None: of every window); the
        ended windows are forgotten. Under the lock."""
        for kind, window in list(self._refusals.items()):
            ended = now is not None and window.ends <= now
            if now is not None and not ended:
                continue
            if window.suppressed:
                self._write(
                    {
                        **window.first,
                        "count": window.suppressed,
                        "aggregated": True,
                        "window_start": window.started,
                        "last": window.last,
                    }
                )
                window.suppressed = 0
            if ended:
                del self._refusals[kind]

    def record_refusal(self, record: dict[str, Any]) -> None:
        """A refused call, aggregated by `refusal_kind` (see the module docstring). Nothing is recorded
        once the log holds a finished run."""
        with self._lock:
            if self.finished:
                return
            now = time.monotonic()
            self._flush_refusals(now)
            kind = refusal_kind(record)
            if kind not in self._refusals and len(self._refusals) >= MAX_REFUSAL_KINDS:
                kind = ("overflow",)
                record = {
                    "type": record.get("type", "rejected"),
                    "client": None,
                    "method": None,
                    "status": None,
                    "reason": f"more than {MAX_REFUSAL_KINDS} kinds of refusal in {self.refusal_window_s:g} s: "
                    "counted together",
                    "round": record.get("round"),
                }
            window = self._refusals.get(kind)
            if window is not None:
                window.suppressed += 1
                window.last = utc_now()
                return
            first = {**record, "count": 1}
            self._write(first)
            self._handle.flush()
            self._refusals[kind] = _RefusalWindow(first, first.get("time", utc_now()), now + self.refusal_window_s)

    def append(self, record: dict[str, Any], *, sync: bool = False) -> str:
        with self._lock:
            if self.finished:
                raise CheckpointError(f"audit log {self.path} ends with a finished run: nothing is appended to it")
            if record.get("type") in SIGNED_TYPES:  # the counts so far get covered by the signature
                self._flush_refusals(None)
            digest = self._write(record)
            if self._signing_key is not None and record.get("type") in SIGNED_TYPES:
                covers = self._seq - 1
                self._write(
                    {
                        "type": HEAD,
                        "covers_seq": covers,
                        "head": digest,
                        "software": software_version(),
                        "config_digest": self.config_digest,
                        "signature": self._signing_key.sign(head_message(covers, digest)).hex(),
                    }
                )
                sync = True
            self._handle.flush()
            if sync:
                os.fsync(self._handle.fileno())
            if record.get("type") == "run_finished":
                self.finished = True
            return digest

    def close(self) -> None:
        """Write the pending refusal counts (unless the run finished), then close."""
        with self._lock:
            if not self.finished and not self._handle.closed:
                self._flush_refusals(None)
                self._handle.flush()
            self._handle.close()


def read_records(path: Path) -> list[dict[str, Any]]:
    """All complete records (no verification: call verify first)."""
    out = []
    for raw in Path(path).read_bytes().split(b"\n")[:-1]:
        out.append(json.loads(raw))
    return out


def find_log(folder: Path) -> Path:
    """The audit log of a server run folder, or of a run-local folder (its server/ subfolder)."""
    folder = Path(folder)
    for candidate in (folder / "audit.jsonl", folder / "server" / "audit.jsonl"):
        if candidate.is_file():
            return candidate
    return folder / "audit.jsonl"
