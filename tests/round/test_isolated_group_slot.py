"""W4/W9 of the security review: a malicious server (or colluders who claim a group in phase 1 and
then send zeros) can leave ONE honest client in a group slot of a released sum. A single server
cannot prevent it; what protects the user is the DP noise on every coordinate of every slot.

Played with the real per-client encoding (`round.encoding`): the target is alone in its slot,
the other survivors (as many as the noise was sized for, which the client's policy enforces)
contribute zeros there. The attacker decodes the slot: under distributed DP its error against the
target's clipped delta has the std DP promises (z*C); with DP off it is exact, which is why
SECURITY.md says `--dp off` protects only against an honest-but-curious server."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mrff_secure.round.encoding import decode_sum, secure_round_plans, update_upload
from mrff_secure.round.participant import scaled_example_count

DELTA, BLOCKS, GROUPS, SLOT = 4096, 1, 2, 512  # the target's slot: the last SLOT delta coordinates
SIZE = DELTA + BLOCKS * GROUPS + 1


def _uploads(dp_mode: str, z: float, n: int, n_min: int, rng: np.random.Generator):
    clip = 1.0
    plans = secure_round_plans(
        delta_size=DELTA,
        num_blocks=BLOCKS,
        num_groups=GROUPS,
        dp_mode=dp_mode,
        mechanism="discrete_gaussian",
        clip=clip,
        noise_multiplier=z,
        n_clients=n,
        n_min=n_min,
        modulus_bits=48,
        count_cap=20,
    )
    vectors = np.zeros((n, SIZE))
    vectors[:, : DELTA - SLOT] = rng.normal(0, 0.3 / math.sqrt(DELTA - SLOT), size=(n, DELTA - SLOT))
    target = rng.normal(0, 0.5 / math.sqrt(SLOT), size=SLOT)  # norm ~0.5 < C: not clipped
    vectors[0, DELTA - SLOT : DELTA] = target  # only the target is in this slot; the others send zeros there
    vectors[:, DELTA] = 1.0  # their one-hots (zeroed by the encoder in phase 2 anyway)
    vectors[:, -1] = scaled_example_count(torch.full((n,), 10.0, dtype=torch.float64), 20).numpy()
    residues = np.stack([update_upload(plans, v, rotation_seed=9, rng=rng) for v in vectors])
    ring = np.mod(residues.sum(0), 1 << 48).astype(np.int64)
    recovered = decode_sum(plans.update, ring, survivors=n, rotation_seed=9)[DELTA - SLOT : DELTA]
    return target, recovered, clip


@pytest.mark.parametrize("z", [0.5, 1.0])
def test_an_isolated_slot_carries_the_noise_dp_promises(z) -> None:
    rng = np.random.default_rng(2)
    errors = []
    for _ in range(4):
        target, recovered, clip = _uploads("distributed", z, n=8, n_min=8, rng=rng)
        errors.append(recovered - target)
    error = np.concatenate(errors)  # (4 * SLOT,) independent coordinates
    # every survivor's noise share adds up to std z*C per coordinate (after the rotation back): not less
    assert error.std() == pytest.approx(z * clip, rel=0.08)
    assert abs(error.mean()) < 4 * z * clip / math.sqrt(error.size)


def test_with_dp_off_an_isolated_slot_is_the_target_update() -> None:
    target, recovered, _ = _uploads("off", 0.0, n=8, n_min=1, rng=np.random.default_rng(3))
    # only the fixed-point rounding separates them: the documented honest-but-curious-only case
    assert np.abs(recovered - target).max() < 1e-4
