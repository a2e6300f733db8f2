"""Sensitivity of the unclipped tail of an update and the noise multiplier the accountant sees.

Choice (stated once, here): the count one-hots and the example count are NOT clipped. Their L2
sensitivity is bounded by construction (add/remove one user removes exactly one 1 per block and
one example count <= ``max_example_count``), they are covered by the same noise as the delta
part, and their sensitivity is ACCOUNTED FOR: the accountant is driven by the noise multiplier
of the whole vector, z_eff = z*C / sqrt(C^2 + count_sensitivity^2), not by z. Uploading the
example count divided by its cap (a number in [0, 1]) keeps the cost small.

Several noisy releases in one round (e.g. the group-count secure sum, then the update sum) with
the same participants compose exactly into one Gaussian release: see
:func:`compose_noise_multipliers`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from mrff_secure.errors import PrivacyError


def _nonneg(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise PrivacyError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def count_part_sensitivity(*, blocks: int, max_example_count: float) -> float:
    """L2 sensitivity of ``[one-hot group per block | example count]``: sqrt(blocks + m^2).

    ``max_example_count`` is the bound the client enforces on the count it uploads (1.0 when it
    uploads count / cap; 0.0 when no count is uploaded).
    """
    if isinstance(blocks, bool) or not isinstance(blocks, int) or blocks < 0:
        raise PrivacyError(f"blocks must be an integer >= 0, got {blocks!r}")
    m = _nonneg("max_example_count", max_example_count)
    return math.sqrt(blocks + m * m)


def effective_noise_multiplier(*, noise_multiplier: float, clip: float, extra_sensitivity: float) -> float:
    """Noise multiplier of the whole vector when std z*C covers the clipped part (norm <= C) and
    an unclipped part of L2 sensitivity ``extra_sensitivity``: z*C / sqrt(C^2 + extra^2)."""
    z = _nonneg("noise_multiplier", noise_multiplier)
    c = _nonneg("clip", clip)
    if c == 0.0:
        raise PrivacyError("clip must be > 0")
    extra = _nonneg("extra_sensitivity", extra_sensitivity)
    return z * c / math.sqrt(c * c + extra * extra)


def compose_noise_multipliers(parts: Sequence[tuple[float, float]]) -> float:
    """One Gaussian noise multiplier equivalent to several Gaussian releases of the same round.

    ``parts`` is [(l2_sensitivity, noise_std), ...]. Stacking the releases scaled by 1/std gives
    one Gaussian mechanism with unit noise and sensitivity sqrt(sum (sens/std)^2), so the
    composite multiplier is 1 / sqrt(sum (sens/std)^2) (exact, not a bound). A part with
    sensitivity > 0 and std 0 makes it 0 (no privacy).
    """
    if len(parts) == 0:
        raise PrivacyError("compose_noise_multipliers needs at least one (sensitivity, std) part")
    total = 0.0
    for sens, std in parts:
        s = _nonneg("sensitivity", sens)
        sd = _nonneg("noise std", std)
        if s == 0.0:
            continue
        if sd == 0.0:
            return 0.0
        total += (s / sd) ** 2
    if total == 0.0:
        raise PrivacyError("every part has sensitivity 0: nothing to account")
    return 1.0 / math.sqrt(total)
