"""The hash-chained audit log: one JSON object per line, each naming the digest of the previous one.

record = {...fields, "seq": n, "prev": digest of record n-1 (64 zero hex digits for the first)}
digest = SHA-256 of the canonical JSON (sorted keys, no spaces) of the record without "digest",
stored as "digest". Changing, removing, reordering or inserting a line breaks the chain, and
`verify` names the first bad line. Appends are flushed (and fsynced for round records).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mrff_secure.errors import CheckpointError

GENESIS = "0" * 64


def record_digest(record: dict[str, Any]) -> str:
    body = {k: v for k, v in record.items() if k != "digest"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class VerifyReport:
    ok: bool
    records: int
    last_digest: str
    problem: str = ""
    torn_tail: bool = False  # the last line is incomplete (a crash mid-append)


def verify(path: Path) -> VerifyReport:
    """Check every record's digest and its link to the previous one."""
    path = Path(path)
    if not path.is_file():
        return VerifyReport(False, 0, GENESIS, f"{path} does not exist")
    data = path.read_bytes()
    lines = data.split(b"\n")
    torn = bool(lines and lines[-1])  # bytes after the last newline
    complete = lines[:-1]
    prev = GENESIS
    for number, raw in enumerate(complete, start=1):
        try:
            record = json.loads(raw)
        except ValueError:
            return VerifyReport(False, number - 1, prev, f"line {number} is not JSON")
        if not isinstance(record, dict):
            return VerifyReport(False, number - 1, prev, f"line {number} is not a JSON object")
        if record.get("seq") != number - 1:
            return VerifyReport(False, number - 1, prev, f"line {number} has seq {record.get('seq')!r}, expected {number - 1}")
        if record.get("prev") != prev:
            return VerifyReport(False, number - 1, prev, f"line {number} does not link to the previous record")
        if record.get("digest") != record_digest(record):
            return VerifyReport(False, number - 1, prev, f"line {number} was altered (digest mismatch)")
        prev = record["digest"]
    if torn:
        return VerifyReport(False, len(complete), prev, f"line {len(complete) + 1} is incomplete (torn write)", True)
    return VerifyReport(True, len(complete), prev)


class AuditLog:
    """Append-only writer. Opening an existing log verifies it; a torn last line (crash mid-append)
    is cut off and noted in the next record, any other damage is refused."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self.repaired = ""
        if self.path.exists():
            report = verify(self.path)
            if not report.ok and not report.torn_tail:
                raise CheckpointError(f"audit log {self.path} is damaged: {report.problem}")
            if report.torn_tail:
                size = len(self.path.read_bytes().rsplit(b"\n", 1)[0]) + 1 if report.records else 0
                with open(self.path, "r+b") as handle:
                    handle.truncate(size)
                self.repaired = report.problem
            self._seq, self._prev = report.records, report.last_digest
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._seq, self._prev = 0, GENESIS
        self._handle = open(self.path, "ab")

    @property
    def last_digest(self) -> str:
        return self._prev

    def append(self, record: dict[str, Any], *, sync: bool = False) -> str:
        with self._lock:
            full = {**record, "seq": self._seq, "prev": self._prev}
            full["digest"] = record_digest(full)
            self._handle.write((json.dumps(full, sort_keys=True, separators=(",", ":"), allow_nan=False) + "\n").encode())
            self._handle.flush()
            if sync:
                os.fsync(self._handle.fileno())
            self._seq += 1
            self._prev = full["digest"]
            return full["digest"]

    def close(self) -> None:
        with self._lock:
            self._handle.close()


def read_records(path: Path) -> list[dict[str, Any]]:
    """All complete records (no verification: call verify first)."""
    out = []
    for raw in Path(path).read_bytes().split(b"\n")[:-1]:
        out.append(json.loads(raw))
    return out
