"""The one line per round that a client process reports for its logical clients:
"[ROUND 3] users 0-3: trained 160 examples, uploaded 4.8 MiB, 2.1 s"."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from mrff_secure.run_summary import format_epsilon


@dataclass
class RoundResult:
    """What one logical client did in one round, for the round's line."""

    participants: tuple[int, ...]
    started: float
    ended: float = 0.0
    examples: float = 0.0
    uploaded: int = 0  # bytes of the payloads we submitted
    status: str = "completed"  # or "aborted: ...", "refused: ...", "interrupted: ..."
    epsilon: float | None = None  # the client's own ledger after the round (None: refused before counting)
    epsilon_cap: float | None = None


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 1024:.1f} KiB"


def _ids(users: Iterable[int]) -> str:
    users = sorted(users)
    if len(users) == 1:
        return f"user {users[0]}"
    if users == list(range(users[0], users[-1] + 1)):
        return f"users {users[0]}-{users[-1]}"
    return f"users {','.join(map(str, users))}" if len(users) <= 6 else f"{len(users)} users"


class RoundReporter:
    """One line per round for the logical clients of this process, once each of them that the
    round sampled is done with it (or when a later round or the end of the process comes first):
    "[ROUND 3] users 0-3: trained 160 examples, uploaded 4.8 MiB, 2.1 s"."""

    def __init__(self, users: Iterable[int], emit: Callable[[str], None]) -> None:
        self.users = frozenset(users)
        self.emit = emit  # the command's output (a line, flushed)
        self._lock = threading.Lock()
        self._pending: dict[int, dict[int, RoundResult]] = {}

    def record(self, round_id: int, user: int, result: RoundResult) -> None:
        with self._lock:
            self._pending.setdefault(round_id, {})[user] = result
            for older in sorted(r for r in self._pending if r < round_id):
                self._emit(older)
            expected = self.users.intersection(result.participants)
            if expected <= set(self._pending[round_id]):
                self._emit(round_id)

    def flush(self) -> None:
        with self._lock:
            for round_id in sorted(self._pending):
                self._emit(round_id)

    def _emit(self, round_id: int) -> None:
        results = self._pending.pop(round_id)
        done = list(results.values())
        seconds = max(r.ended for r in done) - min(r.started for r in done)
        line = (
            f"[ROUND {round_id}] {_ids(results)}: trained {sum(r.examples for r in done):.0f} examples, "
            f"uploaded {_size(sum(r.uploaded for r in done))}, {seconds:.1f} s"
        )
        spent = [r for r in done if r.epsilon is not None]
        if spent:
            worst = max(spent, key=lambda r: r.epsilon or 0.0)
            cap = f" of cap {format_epsilon(worst.epsilon_cap)}" if worst.epsilon_cap is not None else ""
            line += f", epsilon {format_epsilon(worst.epsilon)}{cap} (own ledger)"
        failed = [r.status for r in done if r.status != "completed"]
        if failed:
            reason = failed[0] if len(failed[0]) <= 120 else failed[0][:117] + "..."
            line += f"; {len(failed)} of {len(done)} not completed, {reason}" if len(done) > 1 else f"; {reason}"
        self.emit(line)


class EnrolmentReporter:
    """The process's line once every one of its users has enrolled: `ENROLLED users 0-9 in run R; waiting for
    the first round` (again after a server restart: every user enrols anew, and the line says so)."""

    def __init__(self, users: Iterable[int], emit: Callable[[str], None]) -> None:
        self.users = frozenset(users)
        self._emit = emit
        self._lock = threading.Lock()
        self._enrolled: set[int] = set()
        self._lines = 0

    def enrolled(self, user: int, run_id: str) -> None:
        with self._lock:
            self._enrolled.add(user)
            if self._enrolled != self.users:
                return
            self._enrolled = set()
            again = self._lines > 0
            self._lines += 1
        waiting = "the next round (enrolled again: the server restarted)" if again else "the first round"
        self._emit(f"ENROLLED {_ids(self.users)} in run {run_id}; waiting for {waiting}")
