"""What a round's uploads go through under a privacy mode, and what it costs in epsilon.

Modes (``PrivacySettings``):

- plain (DP off, no secure aggregation): untouched; the simulation's original path runs.
- local DP: each client clips the delta part of its update vector to L2 norm C, uploads the
  example count as min(count, cap) / cap, and adds noise of std z*C to EVERY coordinate (delta
  part, group one-hots, example count) with `dp.GridDiscreteGaussian` (snapped to a fine grid,
  discrete Gaussian noise: no floating-point leak). The server sees each noisy upload.
- secure (distributed DP, or DP off with secure aggregation): each client encodes with the
  functions the network client shares, `federation.client_encoding` (`secure_round_plans`,
  `counts_upload`, `update_upload`, `decode_sum`: clip, rotation, scaling, conditional rounding,
  discrete noise share on every coordinate) into the ring Z_{2^b}; the server obtains only the
  ring sum of each phase.

All DP randomness (local noise; rounding and noise shares) comes from
`client_encoding.secure_generator()`, seeded from the operating system's entropy, never from the
run seed, unless the run sets the debugging switch ``insecure_reproducible_noise``, in which case
every output says "not private".

Accounting: one function for every command, `dp.release` (`RoundRelease`, `RunAccountant`,
`account_rounds`, `calibrate_noise_multiplier`): the headline is the proven bound of the mechanism
actually used, under the adjacency the server's view allows (replace-one in local mode, zero-out
under secure aggregation), for a user who takes part in every round (no amplification by
sampling). See that module.

Which group counts the server divides by (decided here, once):
- local mode: there is no secure aggregation, so a count phase in the clear would reveal every
  client's group with no noise at all. The server therefore uses the NOISY counts, the sum of the
  noisy one-hots it received, for averaging (a group keeps its FFN when its noisy count is below
  max(min_group_size, 1, 3 z C sqrt(n)), three stds of the count noise) and for the next round's
  balance-loss fractions (clamped at 0): post-processing of the DP uploads, no extra privacy
  cost. The shared part is divided by the number of uploads (public: the server sees who uploaded).
- secure mode: the two-phase round. Phase 1 secure-sums the one-hots alone with its own noise
  (std z*sqrt(blocks)); the server rounds the decoded counts to integers, suppresses the groups
  below min_group_size and divides group sums by these same phase-1 counts. Phase 2 secure-sums
  the full vectors with the suppressed slots zeroed and the one-hot coordinates zeroed (W5:
  otherwise phase-1 minus phase-2 counts would reveal the groups of clients that dropped in
  between); its count part is the example count alone, sensitivity 1.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from mrff_secure.dp import DPConfig, clip_prefix_l2
from mrff_secure.dp.mechanisms import GridDiscreteGaussian
from mrff_secure.dp.release import RoundRelease, RunAccountant, calibrate_noise_multiplier, participants_per_round
from mrff_secure.errors import ConfigError, PrivacyError
from mrff_secure.federation.client_encoding import (
    SecureRoundPlans,
    add_to_ring,
    counts_upload,
    decode_sum,
    secure_generator,
    summed_noise_shares,
    update_upload,
    without_noise,
)
from mrff_secure.federation.secure_sum import BACKENDS, RingSum, open_session, round_id_for
from mrff_secure.federation.update_vector import UpdateLayout
from mrff_secure.secagg.groupwise import DEFAULT_MIN_GROUP_SIZE, check_min_group_size

SECURE_SUM_CHOICES = ("off",) + BACKENDS
NOISE_SAMPLING = ("per_client", "aggregate")
DEFAULT_MODULUS_BITS = 48
LOCAL_COUNT_SIGMAS = 3.0  # local mode: a group FFN moves only when its noisy count clears 3 noise stds
NOT_PRIVATE = ("NOT PRIVATE: insecure_reproducible_noise drew the DP noise from the run seed; anyone who knows "
               "the seed can remove it")


@dataclass(frozen=True)
class PrivacySettings:
    """The privacy choices of a training run (validated; see the module docstring).

    secure_sum: "off" (no secure aggregation), "fast" (modular sum of the clients' ring vectors,
    what the protocol outputs) or "inmemory" (the real secagg state machines; small rounds).
    noise_sampling (secure mode): "per_client" (every client draws its share; the faithful
    default) or "aggregate" (fast path only: clients encode without noise and the ring sum gets
    one draw of the summed shares; exact in distribution for Skellam, within the D_inf bound tau
    of Kairouz et al. 2021 for the discrete Gaussian).
    count_cap: the example count is uploaded as min(count, cap) / cap (None: the sequence length).
    min_group_size: None = the federation's min_group_size when it is above 1, else 5 with secure
    aggregation and 1 without; never below 2 when secure.
    insecure_reproducible_noise: a DEBUGGING switch, off by default: draw the DP noise from the run
    seed instead of the operating system's entropy. Anyone who knows the seed can then remove the
    noise; every output of such a run says "not private".
    clip_from_private_data: the operator declares that C was chosen by looking at private data
    (e.g. measured update norms): the choice itself is then released outside the guarantee.
    """

    dp: DPConfig = field(default_factory=DPConfig)
    secure_sum: str = "off"
    modulus_bits: int = DEFAULT_MODULUS_BITS
    noise_sampling: str = "per_client"
    count_cap: int | None = None
    min_group_size: int | None = None
    insecure_reproducible_noise: bool = False
    clip_from_private_data: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.dp, DPConfig):
            raise ConfigError(f"PrivacySettings.dp must be a DPConfig, got {type(self.dp).__name__}")
        if self.secure_sum not in SECURE_SUM_CHOICES:
            raise ConfigError(f"secure_sum must be one of {SECURE_SUM_CHOICES}, got {self.secure_sum!r}")
        if self.dp.mode == "distributed" and self.secure_sum == "off":
            raise ConfigError("distributed DP needs secure aggregation: set secure_sum to 'fast' or 'inmemory'")
        if self.dp.mode == "local" and self.secure_sum != "off":
            raise ConfigError("local DP runs without secure aggregation here (each noisy upload is seen); "
                              f"got secure_sum={self.secure_sum!r}")
        if isinstance(self.modulus_bits, bool) or not isinstance(self.modulus_bits, int) \
                or not 8 <= self.modulus_bits <= 62:
            raise ConfigError(f"modulus_bits must be an integer in [8, 62], got {self.modulus_bits!r}")
        if self.noise_sampling not in NOISE_SAMPLING:
            raise ConfigError(f"noise_sampling must be one of {NOISE_SAMPLING}, got {self.noise_sampling!r}")
        if self.noise_sampling == "aggregate" and self.secure_sum != "fast":
            raise ConfigError("noise_sampling='aggregate' is a shortcut of the fast secure sum only")
        if self.count_cap is not None and (isinstance(self.count_cap, bool) or not isinstance(self.count_cap, int)
                                           or self.count_cap < 1):
            raise ConfigError(f"count_cap must be a positive integer, got {self.count_cap!r}")
        for name in ("insecure_reproducible_noise", "clip_from_private_data"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if self.min_group_size is not None:
            if isinstance(self.min_group_size, bool) or not isinstance(self.min_group_size, int) \
                    or self.min_group_size < 1:
                raise ConfigError(f"min_group_size must be a positive integer, got {self.min_group_size!r}")
            if self.secure:
                check_min_group_size(self.min_group_size)

    @property
    def secure(self) -> bool:
        return self.secure_sum != "off"

    @property
    def plain(self) -> bool:
        """DP off and no secure aggregation: the simulation's original path."""
        return not self.dp.enabled and not self.secure

    def resolved_min_group_size(self, federation_min_group_size: int = 1) -> int:
        """The minimum group size in force (see the class docstring); ConfigError below 2 when secure."""
        if self.min_group_size is not None:
            return self.min_group_size
        if federation_min_group_size > 1:
            if self.secure:
                check_min_group_size(federation_min_group_size)
            return federation_min_group_size
        return DEFAULT_MIN_GROUP_SIZE if self.secure else 1


