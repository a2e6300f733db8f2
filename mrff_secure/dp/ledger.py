"""PrivacyLedger: the thin stateful record a training run keeps, one entry per round.

It stores opacus-style history [(noise_multiplier, sample_rate, rounds)] and delegates to the pure
functions of ``accounting``. ``state_dict`` is a plain JSON-able dict for checkpoints (no pickle).
"""

from __future__ import annotations

import math
from typing import Any

from mrff_secure.errors import PrivacyError

from .accounting import Epsilons, gaussian_epsilons, normalize_history

_STATE_VERSION = 1


class PrivacyLedger:
    """Per-user (add/remove) privacy spent by a run. Record every round, including DP-off ones
    (noise_multiplier=0), so that the epsilon can never silently omit a noiseless round."""

    def __init__(self, *, delta: float) -> None:
        if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not 0.0 < delta < 1.0:
            raise PrivacyError(f"delta must be in (0, 1), got {delta!r}")
        self.delta = float(delta)
        self._history: list[tuple[float, float, int]] = []

    @property
    def history(self) -> list[tuple[float, float, int]]:
        """[(noise_multiplier, sample_rate, rounds)], consecutive equal rounds merged (a copy)."""
        return list(self._history)

    @property
    def rounds(self) -> int:
        """Number of rounds recorded."""
        return sum(steps for _, _, steps in self._history)

    def record_round(self, *, noise_multiplier: float, sample_rate: float) -> None:
        """Add one round with this (effective) noise multiplier and client sampling rate."""
        entry = normalize_history([(noise_multiplier, sample_rate, 1)])
        if not entry:  # sample_rate 0: nobody took part; still count the round as recorded
            entry = [(float(noise_multiplier), float(sample_rate), 1)]
        z, q, _ = entry[0]
        if self._history and self._history[-1][0] == z and self._history[-1][1] == q:
            last = self._history[-1]
            self._history[-1] = (z, q, last[2] + 1)
        else:
            self._history.append((z, q, 1))

    def epsilons(self) -> Epsilons:
        """PRV and RDP epsilons at the ledger's delta (with notes if PRV was unavailable)."""
        return gaussian_epsilons(history=self._history, delta=self.delta)

    def epsilon(self) -> tuple[float | None, float]:
        """(epsilon_prv, epsilon_rdp) so far; inf after any noiseless round, 0.0 before any round. epsilon_prv is
        None where PRV is out of range (:meth:`epsilons` gives the reason; :meth:`to_json` the RDP fallback)."""
        e = self.epsilons()
        return e.prv, e.rdp

    def to_json(self) -> dict[str, Any]:
        """The epsilons so far, JSON-ready: "inf" after a noiseless round (never null, never 0.0), the RDP bound
        in place of PRV where PRV is out of range ("accountant": "rdp", the reason in "prv_note")."""
        return {**self.epsilons().to_json(), "rounds": self.rounds}

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state: {"version", "delta", "history": [[z, q, rounds], ...]}."""
        return {"version": _STATE_VERSION, "delta": self.delta,
                "history": [[z, q, steps] for z, q, steps in self._history]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict` output; PrivacyError on a malformed state."""
        if not isinstance(state, dict) or state.get("version") != _STATE_VERSION:
            raise PrivacyError(f"unsupported ledger state (expected version {_STATE_VERSION})")
        delta = state.get("delta")
        history = state.get("history")
        if not isinstance(delta, (int, float)) or isinstance(delta, bool) or not 0.0 < delta < 1.0:
            raise PrivacyError(f"ledger state has an invalid delta {delta!r}")
        if not isinstance(history, list):
            raise PrivacyError("ledger state history must be a list")
        restored: list[tuple[float, float, int]] = []
        for item in history:
            if not isinstance(item, (list, tuple)) or len(item) != 3:
                raise PrivacyError(f"ledger history entry must be [z, q, rounds], got {item!r}")
            z, q, steps = item
            if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
                raise PrivacyError(f"ledger history rounds must be an integer >= 1, got {steps!r}")
            for name, v in (("noise_multiplier", z), ("sample_rate", q)):
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                    raise PrivacyError(f"ledger history {name} invalid: {v!r}")
            if q > 1:
                raise PrivacyError(f"ledger history sample_rate must be <= 1, got {q!r}")
            restored.append((float(z), float(q), steps))
        self.delta = float(delta)
        self._history = restored
