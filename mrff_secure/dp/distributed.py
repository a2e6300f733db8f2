"""Distributed mode end to end: plan a round's integer encoding, encode on a client, decode the sum.

Client: clip the delta part to C, rotate (randomized Hadamard, shared seed), scale, round
(conditional randomized rounding), add its noise share, reduce mod 2^b -> residues that the
secure-aggregation layer masks and sums. Server: centered lift of the summed residues, divide by
the scale, rotate back. The modulus is the secure-aggregation layer's choice: we take
``modulus_bits`` and report the modular-clipping probability it implies.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mrff_secure.checks import check_choice, check_int, check_number
from mrff_secure.errors import PrivacyError

from .accounting import DiscreteAccount, discrete_epsilon
from .clipping import clip_l2, clip_prefix_l2
from .config import DEFAULT_ROUNDING_BETA, min_survivors
from .discretize import (
    MAX_MODULUS_BITS,
    ModularClippingReport,
    centered_lift,
    conditional_randomized_round,
    modular_clipping_probability,
    rounded_l2_bound,
    wrap_to_modulus,
)
from .mechanisms import DISTRIBUTED_MECHANISM_CLASSES, check_survivors
from .rotation import RandomizedHadamard, next_power_of_two

DEFAULT_TARGET_CLIP_PROBABILITY = 1e-6
# Keep the scaled floats exactly representable around their fractional part (float64 has 52
# mantissa bits) and the Skellam/Poisson parameters within numpy's sampler range.
MAX_SCALED_NORM = 2.0**40
MAX_SHARE_VARIANCE = 2.0**60
# numpy's Poisson sampler (PTRS) loses accuracy for very large means: measured variance / mean of
# 1.035 at lambda = 1e15 and 1.42 at 1e16, within 1% up to 1e14. Skellam shares are two Poissons
# of mean variance / 2, so their variance is capped at 2^46 (lambda <= 2^45 ~ 3.5e13).
MAX_SKELLAM_SHARE_VARIANCE = 2.0**46


def max_share_variance(mechanism: str | None) -> float:
    """The largest share variance whose samples the mechanism's sampler draws accurately."""
    return MAX_SKELLAM_SHARE_VARIANCE if mechanism == "skellam" else MAX_SHARE_VARIANCE


def max_scale(*, l2_bound: float, noise_std: float, n_min: int, mechanism: str | None = None) -> float:
    """The largest scale the float64 pipeline and the samplers support."""
    cap = MAX_SCALED_NORM / l2_bound
    if noise_std > 0:
        cap = min(cap, math.sqrt(max_share_variance(mechanism) * n_min) / noise_std)
    return cap


def _clip_report(
    *,
    mechanism: str,
    l2_bound: float,
    scale: float,
    padded_dim: int,
    n_clients: int,
    n_min: int,
    noise_std: float,
    modulus_bits: int,
) -> ModularClippingReport:
    share_var = (noise_std * scale) ** 2 / n_min
    return modular_clipping_probability(
        l2_bound=l2_bound,
        scale=scale,
        padded_dim=padded_dim,
        n_clients=n_clients,
        share_variance=share_var,
        modulus_bits=modulus_bits,
        mechanism=mechanism,
    )


def choose_scale(
    *,
    mechanism: str,
    l2_bound: float,
    noise_std: float,
    padded_dim: int,
    n_clients: int,
    n_min: int,
    modulus_bits: int,
    target_clip_probability: float = DEFAULT_TARGET_CLIP_PROBABILITY,
) -> float:
    """Largest scale (1/gamma) whose modular-clipping bound over all coordinates is <= target.

    A larger scale means finer rounding (less discretization error, a rounded-norm bound closer
    to C * scale); the modulus caps it. For the discrete Gaussian the share sigma must also reach
    1/2; PrivacyError if the modulus leaves no admissible scale.
    """
    check_number(
        "target_clip_probability",
        target_clip_probability,
        low=0.0,
        high=1.0,
        low_open=True,
        high_open=True,
        error=PrivacyError,
    )

    def prob(s: float) -> float:
        return _clip_report(
            mechanism=mechanism,
            l2_bound=l2_bound,
            scale=s,
            padded_dim=padded_dim,
            n_clients=n_clients,
            n_min=n_min,
            noise_std=noise_std,
            modulus_bits=modulus_bits,
        ).any_coordinate

    lo, hi = (
        1e-12,
        min(
            float(2**modulus_bits), max_scale(l2_bound=l2_bound, noise_std=noise_std, n_min=n_min, mechanism=mechanism)
        ),
    )
    if prob(hi) <= target_clip_probability:
        lo = hi
    if prob(lo) > target_clip_probability:
        raise PrivacyError(
            f"modulus 2^{modulus_bits} is too small for {n_clients} clients: even the rounding "
            f"errors alone wrap with probability > {target_clip_probability}"
        )
    for _ in range(200):
        mid = math.sqrt(lo * hi)
        if prob(mid) <= target_clip_probability:
            lo = mid
        else:
            hi = mid
        if hi / lo < 1.0 + 1e-6:
            break
    scale = lo
    if mechanism == "discrete_gaussian" and noise_std > 0:
        need = 0.5 * math.sqrt(n_min) / noise_std
        if scale < need:
            raise PrivacyError(
                f"modulus 2^{modulus_bits} allows scale <= {scale:.4g} but the discrete Gaussian share "
                f"needs scale >= {need:.4g} (sigma >= 1/2): use more modulus bits or Skellam"
            )
    return scale


