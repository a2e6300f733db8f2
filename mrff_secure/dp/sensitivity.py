"""The noise multiplier the accountant sees when one round makes several Gaussian releases.

The count one-hots and the example count are not clipped: their sensitivity comes from the layout
and is accounted for (`dp.release`). Several noisy releases in one round (e.g. the group-count
secure sum, then the update sum) with the same participants compose exactly into one Gaussian
release: see :func:`compose_noise_multipliers`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from mrff_secure.checks import check_number
from mrff_secure.errors import PrivacyError


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
        s = check_number("sensitivity", sens, low=0.0, error=PrivacyError)
        sd = check_number("noise std", std, low=0.0, error=PrivacyError)
        if s == 0.0:
            continue
        if sd == 0.0:
            return 0.0
        total += (s / sd) ** 2
    if total == 0.0:
        raise PrivacyError("every part has sensitivity 0: nothing to account")
    return 1.0 / math.sqrt(total)
