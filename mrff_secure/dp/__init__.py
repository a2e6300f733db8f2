"""Differential privacy: clipping, noise mechanisms, accounting (opacus), calibration.

Modules: ``config`` (DPConfig), ``clipping``, ``sensitivity`` (composing a round's releases),
``mechanisms`` (grid discrete Gaussian, distributed discrete Gaussian, Skellam), ``rotation``
(randomized Hadamard), ``discretize`` (scaling, conditional rounding, modular clipping),
``distributed`` (encode/decode plan for secure aggregation), ``accounting``, ``calibration``. The
accounting of a training round is `mrff_secure.round.accountant`; `mrff privacy` is
`mrff_secure.app.privacy_command`.
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
from .clipping import clip_l2, clip_prefix_l2
from .config import DPConfig, default_delta, min_survivors
from .distributed import DistributedEncoder, DistributedPlan, choose_scale, plan_distributed
from .mechanisms import (
    DistributedDiscreteGaussian,
    DistributedSkellam,
    GridDiscreteGaussian,
    NoiseMechanism,
    check_survivors,
)
from .rotation import RandomizedHadamard
from .sensitivity import compose_noise_multipliers

__all__ = [
    "DPConfig",
    "DistributedDiscreteGaussian",
    "DistributedEncoder",
    "DistributedPlan",
    "DistributedSkellam",
    "Epsilons",
    "GridDiscreteGaussian",
    "NoiseMechanism",
    "RandomizedHadamard",
    "check_survivors",
    "choose_scale",
    "clip_l2",
    "clip_prefix_l2",
    "compose_noise_multipliers",
    "default_delta",
    "discrete_epsilon",
    "epsilon",
    "gaussian_epsilons",
    "local_upload_epsilon",
    "min_survivors",
    "plan_distributed",
    "prv_epsilon",
    "rdp_epsilon",
]