@dataclass(frozen=True)
class DistributedPlan:
    """Everything a round's clients and server agree on, and what it implies.

    dim / padded_dim: update length before / after padding for the rotation; clip_len: how many
    leading coordinates are clipped to ``clip`` (the delta part); extra_sensitivity: L2 bound of
    the unclipped tail (count part); l2_bound = sqrt(clip^2 + extra^2); noise std in the sum,
    float units: noise_multiplier * clip; integer units: times ``scale``.
    """

    mechanism: str
    dim: int
    padded_dim: int
    clip_len: int
    n_clients: int
    n_min: int
    clip: float
    extra_sensitivity: float
    l2_bound: float
    noise_multiplier: float
    scale: float
    modulus_bits: int
    beta: float
    rounded_l2_bound: float
    share_variance: float
    clipping: ModularClippingReport

    def account(self, *, rounds: int, delta: float) -> DiscreteAccount:
        """The discrete mechanism's (epsilon, delta) over ``rounds`` rounds (worst case n_min)."""
        return discrete_epsilon(
            mechanism=self.mechanism,
            noise_multiplier=self.noise_multiplier,
            clip=self.clip,
            scale=self.scale,
            dim=self.padded_dim,
            n_min=self.n_min,
            rounds=rounds,
            delta=delta,
            beta=self.beta,
            l2_bound=self.l2_bound,
        )


def plan_distributed(
    *,
    mechanism: str,
    dim: int,
    n_clients: int,
    clip: float,
    noise_multiplier: float,
    modulus_bits: int,
    max_dropout_fraction: float | None = None,
    n_min: int | None = None,
    clip_len: int | None = None,
    extra_sensitivity: float = 0.0,
    beta: float = DEFAULT_ROUNDING_BETA,
    scale: float | None = None,
    target_clip_probability: float = DEFAULT_TARGET_CLIP_PROBABILITY,
) -> DistributedPlan:
    """Fix a round's distributed-DP parameters; ``scale=None`` picks it with :func:`choose_scale`.

    The noise shares are sized for n_min survivors: give exactly one of ``max_dropout_fraction``
    (n_min = ceil(n (1 - f))) and ``n_min`` itself (1 <= n_min <= n_clients).
    """
    if (max_dropout_fraction is None) == (n_min is None):
        raise PrivacyError("plan_distributed needs exactly one of max_dropout_fraction and n_min")
    check_int("n_clients", n_clients, low=1, error=PrivacyError)
    if n_min is not None:
        check_int(
            "n_min (the survivors the noise shares are sized for)", n_min, low=1, high=n_clients, error=PrivacyError
        )
    check_choice("mechanism", mechanism, DISTRIBUTED_MECHANISM_CLASSES, error=PrivacyError)
    check_int("modulus_bits", modulus_bits, low=2, high=MAX_MODULUS_BITS, error=PrivacyError)
    padded = next_power_of_two(dim)
    clip_len = check_int("clip_len", dim if clip_len is None else clip_len, low=1, high=dim, error=PrivacyError)
    if clip_len == dim and extra_sensitivity != 0.0:
        raise PrivacyError("extra_sensitivity needs an unclipped tail (clip_len < dim)")
    check_number("extra_sensitivity", extra_sensitivity, low=0.0, error=PrivacyError)
    check_number("noise_multiplier", noise_multiplier, low=0.0, error=PrivacyError)
    check_number("clip", clip, low=0.0, low_open=True, error=PrivacyError)
    if n_min is None:
        if max_dropout_fraction is None:  # excluded by the exactly-one check above; kept for the type checker
            raise PrivacyError("plan_distributed needs exactly one of max_dropout_fraction and n_min")
        n_min = min_survivors(n_clients, max_dropout_fraction)
    l2_bound = math.sqrt(clip * clip + extra_sensitivity * extra_sensitivity)
    noise_std = noise_multiplier * clip
    if scale is None:
        scale = choose_scale(
            mechanism=mechanism,
            l2_bound=l2_bound,
            noise_std=noise_std,
            padded_dim=padded,
            n_clients=n_clients,
            n_min=n_min,
            modulus_bits=modulus_bits,
            target_clip_probability=target_clip_probability,
        )
    else:
        check_number("scale", scale, low=0.0, low_open=True, error=PrivacyError)
        largest = max_scale(l2_bound=l2_bound, noise_std=noise_std, n_min=n_min, mechanism=mechanism)
        if scale > largest:
            raise PrivacyError(f"scale={scale} exceeds the supported maximum {largest:.4g} (float64 / sampler range)")
    # constructing the mechanism validates the share (discrete Gaussian sigma >= 1/2)
    mech = DISTRIBUTED_MECHANISM_CLASSES[mechanism](
        noise_multiplier=noise_multiplier, clip=clip, scale=float(scale), n_min=n_min
    )
    report = _clip_report(
        mechanism=mechanism,
        l2_bound=l2_bound,
        scale=float(scale),
        padded_dim=padded,
        n_clients=n_clients,
        n_min=n_min,
        noise_std=noise_std,
        modulus_bits=modulus_bits,
    )
    return DistributedPlan(
        mechanism=mechanism,
        dim=dim,
        padded_dim=padded,
        clip_len=clip_len,
        n_clients=n_clients,
        n_min=n_min,
        clip=float(clip),
        extra_sensitivity=float(extra_sensitivity),
        l2_bound=l2_bound,
        noise_multiplier=float(noise_multiplier),
        scale=float(scale),
        modulus_bits=modulus_bits,
        beta=float(beta),
        rounded_l2_bound=rounded_l2_bound(scaled_norm=l2_bound * float(scale), dim=padded, beta=beta),
        share_variance=mech.share_variance,
        clipping=report,
    )


