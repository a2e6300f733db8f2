"""One client's secure-round encoding, shared by the simulation and the network client.

API (numpy in, numpy out; no torch, no networking). Every argument of `secure_round_plans` is
public: the server announces it and every client can check it against its own policy.

``secure_round_plans(*, delta_size, num_blocks, num_groups, dp_mode, mechanism, clip,
noise_multiplier, n_clients, n_min, modulus_bits, count_cap, rounding_beta=DEFAULT_ROUNDING_BETA,
single_noise_draw=False) -> SecureRoundPlans``
    The round's two `DistributedPlan`s: ``.counts`` (phase 1: the group one-hots, length
    blocks * groups; None when the model has no groups) and ``.update`` (phase 2: the whole layout
    vector ``[delta | one-hots | example count]``, length ``.size``), plus ``.counts_max_abs`` and
    ``.update_max_abs`` (the per-client integer bound each phase's secure sum is sized for: its
    SecAggConfig's max_abs, with the range check's guard bits for that phase's length) and the
    inputs. dp_mode "off" (secure aggregation, no noise: noise_multiplier must be 0) or
    "distributed". n_min: the survivors each client's noise share is sized for (a client should
    refuse an n_min above what its policy accepts; the server must refuse to decode a sum over
    fewer). ConfigError / PrivacyError name an impossible setting.

``counts_upload(plans, one_hots, *, rotation_seed, rng) -> residues``
    Phase 1. one_hots: (blocks*groups,) or (clients, blocks*groups), 0/1, at most one 1 per block.
    Returns int64 residues in [0, 2^b), shape (..., plans.counts.padded_dim).

``update_upload(plans, vector, *, rotation_seed, rng) -> residues``
    Phase 2. vector: (size,) or (clients, size) floats laid out as `UpdateLayout.build` does, with
    the example count already scaled to min(count, cap) / cap (`round.participant.scaled_example_count`) and the
    suppressed group slots already zeroed. The one-hot coordinates are ZEROED here (W5 of the
    security review: phase-1 minus phase-2 counts would reveal the groups of clients that dropped
    between phases); the delta part is clipped to C; every coordinate, zeros included, gets the
    noise share. Returns int64 residues, shape (..., plans.update.padded_dim).

``decode_sum(plan, ring_sum, *, survivors, rotation_seed) -> float64 (plan.dim,)``
    Server: the ring sum of one phase from ``survivors`` clients back to floats; PrivacyError if
    survivors < plan.n_min. ``decode_counts(plans, ring_sum, *, survivors, rotation_seed)`` does
    phase 1 and rounds: (blocks, groups) int64 >= 0.

``secure_generator() -> numpy.random.Generator``
    The generator of all DP randomness (rounding and noise): numpy's PCG64 seeded from 256 bits of
    operating-system entropy (os.urandom). Never seed noise from an experiment seed.

A networked round: `round_plans(spec, layout, n)` builds the plans from a RoundSpec and
`plan_configs(plans, n)` the two SecAggConfigs (vector length = padded_dim, max_abs =
plans.counts_max_abs / plans.update_max_abs, the plans' modulus); `round.participant` builds each
phase's float vector and `round.aggregate.apply_decoded` takes the global step. The secagg state
machines take centred signed integers: `secagg.encoding.from_ring(residues, plans.modulus_bits)`.
``rotation_seed`` is public (the server announces one per round and phase and decodes with it);
``rng`` is `secure_generator()` on a real client, a fresh one per phase.

Each client encodes with the pipeline of `mrff_secure.dp.distributed` (clip, randomized Hadamard
rotation under the round's public ``rotation_seed``, scaling, conditional randomized rounding,
its discrete Gaussian or Skellam noise share of variance (z C scale)^2 / n_min on every
coordinate, reduction mod 2^b). Identical inputs, plans, rotation seed and generator state give
identical residues, whether the simulation or the network client calls.

Sensitivity (add/remove one user, accounted by the caller): phase 1 releases the one-hots, L2
sensitivity sqrt(blocks), noise std z * sqrt(blocks); phase 2 releases the clipped delta part
(<= C) and the example count (<= 1): L2 sensitivity sqrt(C^2 + 1), noise std z * C. The phase-2
one-hot coordinates are zero for every client, so they add no sensitivity.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from mrff_secure.checks import check_int, check_number
from mrff_secure.dp.config import DEFAULT_ROUNDING_BETA, DISTRIBUTED_MECHANISMS
from mrff_secure.dp.discretize import centered_lift, wrap_to_modulus
from mrff_secure.dp.distributed import (
    DistributedEncoder,
    DistributedPlan,
    max_scale,
    max_share_variance,
    next_power_of_two,
    plan_distributed,
)
from mrff_secure.dp.mechanisms import sample_discrete_gaussian, sample_skellam
from mrff_secure.errors import ConfigError, PrivacyError
from mrff_secure.round.spec import RoundSpec
from mrff_secure.round.update_vector import UpdateLayout
from mrff_secure.secagg.config import SecAggConfig, max_abs_for

SECURE_DP_MODES = ("off", "distributed")
# Per-client headroom: a client's integer coordinate stays below max_abs unless its noise share
# exceeds this many standard deviations (probability < 1e-80 per coordinate).
SHARE_TAIL_SIGMAS = 20.0
PHASE2_COUNT_SENSITIVITY = 1.0  # phase 2 carries only min(count, cap) / cap; its one-hots are zero
OS_ENTROPY_BYTES = 32


def secure_generator() -> np.random.Generator:
    """A numpy Generator (PCG64) seeded from 256 bits of operating-system entropy (os.urandom).

    What it is, honestly: the seed is unpredictable (the OS's cryptographic source) and is never
    stored, so nobody can regenerate the draws from anything a run records, unlike a generator
    seeded from the experiment seed. PCG64 itself is NOT a cryptographically secure generator: an
    observer who saw a long stretch of its raw outputs could in principle reconstruct its state.
    Its outputs here are only ever released after being added to private data (noise, rounding),
    and every round draws a fresh generator, which limits what any one state could expose.
    """
    entropy = int.from_bytes(os.urandom(OS_ENTROPY_BYTES), "little")
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(entropy)))


@dataclass(frozen=True)
class SecureRoundPlans:
    """The phase-1 (counts) and phase-2 (update) plans of a round, and the public inputs behind them."""

    counts: DistributedPlan | None
    update: DistributedPlan
    delta_size: int
    num_blocks: int
    num_groups: int
    n_clients: int
    n_min: int
    modulus_bits: int
    counts_max_abs: int | None  # None without groups
    update_max_abs: int
    count_cap: int
    dp_mode: str

    @property
    def count_size(self) -> int:
        """Length of the one-hot part: the count plan's dimension, blocks * groups (0 without groups)."""
        return 0 if self.counts is None else self.counts.dim

    @property
    def size(self) -> int:
        """Length of the layout vector phase 2 encodes (delta + one-hots + example count): the update plan's."""
        return self.update.dim


def _phase_plan(
    *,
    mechanism: str,
    dim: int,
    n: int,
    n_min: int,
    clip: float,
    z: float,
    bits: int,
    clip_len: int | None,
    extra: float,
    beta: float,
    max_abs: int,
    single_noise_draw: bool,
) -> DistributedPlan:
    """plan_distributed with the scale also capped so a client's coordinates stay within max_abs."""

    def plan(scale: float | None = None) -> DistributedPlan:
        return plan_distributed(
            mechanism=mechanism,
            dim=dim,
            n_clients=n,
            n_min=n_min,
            clip=clip,
            noise_multiplier=z,
            modulus_bits=bits,
            clip_len=clip_len,
            extra_sensitivity=extra,
            beta=beta,
            scale=scale,
        )

    auto = plan()
    # |coordinate| <= rounded L2 bound <= l2 * scale + sqrt(p), plus the noise share's tail
    share_std = z * clip / math.sqrt(n_min)
    cap = (max_abs - math.sqrt(auto.padded_dim)) / (auto.l2_bound + SHARE_TAIL_SIGMAS * share_std)
    cap = min(cap, max_scale(l2_bound=auto.l2_bound, noise_std=z * clip, n_min=n_min, mechanism=mechanism))
    if single_noise_draw and z > 0:
        # one draw of the n summed shares must stay within the sampler's accurate range too
        cap = min(cap, math.sqrt(max_share_variance(mechanism) * n_min / n) / (z * clip))
    if cap <= 0:
        raise ConfigError(f"a {bits}-bit modulus leaves no room for {n} clients of dimension {dim}: raise modulus_bits")
    return auto if auto.scale <= cap else plan(cap)


def secure_round_plans(
    *,
    delta_size: int,
    num_blocks: int,
    num_groups: int,
    dp_mode: str,
    mechanism: str | None,
    clip: float,
    noise_multiplier: float,
    n_clients: int,
    n_min: int,
    modulus_bits: int,
    count_cap: int,
    rounding_beta: float = DEFAULT_ROUNDING_BETA,
    single_noise_draw: bool = False,
) -> SecureRoundPlans:
    """The plans of a secure round from public parameters only (see the module docstring).

    single_noise_draw: a simulation shortcut (the ring sum receives one draw of the n summed
    shares); it only lowers the scale so that draw stays in the sampler's accurate range.
    """
    delta_size = check_int("delta_size", delta_size, low=1)
    num_blocks = check_int("num_blocks", num_blocks, low=0)
    num_groups = check_int("num_groups", num_groups, low=0)
    if (num_blocks == 0) != (num_groups == 0):
        raise ConfigError(f"num_blocks={num_blocks} and num_groups={num_groups}: both zero (no groups) or both > 0")
    if dp_mode not in SECURE_DP_MODES:
        raise ConfigError(
            f"dp_mode of a secure round must be one of {SECURE_DP_MODES}, got {dp_mode!r} "
            "(local DP has no secure sum: each client sends its own fully noised vector)"
        )
    z = check_number("noise_multiplier", noise_multiplier, low=0.0)
    if dp_mode == "off" and z != 0.0:
        raise ConfigError(f"noise_multiplier={noise_multiplier!r} but dp_mode='off' adds no noise")
    clip = check_number("clip", clip, low=0.0, low_open=True)
    mech = "discrete_gaussian" if mechanism is None else mechanism
    if mech not in DISTRIBUTED_MECHANISMS:
        raise ConfigError(f"mechanism must be one of {DISTRIBUTED_MECHANISMS}, got {mechanism!r}")
    n = check_int("n_clients", n_clients, low=1)
    if n < 3:
        raise ConfigError(f"secure aggregation needs at least 3 participants per round, got {n}")
    n_min = check_int("n_min", n_min, low=1)
    if n_min > n:
        raise ConfigError(f"n_min={n_min} survivors cannot exceed the {n} participants")
    count_cap = check_int("count_cap", count_cap, low=1)
    bits = check_int("modulus_bits", modulus_bits, low=2)
    if not (isinstance(rounding_beta, (int, float)) and 0.0 <= rounding_beta < 1.0):
        raise ConfigError(f"rounding_beta must be in [0, 1), got {rounding_beta!r}")

    def phase_plan(*, dim: int, clip: float, clip_len: int | None, extra: float, max_abs: int) -> DistributedPlan:
        return _phase_plan(
            mechanism=mech,
            dim=dim,
            n=n,
            n_min=n_min,
            clip=clip,
            z=z,
            bits=bits,
            clip_len=clip_len,
            extra=extra,
            beta=float(rounding_beta),
            max_abs=max_abs,
            single_noise_draw=single_noise_draw,
        )

    size = delta_size + num_blocks * num_groups + 1
    # each phase's bound leaves the range check guard bits for its own (padded) length; ConfigError when
    # the modulus cannot hold n clients
    update_max_abs = max_abs_for(n, bits, vector_length=next_power_of_two(size))
    update = phase_plan(
        dim=size, clip=clip, clip_len=delta_size, extra=PHASE2_COUNT_SENSITIVITY, max_abs=update_max_abs
    )
    counts, counts_max_abs = None, None
    if num_groups:
        counts_max_abs = max_abs_for(n, bits, vector_length=next_power_of_two(num_blocks * num_groups))
        counts = phase_plan(
            dim=num_blocks * num_groups, clip=math.sqrt(num_blocks), clip_len=None, extra=0.0, max_abs=counts_max_abs
        )
    return SecureRoundPlans(
        counts=counts,
        update=update,
        delta_size=delta_size,
        num_blocks=num_blocks,
        num_groups=num_groups,
        n_clients=n,
        n_min=n_min,
        modulus_bits=bits,
        counts_max_abs=counts_max_abs,
        update_max_abs=update_max_abs,
        count_cap=count_cap,
        dp_mode=dp_mode,
    )


def without_noise(plans: SecureRoundPlans) -> SecureRoundPlans:
    """The same plans (same scales) with no noise share: the simulation's single-noise-draw shortcut only."""

    def quiet(p: DistributedPlan | None) -> DistributedPlan | None:
        if p is None:
            return None
        return plan_distributed(
            mechanism=p.mechanism,
            dim=p.dim,
            n_clients=p.n_clients,
            n_min=p.n_min,
            clip=p.clip,
            noise_multiplier=0.0,
            modulus_bits=p.modulus_bits,
            clip_len=p.clip_len,
            extra_sensitivity=p.extra_sensitivity,
            beta=p.beta,
            scale=p.scale,
        )

    return SecureRoundPlans(**{**plans.__dict__, "counts": quiet(plans.counts), "update": quiet(plans.update)})


def _rows(name: str, values: np.ndarray, length: int) -> np.ndarray:
    if not isinstance(values, np.ndarray) or values.ndim not in (1, 2) or values.shape[-1] != length:
        raise PrivacyError(
            f"{name} must be a numpy array of shape ({length},) or (clients, {length}), "
            f"got {getattr(values, 'shape', type(values).__name__)}"
        )
    out = values.astype(np.float64)
    if not np.all(np.isfinite(out)):
        raise PrivacyError(f"{name} has a non-finite value")
    return out


def counts_upload(
    plans: SecureRoundPlans, one_hots: np.ndarray, *, rotation_seed: int | bytes, rng: np.random.Generator
) -> np.ndarray:
    """Phase-1 residues of the group one-hots (see the module docstring)."""
    if plans.counts is None:
        raise PrivacyError("this layout has no groups: a round has no count phase")
    x = _rows("one_hots", one_hots, plans.count_size)
    if not np.all((x == 0.0) | (x == 1.0)):
        raise PrivacyError("one_hots must be 0 or 1")
    per_block = np.atleast_2d(x).reshape(-1, plans.num_blocks, plans.num_groups).sum(-1)
    if np.any(per_block > 1):
        raise PrivacyError("one_hots must have at most one 1 per block")
    return DistributedEncoder(plans.counts, rotation_seed=rotation_seed).encode(x, rng=rng)


def update_upload(
    plans: SecureRoundPlans, vector: np.ndarray, *, rotation_seed: int | bytes, rng: np.random.Generator
) -> np.ndarray:
    """Phase-2 residues of the layout vector, one-hot coordinates zeroed (see the module docstring)."""
    x = _rows("vector", vector, plans.size)
    x[..., plans.delta_size : plans.delta_size + plans.count_size] = 0.0  # W5: no group one-hots in phase 2
    count = x[..., -1]
    if np.any(count < 0.0) or np.any(count > 1.0):
        raise PrivacyError(
            "the example count must be uploaded as min(count, cap) / cap in [0, 1] "
            "(round.participant.scaled_example_count); got a value outside"
        )
    return DistributedEncoder(plans.update, rotation_seed=rotation_seed).encode(x, rng=rng)


def decode_sum(
    plan: DistributedPlan, ring_sum: np.ndarray, *, survivors: int, rotation_seed: int | bytes
) -> np.ndarray:
    """The ring sum of one phase over ``survivors`` clients -> the float sum (plan.dim,)."""
    ring = np.asarray(ring_sum)
    if ring.dtype.kind not in "iu" or ring.shape != (plan.padded_dim,):
        raise PrivacyError(f"ring_sum must be integers of shape ({plan.padded_dim},), got {ring.dtype} {ring.shape}")
    return DistributedEncoder(plan, rotation_seed=rotation_seed).decode(ring.astype(np.int64), survivors=survivors)


def decode_counts(
    plans: SecureRoundPlans, ring_sum: np.ndarray, *, survivors: int, rotation_seed: int | bytes
) -> np.ndarray:
    """Phase 1 decoded and rounded to integers >= 0: (blocks, groups) int64 (noisy when DP is on)."""
    if plans.counts is None:
        raise PrivacyError("this layout has no groups: a round has no count phase")
    total = decode_sum(plans.counts, ring_sum, survivors=survivors, rotation_seed=rotation_seed)
    return np.clip(np.rint(total), 0, None).astype(np.int64).reshape(plans.num_blocks, plans.num_groups)


def summed_noise_shares(plan: DistributedPlan, n_shares: int, rng: np.random.Generator) -> np.ndarray:
    """One draw of the sum of ``n_shares`` noise shares, (padded_dim,) int64 (simulation shortcut only).

    Exact in distribution for Skellam; for the discrete Gaussian within the D_inf bound tau of
    Kairouz et al. 2021.
    """
    total_var = n_shares * plan.share_variance
    if total_var == 0.0:
        return np.zeros(plan.padded_dim, dtype=np.int64)
    if plan.mechanism == "skellam":
        return sample_skellam(total_var, plan.padded_dim, rng)
    return sample_discrete_gaussian(math.sqrt(total_var), plan.padded_dim, rng)


def add_to_ring(plan: DistributedPlan, ring_sum: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """(ring_sum + noise) mod 2^b."""
    return wrap_to_modulus(
        centered_lift(ring_sum, modulus_bits=plan.modulus_bits) + noise, modulus_bits=plan.modulus_bits
    )


# ----------------------------------------------------------------- a networked round's plans and sessions


def round_plans(spec: RoundSpec, layout: UpdateLayout, num_clients: int) -> SecureRoundPlans:
    """The two integer plans of a networked secure round, from its public parameters only: the server sizes
    the secure sums with them, and each client computes them itself and compares (never trusting the
    announced lengths). The same function as the simulation's secure path."""
    if spec.dp_mode == "local":
        raise ConfigError(
            "local DP has no secure sum; the network runs DP under secure aggregation "
            "(--dp distributed) or none (--dp off)"
        )
    distributed = spec.dp_mode == "distributed"
    return secure_round_plans(
        delta_size=layout.delta_size,
        num_blocks=layout.num_blocks if layout.num_groups else 0,
        num_groups=layout.num_groups,
        dp_mode=spec.dp_mode,
        mechanism=spec.mechanism,
        clip=spec.clip,
        noise_multiplier=spec.noise_multiplier if distributed else 0.0,
        n_clients=num_clients,
        n_min=spec.min_survivors if distributed else 1,
        modulus_bits=spec.modulus_bits,
        count_cap=spec.count_cap,
    )


def plan_configs(
    plans: SecureRoundPlans, num_clients: int, *, options: Mapping[str, int] | None = None
) -> tuple[SecAggConfig, SecAggConfig]:
    """(phase-1 config, phase-2 config): the secure sums sized by the round's plans. Without groups,
    phase 1 sums one zero per client (it only fixes the survivors the update phase is bound to)."""
    extra = dict(options or {})
    if plans.counts is None or plans.counts_max_abs is None:
        counts = SecAggConfig(num_clients=num_clients, vector_length=1, max_abs=1, **extra)
    else:
        counts = SecAggConfig(
            num_clients=num_clients,
            vector_length=plans.counts.padded_dim,
            max_abs=plans.counts_max_abs,
            modulus_bits=plans.counts.modulus_bits,
            **extra,
        )
    update = SecAggConfig(
        num_clients=num_clients,
        vector_length=plans.update.padded_dim,
        max_abs=plans.update_max_abs,
        modulus_bits=plans.update.modulus_bits,
        **extra,
    )
    return counts, update
