"""A logical client's privacy ledger: every input it derived and every release it made, on disk.

    STATE_DIR/user-<id>/ledger.json   written atomically before each release is sent

The server is the party this client protects itself against, so the client counts for itself:

- **Every release, when it is sent.** Each phase's masked input (the group counts, the update, the
  evaluation) is recorded before it leaves, with the public description of what it releases
  (`round.release.RoundRelease`, accounted with the honest noise shares only: n_min - c_max), whether the
  round then completes or not. A round aborted after phase 1 still costs its counts (W17).
- **One release per input.** An input is derived once per (run, round). Once any phase of a round has
  been sent, the client takes part in no other session of that round: a server that aborts and replays
  the round (with or without the target) gets a refusal, never a second sum holding the same update
  (W12). Sessions of a round that end before anything is sent may be retried, at most
  `max_aborted_sessions` times (graph grinding, W16).
- **A hard cap.** Before a round is played, the epsilon the round would bring the ledger to (all its
  phases) is computed; a round that would take it past the policy's `max_epsilon` is refused, and so is
  any single release that would (the server cannot make the client spend beyond it).

The epsilon is that of `round.accountant.RoundAccountant` over every release of this identity, in every
run (the same data feeds every run), at the policy's delta. A damaged ledger is an error naming the file:
the client does not start with a forgotten budget.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mrff_secure.atomic import write_json_atomic
from mrff_secure.dp.accounting import json_epsilon
from mrff_secure.errors import CheckpointError, ConfigError, PrivacyError
from mrff_secure.round.accountant import EVALUATION_KIND, ROUND_KIND, Release, RoundAccountant, release_kind
from mrff_secure.round.evaluation_release import EvaluationRelease
from mrff_secure.round.release import RoundRelease

LEDGER_FORMAT = "mrff-client-ledger"
LEDGER_VERSION = 1
RELEASE_PHASES = ("counts", "update", "evaluation")


def _release(kind: str, fields: dict[str, Any]) -> Release:
    if kind == ROUND_KIND:
        return RoundRelease(**fields)
    if kind == EVALUATION_KIND:
        return EvaluationRelease(**fields)
    raise ValueError(f"unknown release kind {kind!r}")


class LedgerRefusal(PrivacyError):
    """The client's own ledger forbids what the server asks (a second release of an input, a round past the
    epsilon cap, too many aborted sessions): the client refuses, naming the rule."""


@dataclass(frozen=True)
class LedgerEntry:
    """One release this client sent: the run and round it belongs to, the phase and session it was sent in,
    and what it releases."""

    run_id: str
    round_id: int
    phase: str
    session: str  # the secure sum's session id and nonce (hex): which sum holds it
    release: Release  # a training round's phase, or a federated evaluation
    sent_at: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "round": self.round_id,
            "phase": self.phase,
            "session": self.session,
            "kind": release_kind(self.release),
            "release": self.release.to_dict(),
            "sent_at": self.sent_at,
        }


class ClientLedger:
    """See the module docstring. `max_epsilon` and `delta` are the client policy's; `max_aborted_sessions`
    bounds the sessions of one round that may end before anything is sent."""

    def __init__(self, path: Path, *, user: int, delta: float, max_epsilon: float, max_aborted_sessions: int) -> None:
        self.path = Path(path)
        self.user = user
        self.delta = delta
        self.max_epsilon = max_epsilon
        self.max_aborted_sessions = max_aborted_sessions
        self.entries: list[LedgerEntry] = []
        self.sessions: dict[tuple[str, int], int] = {}  # (run, round) -> sessions started
        self.derived: set[tuple[str, int]] = set()  # (run, round) whose input was derived
        self._load()
        self._accountant = RoundAccountant(delta=delta)  # every entry, stepped as it is appended (curves cached)
        for entry in self.entries:
            self._accountant.step(release=entry.release)

    # ------------------------------------------------------------------ file
    def _load(self) -> None:
        if not self.path.exists():
            return
        try:
            state = json.loads(self.path.read_text())
            if not isinstance(state, dict) or state.get("format") != LEDGER_FORMAT:
                raise ValueError(f"not a {LEDGER_FORMAT} file")
            if state.get("version") != LEDGER_VERSION:
                raise ValueError(f"version {state.get('version')!r}, this client reads version {LEDGER_VERSION}")
            if state.get("user") != self.user:
                raise ValueError(f"it is the ledger of user {state.get('user')!r}, not of user {self.user}")
            self.entries = [
                LedgerEntry(
                    run_id=str(e["run_id"]),
                    round_id=int(e["round"]),
                    phase=str(e["phase"]),
                    session=str(e["session"]),
                    release=_release(e.get("kind", ROUND_KIND), e["release"]),
                    sent_at=float(e["sent_at"]),
                )
                for e in state["releases"]
            ]
            for item in state["inputs"]:
                key = (str(item["run_id"]), int(item["round"]))
                self.derived.add(key)
                self.sessions[key] = int(item["sessions"])
        except (OSError, ValueError, KeyError, TypeError, ConfigError, PrivacyError) as exc:
            raise CheckpointError(
                f"the privacy ledger {self.path} is damaged or unreadable ({exc}); the client does not start "
                "without it (its budget would be forgotten): restore it from a backup"
            ) from exc

    def _save(self) -> None:
        inputs = sorted(self.derived | set(self.sessions))
        write_json_atomic(
            self.path,
            {
                "format": LEDGER_FORMAT,
                "version": LEDGER_VERSION,
                "user": self.user,
                "delta": self.delta,
                "epsilon": json_epsilon(self.epsilon()),
                "releases": [e.to_dict() for e in self.entries],
                "inputs": [
                    {"run_id": run, "round": r, "sessions": self.sessions.get((run, r), 0)} for run, r in inputs
                ],
            },
        )

    # ------------------------------------------------------------------ accounting
    def epsilon(self, extra: tuple[Release, ...] = ()) -> float:
        """The epsilon of every release so far (plus `extra`, not yet sent), at the policy's delta."""
        return self._accountant.epsilon(extra=extra)

    def released(self, run_id: str, round_id: int) -> list[LedgerEntry]:
        return [e for e in self.entries if (e.run_id, e.round_id) == (run_id, round_id)]

    def run_epsilon(self, run_id: str) -> float:
        """The epsilon of this run's releases alone (what the server's ledger of the run should say)."""
        accountant = RoundAccountant(delta=self.delta)
        for entry in self.entries:
            if entry.run_id == run_id:
                accountant.step(release=entry.release)
        return accountant.epsilon()

    def _check_cap(self, releases: tuple[Release, ...], what: str) -> float:
        after = self.epsilon(releases)
        if not after <= self.max_epsilon:  # also refuses inf and nan
            shown = "inf (no noise)" if math.isinf(after) else f"{after:.4g}"
            raise LedgerRefusal(
                f"{what} would bring this client's epsilon to {shown} at delta {self.delta:g} "
                f"(spent so far: {self.epsilon():.4g}), past its cap max_epsilon={self.max_epsilon:g}"
            )
        return after

    # ------------------------------------------------------------------ the rules
    def begin_session(self, run_id: str, round_id: int, phases: tuple[Release, ...]) -> float:
        """A session of round `round_id` of `run_id` is about to start (before training or any key is made):
        refused if any phase of the round was already sent, if the round's sessions ran out, or if the
        round's releases (`phases`, all of them) would pass the cap. Returns the epsilon after the round."""
        key = (run_id, round_id)
        sent = self.released(run_id, round_id)
        if sent:
            raise LedgerRefusal(
                f"round {round_id} of run {run_id!r}: this client already released its "
                f"{', '.join(sorted({e.phase for e in sent}))} in session {sent[-1].session}; an input is "
                "released once, never again in another session (a second sum holding it could be differenced)"
            )
        started = self.sessions.get(key, 0)
        if started > self.max_aborted_sessions:
            raise LedgerRefusal(
                f"round {round_id} of run {run_id!r}: {started} sessions of it already ended before this client "
                f"sent anything; it allows at most max_aborted_sessions={self.max_aborted_sessions} (a server "
                "that aborts and retries re-draws the neighbour graph)"
            )
        after = self._check_cap(phases, f"round {round_id} of run {run_id!r}")
        self.sessions[key] = started + 1
        self.derived.add(key)
        self._save()
        return after

    def record_release(self, run_id: str, round_id: int, phase: str, session: str, release: Release) -> float:
        """Write `release` down before it is sent (raises, sending nothing, if it would pass the cap or if this
        phase of the round was already released). Returns the epsilon with it."""
        if phase not in RELEASE_PHASES:
            raise ConfigError(f"ledger phase must be one of {RELEASE_PHASES}, got {phase!r}")
        if (run_id, round_id) not in self.derived:
            raise LedgerRefusal(f"round {round_id} of run {run_id!r}: a release outside a session the ledger began")
        for entry in self.released(run_id, round_id):
            if entry.phase == phase or entry.session == session:
                raise LedgerRefusal(
                    f"round {round_id} of run {run_id!r}: its {entry.phase} was already released in session "
                    f"{entry.session}; refusing to release its {phase} in session {session}"
                )
        after = self._check_cap((release,), f"the {phase} of round {round_id} of run {run_id!r}")
        self.entries.append(LedgerEntry(run_id, round_id, phase, session, release, time.time()))
        self._accountant.step(release=release)
        self._save()
        return after

    def summary(self) -> dict[str, Any]:
        """What the client reports: its epsilon, the cap, and how many releases and rounds it holds."""
        return {
            "epsilon": json_epsilon(self.epsilon()),
            "delta": self.delta,
            "max_epsilon": self.max_epsilon,
            "releases": len(self.entries),
            "rounds": len({(e.run_id, e.round_id) for e in self.entries}),
        }
