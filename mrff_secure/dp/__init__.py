"""Differential privacy: clipping, noise mechanisms, accounting (opacus), calibration.

Modules: ``config`` (DPConfig), ``clipping``, ``sensitivity`` (the unclipped count part),
``mechanisms`` (Gaussian, distributed discrete Gaussian, Skellam), ``rotation`` (randomized
Hadamard), ``discretize`` (scaling, conditional rounding, modular clipping), ``distributed``
(encode/decode plan for secure aggregation), ``accounting``, ``calibration``, ``ledger``,
``command`` (the CLI's logic of `mrff privacy`). The accounting of a training round is
`mrff_secure.round.accountant`.
"""

from .accounting import (
    Epsilons,
    discrete_epsilon,
    epsilon,
    gaussian_epsilons,
    local_upload_epsilon,
    prv_epsilon,
    rdp_epsilon,
)
from .calibration import epsilon_for_noise_multiplier, noise_multiplier_for_epsilon, resolve_noise_multiplier
from .clipping import clip_l2, clip_prefix_l2
from .config import DPConfig, default_delta, min_survivors
from .distributed import DistributedEncoder, DistributedPlan, choose_scale, plan_distributed
from .ledger import PrivacyLedger
from .mechanisms import (
    DistributedDiscreteGaussian,
    DistributedSkellam,
    GaussianMechanism,
    GridDiscreteGaussian,
    NoiseMechanism,
    check_survivors,
)
from .rotation import RandomizedHadamard
from .sensitivity import compose_noise_multipliers, count_part_sensitivity, effective_noise_multiplier

__all__ = [
    "DPConfig", "DistributedDiscreteGaussian", "DistributedEncoder", "DistributedPlan", "DistributedSkellam",
    "Epsilons", "GaussianMechanism", "GridDiscreteGaussian", "NoiseMechanism", "PrivacyLedger", "RandomizedHadamard",
    "compose_noise_multipliers", "count_part_sensitivity", "default_delta", "discrete_epsilon",
    "effective_noise_multiplier", "epsilon", "epsilon_for_noise_multiplier", "gaussian_epsilons",
    "local_upload_epsilon", "min_survivors", "noise_multiplier_for_epsilon", "plan_distributed",
    "prv_epsilon", "rdp_epsilon", "resolve_noise_multiplier",
]