class DistributedEncoder:
    """Client-side encoding and server-side decoding for one round under a :class:`DistributedPlan`."""

    def __init__(self, plan: DistributedPlan, *, rotation_seed: int | bytes) -> None:
        self.plan = plan
        self.rotation = RandomizedHadamard(plan.dim, seed=rotation_seed)
        self.mechanism = DISTRIBUTED_MECHANISM_CLASSES[plan.mechanism](
            noise_multiplier=plan.noise_multiplier, clip=plan.clip, scale=plan.scale, n_min=plan.n_min
        )

    def encode(self, update: np.ndarray, *, rng: np.random.Generator) -> np.ndarray:
        """Float update (dim,) or (clients, dim) -> residues mod 2^b (int64), (..., padded_dim).

        Clips the first ``clip_len`` coordinates to C; the tail must already lie within
        ``extra_sensitivity`` (PrivacyError otherwise, since its sensitivity was declared).
        """
        p = self.plan
        if not isinstance(update, np.ndarray) or update.shape[-1] != p.dim or update.ndim not in (1, 2):
            raise PrivacyError(f"encode takes a float array of shape (..., {p.dim})")
        x = update.astype(np.float64)
        if p.clip_len < p.dim:
            x, _ = clip_prefix_l2(x, clip=p.clip, prefix_len=p.clip_len)
            tail = np.linalg.norm(np.atleast_2d(x)[:, p.clip_len :], axis=1)
            if np.any(tail > p.extra_sensitivity * (1 + 1e-12)):
                raise PrivacyError(
                    f"the unclipped tail has L2 norm {float(tail.max())} > declared extra_sensitivity "
                    f"{p.extra_sensitivity}"
                )
        else:
            x, _ = clip_l2(x, p.clip)
        rotated = self.rotation.forward(x) * p.scale  # (..., padded)
        rounded = conditional_randomized_round(rotated, norm_bound=p.rounded_l2_bound, rng=rng)
        noisy = self.mechanism.add_noise(rounded, rng=rng)
        return wrap_to_modulus(noisy, modulus_bits=p.modulus_bits)

    def decode(self, summed: np.ndarray, *, survivors: int) -> np.ndarray:
        """Sum of residues mod 2^b (padded_dim,) from ``survivors`` clients -> float sum (dim,).

        Refuses (PrivacyError) a sum over fewer than n_min clients: its noise falls short.
        """
        check_survivors(survivors=survivors, n_min=self.plan.n_min)
        if summed.shape[-1] != self.plan.padded_dim:
            raise PrivacyError(f"decode takes length {self.plan.padded_dim}, got {summed.shape[-1]}")
        signed = centered_lift(summed, modulus_bits=self.plan.modulus_bits).astype(np.float64)
        return self.rotation.inverse(signed / self.plan.scale)