def json_epsilon(value: float | None) -> float | str | None:
    """JSON has no infinity: inf -> "inf" (as `mrff privacy` prints it); None stays null."""
    if value is None:
        return None
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return float(value)


class PrivacyPipeline:
    """Privacy of one training run: per-round client transforms, secure sums, and the accountant."""

    def __init__(self, settings: PrivacySettings, *, layout: UpdateLayout, num_users: int, maxlen: int,
                 rounds: int, sample_rate: float, seed: int, federation_min_group_size: int = 1,
                 participants: int | None = None) -> None:
        self.settings = settings
        self.dp = settings.dp
        self.layout = layout
        self.num_users, self.rounds, self.sample_rate, self.seed = num_users, rounds, sample_rate, seed
        self.participants = participants if participants is not None else participants_per_round(num_users, sample_rate)
        self.count_cap = settings.count_cap if settings.count_cap is not None else maxlen
        self.min_group_size = settings.resolved_min_group_size(federation_min_group_size)
        self.delta = self.dp.resolve_delta(num_users)
        self.clip = float(self.dp.clip)
        self.blocks = layout.num_blocks if layout.num_groups else 0
        template = self._release(0.0 if not self.dp.enabled else 1.0)
        if not self.dp.enabled:
            self.noise_multiplier = 0.0
        elif self.dp.noise_multiplier is not None:
            self.noise_multiplier = float(self.dp.noise_multiplier)
        else:
            target = self.dp.target_epsilon
            if target is None:  # DPConfig guarantees one of the two
                raise PrivacyError("DPConfig has neither noise_multiplier nor target_epsilon")
            self.noise_multiplier = calibrate_noise_multiplier(template, target_epsilon=target,
                                                               rounds=max(rounds, 1), delta=self.delta)
        self.release = template.with_noise_multiplier(self.noise_multiplier)
        self.accountant = RunAccountant(self.release, delta=self.delta, sample_rate=sample_rate)
        self.accounted_noise_multiplier = self.release.accounted_noise_multiplier()
        self._plans: dict[int, SecureRoundPlans] = {}
        self.last_ring_sums: dict[int, np.ndarray] = {}  # phase -> ring sum of the last round (audit, tests)

    def _release(self, z: float, participants: int | None = None) -> RoundRelease:
        """The public description of this run's rounds at noise multiplier z (`dp.release`)."""
        n = self.participants if participants is None else participants
        return RoundRelease(
            dp_mode=self.dp.mode, secure_aggregation=self.settings.secure, clip=self.clip, noise_multiplier=z,
            num_blocks=self.blocks, num_groups=self.layout.num_groups if self.blocks else 0,
            delta_size=self.layout.delta_size, participants=n,
            n_min=self.dp.min_survivors(n) if self.settings.secure else None,
            mechanism=self.mechanism if self.dp.mode == "distributed" else None,
            modulus_bits=self.settings.modulus_bits, count_cap=self.count_cap, rounding_beta=self.dp.rounding_beta,
            single_noise_draw=self.settings.noise_sampling == "aggregate")

    # ------------------------------------------------------------ properties
    @property
    def mode(self) -> str:
        if self.dp.mode == "local":
            return "local"
        return "secure" if self.settings.secure else "plain"

    @property
    def mechanism(self) -> str:
        if self.mode == "secure":
            return self.dp.mechanism if self.dp.mechanism is not None else "discrete_gaussian"
        if self.mode == "local":
            return GridDiscreteGaussian.name
        return self.dp.mechanism_name

    @property
    def private(self) -> bool:
        """False when the run's outputs carry no guarantee at all (DP off, or reproducible noise)."""
        return self.dp.enabled and self.noise_multiplier > 0 and not self.settings.insecure_reproducible_noise

    def scaled_examples(self, num_examples: torch.Tensor) -> torch.Tensor:
        """The uploaded example count: min(count, cap) / cap, in [0, 1] (sensitivity 1)."""
        return num_examples.clamp(max=float(self.count_cap)) / float(self.count_cap)

    def noise_generator(self, round_index: int, phase: int) -> np.random.Generator:
        """The generator of a round's DP randomness (phase 0: local noise; 1, 2: the secure phases).

        `client_encoding.secure_generator()` (OS entropy) unless the run asked for
        insecure_reproducible_noise, a debugging switch that derives it from the run seed and marks
        every output of the run as not private.
        """
        if self.settings.insecure_reproducible_noise:
            return np.random.default_rng(np.random.SeedSequence([self.seed, round_index, phase, 31]))
        return secure_generator()

    def chunk_generator(self, round_index: int, phase: int, block: int) -> np.random.Generator:
        """The generator of one chunk's DP randomness (local noise, or the rounding of a secure phase where
        clients do not draw from their own generators). A chunk is a block of `chunk_size` user rows
        (simulation.chunk_blocks), so the draws do not depend on how clients are spread over processes.
        OS entropy unless the run is marked not private (insecure_reproducible_noise)."""
        if self.settings.insecure_reproducible_noise:
            return np.random.default_rng(np.random.SeedSequence([self.seed, round_index, phase, 31, int(block)]))
        return secure_generator()

    def client_noise_generator(self, round_index: int, phase: int, client: int) -> np.random.Generator:
        """Reproducible mode only: one client's generator of a secure phase, the very one a network client
        run with --insecure-reproducible-noise --client-seed SEED draws from (SEED = the run seed), so that
        a networked run can be compared with this simulation bit for bit."""
        if not self.settings.insecure_reproducible_noise:
            raise PrivacyError("per-client reproducible generators exist only with insecure_reproducible_noise")
        return np.random.default_rng([self.seed, round_index, phase, int(client)])

    # ------------------------------------------------------------ local mode
    def privatize_local(self, vectors: torch.Tensor, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Clip each row's delta part to C, add grid discrete Gaussian noise of std z*C to every coordinate.

        Returns (uploads in the vectors' dtype: a post-processing cast, norms before clipping).
        """
        rows = vectors.detach().to(torch.float64).numpy()  # (clients, size)
        clipped, norms = clip_prefix_l2(rows, clip=self.clip, prefix_len=self.layout.delta_size)
        mechanism = GridDiscreteGaussian(noise_multiplier=self.noise_multiplier, clip=self.clip, dim=rows.shape[1])
        noisy = mechanism.add_noise(clipped, rng=rng)
        return torch.from_numpy(noisy).to(vectors.dtype), torch.from_numpy(np.asarray(norms))

    def local_count_floor(self, num_uploads: int) -> float:
        """The smallest noisy count a group FFN is updated with: max(min_group_size, 1, 3 sigma).

        sigma = z*C*sqrt(n) is the std of the noise in a summed count (public: z, C and n are
        known). Below three sigmas a count is indistinguishable from noise, and dividing a
        noise-dominated slot sum by it would move the FFN by noise of order 1/count per coordinate.
        """
        sigma = self.noise_multiplier * self.clip * math.sqrt(num_uploads)
        return max(float(self.min_group_size), 1.0, LOCAL_COUNT_SIGMAS * sigma)

    def local_averaging_counts(self, noisy_counts: torch.Tensor, num_uploads: int) -> torch.Tensor:
        """Counts to divide group sums by: the noisy counts, or 0 (keep the FFN) below `local_count_floor`."""
        floor = self.local_count_floor(num_uploads)
        return torch.where(noisy_counts >= floor, noisy_counts, torch.zeros_like(noisy_counts))

    # ------------------------------------------------------------ secure mode
    def _plans_for(self, n: int) -> SecureRoundPlans:
        """The round's plans from public parameters (`client_encoding.secure_round_plans`), cached per n."""
        if n not in self._plans:
            if n < 3:
                raise ConfigError(f"secure aggregation needs at least 3 participants per round, got {n}")
            self._plans[n] = self._release(self.noise_multiplier, n).plans()
        return self._plans[n]

    def rotation_seed(self, round_index: int, phase: int) -> int:
        """The rotation seed of a round's phase: public, shared by the round's clients and the server."""
        return int(np.random.SeedSequence([self.seed, round_index, phase, 23]).generate_state(1)[0])

    def _phase_plan(self, phase: int, num_clients: int):
        plans = self._plans_for(num_clients)
        return plans, (plans.counts if phase == 1 else plans.update)

    def secure_session(self, phase: int, num_clients: int, round_index: int):
        """A fresh secure-sum session of the configured backend for one phase of a round."""
        _, plan = self._phase_plan(phase, num_clients)
        return open_session(self.settings.secure_sum, num_clients=num_clients, dim=plan.padded_dim,
                            modulus_bits=plan.modulus_bits, round_id=round_id_for(round_index, phase))

    def partial_session(self, phase: int, num_clients: int, round_index: int) -> RingSum:
        """A ring sum over some of a round's clients (another process's share of the fast secure sum)."""
        if self.settings.secure_sum != "fast":
            raise ConfigError(f"secure_sum={self.settings.secure_sum!r} cannot be split over processes; use 'fast'")
        return self.secure_session(phase, num_clients, round_index)

    def encode_chunk(self, phase: int, num_clients: int, ids: np.ndarray, vectors: np.ndarray, round_index: int,
                     block: int) -> np.ndarray:
        """The clients' side of a secure phase: each row (float64) encoded with the shared client encoding
        (clip, rotation, scaling, conditional rounding, noise share) into ring residues (chunk, padded)."""
        plans, plan = self._phase_plan(phase, num_clients)
        aggregate = self.settings.noise_sampling == "aggregate" and plan.noise_multiplier > 0
        client_plans = without_noise(plans) if aggregate else plans
        upload = counts_upload if phase == 1 else update_upload
        seed = self.rotation_seed(round_index, phase)
        if self.settings.insecure_reproducible_noise and not aggregate:  # each client from its own generator,
            return np.stack([upload(client_plans, row, rotation_seed=seed,  # as a network client draws
                                    rng=self.client_noise_generator(round_index, phase, c))
                             for c, row in zip(ids, vectors)])
        return upload(client_plans, vectors, rotation_seed=seed, rng=self.chunk_generator(round_index, phase, block))

    def finish_secure_sum(self, phase: int, num_clients: int, ring: np.ndarray, round_index: int) -> np.ndarray:
        """The server's side: the ring sum of the phase (plus the one summed noise draw of the 'aggregate'
        shortcut), decoded to floats (dim,)."""
        _, plan = self._phase_plan(phase, num_clients)
        if self.settings.noise_sampling == "aggregate" and plan.noise_multiplier > 0:
            # One draw of the sum of n shares per coordinate (see PrivacySettings.noise_sampling).
            ring = add_to_ring(plan, ring, summed_noise_shares(plan, num_clients, self.noise_generator(round_index, phase)))
        self.last_ring_sums[phase] = ring.copy()
        return decode_sum(plan, ring, survivors=num_clients, rotation_seed=self.rotation_seed(round_index, phase))

    def _secure_sum(self, phase: int, participants: np.ndarray, chunks, round_index: int) -> np.ndarray:
        """Encode each chunk (ids, float rows, block) with the shared client encoding, secure-sum, decode (dim,)."""
        n = len(participants)
        session = self.secure_session(phase, n, round_index)
        for ids, vectors, block in chunks:
            session.add(ids, self.encode_chunk(phase, n, ids, vectors, round_index, block))  # (chunk, padded)
        return self.finish_secure_sum(phase, n, session.finish(), round_index)

    def secure_counts(self, participants: np.ndarray, one_hots: torch.Tensor, round_index: int) -> torch.Tensor:
        """Phase 1: the secure (noisy when DP is on) sum of the one-hots, rounded to integers >= 0. (blocks, groups)."""
        plan = self._plans_for(len(participants)).counts
        if plan is None:
            return torch.zeros(0, 0, dtype=one_hots.dtype)
        chunks = [(participants, one_hots.to(torch.float64).numpy(), 0)]  # (clients, blocks * groups): tiny
        total = self._secure_sum(1, participants, chunks, round_index)
        counts = np.clip(np.rint(total), 0, None).reshape(self.layout.num_blocks, self.layout.num_groups)
        return torch.as_tensor(counts, dtype=one_hots.dtype)

    def suppressed(self, counts: torch.Tensor) -> torch.Tensor:
        """(blocks, groups) bool: phase-1 counts below min_group_size, zero included (a noisy count can read 0
        while a member exists: its slot must be zeroed too). The network client applies the same rule."""
        return counts < self.min_group_size

    # ------------------------------------------------------------ accounting
    def record_round(self) -> dict[str, Any]:
        """Record one finished round; return the epsilon spent so far (JSON-ready) for metrics.jsonl."""
        eps = self.accountant.record_round()
        row: dict[str, Any] = {"epsilon": json_epsilon(eps), "private": self.private}
        if self.settings.insecure_reproducible_noise:
            row["not_private"] = NOT_PRIVATE
        return row

    def summary(self, *, participants_per_round: int | None = None) -> dict[str, Any]:
        """The run summary's `privacy` object (JSON-ready: inf as "inf")."""
        account = self.accountant.account()
        mode = {"plain": "off", "local": "local", "secure": self.dp.mode}[self.mode]
        out: dict[str, Any] = {
            "private": self.private,
            "mode": mode,
            "secure_aggregation": self.settings.secure_sum,
            "noise_multiplier": self.noise_multiplier,
            "target_epsilon": self.dp.target_epsilon,
            "clip": self.clip if self.dp.enabled or self.settings.secure else None,
            "clip_choice": ("chosen from private data (declared): the choice of C is released outside the guarantee"
                            if self.settings.clip_from_private_data else
                            "stated by the operator; the run cannot check that it was chosen without private data"),
            "noise_std": self.noise_multiplier * self.clip if self.dp.enabled else 0.0,
            "noise_source": ("run seed (insecure_reproducible_noise): NOT PRIVATE"
                             if self.settings.insecure_reproducible_noise else
                             "operating-system entropy (client_encoding.secure_generator: PCG64 seeded from os.urandom)"),
            "delta_source": "given" if self.dp.delta is not None else f"default 1/n^1.1 with n={self.num_users} users",
            "sample_rate": self.sample_rate,
            "participants_per_round": self.participants,
            "min_group_size": self.min_group_size,
            "count_part": self._count_part_note(),
            **account.to_json(),
            # exactly what was accounted: `dp.account_rounds(dp.RoundRelease(**release), rounds=..., delta=...)`
            "release": dict(self.release.__dict__),
        }
        out["notes"] = list(out["notes"])
        from mrff_secure.dp.release import privacy_warnings

        headline = out["epsilon"]
        out["warnings"] = privacy_warnings(epsilon=float("inf") if headline == "inf" else float(headline),
                                           delta=self.delta, noise_multiplier=self.noise_multiplier,
                                           n_users=self.num_users) if self.dp.enabled else []
        if self.settings.insecure_reproducible_noise:
            out["not_private"] = NOT_PRIVATE
            out["notes"].insert(0, NOT_PRIVATE)
        if self.settings.clip_from_private_data:
            out["notes"].append("C was chosen from private data: that choice is not covered by epsilon")
        if self.mode == "secure":
            n = participants_per_round or self.participants
            out["noise_sampling"] = self.settings.noise_sampling
            out["modulus_bits"] = self.settings.modulus_bits
            out["max_dropout_fraction"] = self.dp.max_dropout_fraction
            if n >= 3:
                plans = self._plans_for(n)
                p = plans.update
                out["update_plan"] = {"dim": p.dim, "padded_dim": p.padded_dim, "scale": p.scale, "n_min": p.n_min,
                                      "l2_bound": p.l2_bound, "share_variance": p.share_variance,
                                      "modular_clipping_probability": p.clipping.any_coordinate,
                                      "per_client_max_abs": plans.update_max_abs}
                if plans.counts is not None:
                    c = plans.counts
                    out["count_plan"] = {"dim": c.dim, "clip": c.clip, "scale": c.scale,
                                         "noise_std_counts": c.noise_multiplier * c.clip,
                                         "modular_clipping_probability": c.clipping.any_coordinate}
            if self.settings.noise_sampling == "aggregate":
                out["notes"].append(
                    "noise_sampling=aggregate: clients encoded without noise and the ring sum received one draw of "
                    "the summed shares (exact in distribution for Skellam; within D_inf <= tau for the discrete "
                    "Gaussian, Kairouz et al. 2021) - a simulation shortcut, never a client behaviour")
        return out

    def _count_part_note(self) -> dict[str, Any]:
        if self.mode == "plain":
            return {"uploaded": "one-hot group per block and the raw example count", "noised": False}
        if self.mode == "local":
            return {
                "uploaded": "one-hot group per block (weight 1) and min(examples, cap) / cap, in every upload",
                "count_cap": self.count_cap, "clipped": False, "noised": self.dp.enabled,
                "treatment": "in the replace-one sensitivity sqrt(4C^2 + 2B + 1) of each upload",
                "averaging_counts": "noisy counts summed from the noisy uploads (post-processing; no count phase in "
                                    "the clear); a group FFN is updated only when its noisy count >= "
                                    "max(min_group_size, 1, 3 z C sqrt(n))",
            }
        return {
            "uploaded": "phase 1: one-hot group per block (zero-out sensitivity sqrt(B)); phase 2: min(examples, cap) "
                        "/ cap beside the clipped delta part (sensitivity sqrt(C^2 + 1)); phase-2 one-hots are zero",
            "count_cap": self.count_cap, "clipped": False, "noised": self.dp.enabled,
            "averaging_counts": "phase-1 secure count sum (noisy when DP is on), rounded; the same counts decide "
                                "suppression",
        }

    def describe(self) -> dict[str, Any]:
        """The settings as a JSON-able dict (for the run's config)."""
        out = asdict(self.settings)
        out["dp"] = self.dp.to_dict()
        return out
