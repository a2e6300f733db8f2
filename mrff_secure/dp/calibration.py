"""Calibration between a target (epsilon, delta) and the noise multiplier z.

target -> z: opacus' ``get_noise_multiplier`` (binary search over its PRV or RDP accountant),
returning the smallest z found whose epsilon is <= the target (within ``epsilon_tolerance``).
z -> epsilon: :func:`mrff_secure.dp.accounting.epsilon`.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from opacus.accountants.utils import get_noise_multiplier

from mrff_secure.errors import PrivacyError

from .accounting import Epsilons, epsilon
from .config import DPConfig


def noise_multiplier_for_epsilon(
    *, target_epsilon: float, delta: float, sample_rate: float, rounds: int,
    accountant: str = "prv", epsilon_tolerance: float = 0.01,
) -> float:
    """Smallest z (to the search's precision) with epsilon(z) <= target_epsilon at ``delta``."""
    if isinstance(target_epsilon, bool) or not isinstance(target_epsilon, (int, float)) \
            or not math.isfinite(target_epsilon) or target_epsilon <= 0:
        raise PrivacyError(f"target_epsilon must be a finite number > 0, got {target_epsilon!r}")
    if not isinstance(delta, (int, float)) or not 0.0 < delta < 1.0:
        raise PrivacyError(f"delta must be in (0, 1), got {delta!r}")
    if not isinstance(sample_rate, (int, float)) or not 0.0 < sample_rate <= 1.0:
        raise PrivacyError(f"sample_rate must be in (0, 1], got {sample_rate!r}")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise PrivacyError(f"rounds must be an integer >= 1, got {rounds!r}")
    if accountant not in ("prv", "rdp"):
        raise PrivacyError(f"accountant must be 'prv' or 'rdp', got {accountant!r}")
    if not epsilon_tolerance > 0:
        raise PrivacyError(f"epsilon_tolerance must be > 0, got {epsilon_tolerance!r}")
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            z = get_noise_multiplier(
                target_epsilon=float(target_epsilon), target_delta=float(delta),
                sample_rate=float(sample_rate), steps=rounds, accountant=accountant,
                epsilon_tolerance=epsilon_tolerance,
            )
    except (ValueError, RuntimeError) as exc:
        raise PrivacyError(
            f"cannot reach epsilon={target_epsilon} at delta={delta} with sample_rate={sample_rate} "
            f"over {rounds} rounds ({accountant}): {exc}"
        ) from exc
    return float(z)


def epsilon_for_noise_multiplier(
    *, noise_multiplier: float, delta: float, sample_rate: float, rounds: int
) -> Epsilons:
    """z -> (PRV, RDP) epsilons; the inverse of :func:`noise_multiplier_for_epsilon`."""
    return epsilon(noise_multiplier=noise_multiplier, sample_rate=sample_rate, rounds=rounds, delta=delta)


def resolve_noise_multiplier(config: DPConfig, *, rounds: int, sample_rate: float, n_users: int) -> float:
    """z from a DPConfig alone: 0 when DP is off, the configured z, or the Gaussian-limit PRV calibration.

    NOT the accounting of a training round (no count part, amplification by sampling assumed): runs
    and `mrff privacy` calibrate with `dp.release.calibrate_noise_multiplier`.
    """
    if not config.enabled:
        return 0.0
    if config.noise_multiplier is not None:
        return float(config.noise_multiplier)
    target = config.target_epsilon
    if target is None:  # unreachable: DPConfig validation guarantees one of the two
        raise PrivacyError("DPConfig has neither noise_multiplier nor target_epsilon")
    return noise_multiplier_for_epsilon(
        target_epsilon=target, delta=config.resolve_delta(n_users),
        sample_rate=sample_rate, rounds=rounds, accountant="prv",
    )
