"""What a round's uploads go through under a privacy mode, and what it costs in epsilon.

Modes (``PrivacySettings``):

- plain (DP off, no secure aggregation): untouched; the simulation's original path runs.
- local DP: each client clips the delta part of its update vector to L2 norm C, uploads the
  example count as min(count, cap) / cap, and adds noise of std z*C to EVERY coordinate (delta
  part, group one-hots, example count) with `dp.GridDiscreteGaussian` (snapped to a fine grid,
  discrete Gaussian noise: no floating-point leak). The server sees each noisy upload.
- secure (distributed DP, or DP off with secure aggregation): each client encodes with the
  functions the network client shares, `round.encoding` (`secure_round_plans`,
  `counts_upload`, `update_upload`, `decode_sum`: clip, rotation, scaling, conditional rounding,
  discrete noise share on every coordinate) into the ring Z_{2^b}; the server obtains only the
  ring sum of each phase.

All DP randomness (local noise; rounding and noise shares) comes from
`round.encoding.secure_generator()`, seeded from the operating system's entropy, never from the
run seed, unless the run sets the debugging switch ``insecure_reproducible_noise``, in which case
every output says "not private".

Accounting: `round.accountant.RoundAccountant`, one history of `RoundRelease` entries (the headline is
the proven bound of the mechanism actually used, for a user in every round). The counts the server
divides group sums by, per mode, are described in `round.aggregate`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, replace
from typing import Any, Callable

import numpy as np
import torch

from mrff_secure.dp import clip_prefix_l2
from mrff_secure.dp.accounting import json_epsilon
from mrff_secure.dp.discretize import wrap_to_modulus
from mrff_secure.dp.distributed import DistributedPlan
from mrff_secure.dp.mechanisms import GridDiscreteGaussian
from mrff_secure.errors import ConfigError
from mrff_secure.federation.planted_defects import CLIP_SKIPPED_FACTOR
from mrff_secure.round.accountant import PrivacyAccount, RoundAccountant, account_rounds, run_noise_multiplier
from mrff_secure.round.encoding import SecureRoundPlans, add_to_ring, decode_sum, summed_noise_shares, without_noise
from mrff_secure.round.participant import (
    SIMULATION_NOISE_STREAM,
    client_generator,
    dp_generator,
    phase_upload,
    rotation_seed,
    suppressed_groups,
)
from mrff_secure.round.release import RoundRelease, participants_per_round
from mrff_secure.round.secure_sum import RingSum, SecureSumSession, open_session, round_id_for
from mrff_secure.round.spec import Phase, PrivacySettings, SecureAggregation
from mrff_secure.round.update_vector import UpdateLayout

AUDIT_ROWS_BLOCK = 2**31 - 1  # the rounding stream of the audit's rows (a block no chunk of users has)
AUDIT_ROWS_CHUNK = 128  # the audit's rows are encoded this many at a time
NOT_PRIVATE = (
    "NOT PRIVATE: insecure_reproducible_noise drew the DP noise from the run seed; anyone who knows "
    "the seed can remove it"
)


class PrivacyPipeline:
    """Privacy of one training run: per-round client transforms, secure sums, and the accountant."""

    def __init__(
        self,
        settings: PrivacySettings,
        *,
        layout: UpdateLayout,
        num_users: int,
        maxlen: int,
        rounds: int,
        sample_rate: float,
        seed: int,
        federation_min_group_size: int = 1,
        participants: int | None = None,
    ) -> None:
        self.settings = settings
        self.planted_defect: str | None = None  # TESTING THE AUDIT ONLY: set by attacks.grid (`planted_defects`)
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
        self.noise_multiplier = run_noise_multiplier(
            template,
            noise_multiplier=self.dp.noise_multiplier,
            target_epsilon=self.dp.target_epsilon,
            rounds=rounds,
            delta=self.delta,
        )
        self.release = template.with_noise_multiplier(self.noise_multiplier)
        self.accountant = RoundAccountant(delta=self.delta, sample_rate=sample_rate)
        self.accounted_noise_multiplier = self.release.accounted_noise_multiplier()
        self._plans: dict[int, SecureRoundPlans] = {}
        self.last_ring_sums: dict[int, np.ndarray] = {}  # phase -> ring sum of the last round (audit, tests)
        self.audit_rows: Callable[[int, int], np.ndarray | None] | None = None
        """THE AUDIT ONLY: `audit_rows(phase, round_index)` -> float rows (k, phase length) added to a secure
        phase's sum through the clients' encoding (clip, rotation, scaling, rounding) but with no noise share
        of their own: canary contributions (Andrew et al. 2023), not users; the participants' noise is the
        release's noise."""

    def _release(self, z: float, participants: int | None = None) -> RoundRelease:
        """The public description of this run's rounds at noise multiplier z (`round.accountant`)."""
        n = self.participants if participants is None else participants
        return RoundRelease(
            dp_mode=self.dp.mode,
            secure_aggregation=self.settings.secure,
            clip=self.clip,
            noise_multiplier=z,
            num_blocks=self.blocks,
            num_groups=self.layout.num_groups if self.blocks else 0,
            delta_size=self.layout.delta_size,
            participants=n,
            n_min=self.dp.min_survivors(n) if self.settings.secure else None,
            mechanism=self.mechanism if self.dp.mode == "distributed" else None,
            modulus_bits=self.settings.modulus_bits,
            count_cap=self.count_cap,
            rounding_beta=self.dp.rounding_beta,
            single_noise_draw=self.settings.noise_sampling == "aggregate",
        )

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

    @property
    def insecure_seed(self) -> int | None:
        """The seed DP randomness is derived from (insecure_reproducible_noise only), else None: OS entropy."""
        if self.settings.insecure_reproducible_noise or self.planted_defect == "noise_from_seed":
            return self.seed
        return None

    def noise_generator(self, round_index: int, phase: int) -> np.random.Generator:
        """The generator of a round's aggregate DP draw (`round.participant.dp_generator`)."""
        return dp_generator(self.insecure_seed, (round_index, phase, SIMULATION_NOISE_STREAM))

    def chunk_generator(self, round_index: int, phase: int, block: int) -> np.random.Generator:
        """The generator of one chunk's DP randomness (local noise, or the rounding of a secure phase where
        clients do not draw from their own generators). A chunk is a block of `chunk_size` user rows
        (simulation.chunk_blocks), so the draws do not depend on how clients are spread over processes."""
        return dp_generator(self.insecure_seed, (round_index, phase, SIMULATION_NOISE_STREAM, block))

    # ------------------------------------------------------------ local mode
    def privatize_local(
        self, vectors: torch.Tensor, rng: np.random.Generator, *, prefix_len: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Clip each row's delta part to C, add grid discrete Gaussian noise of std z*C to every coordinate.

        Returns (uploads in the vectors' dtype: a post-processing cast, norms before clipping).
        prefix_len (the audit's canaries only): rows hold a subset of an upload's coordinates, the first
        prefix_len of them from the delta part, every other coordinate of the upload zero: the clip is the
        same and each coordinate's noise is drawn alone, so only these need drawing (the grid's spacing, a
        2^-20 C detail, is that of the subset's length).
        """
        rows = vectors.detach().to(torch.float64).numpy()  # (clients, size)
        prefix = self.layout.delta_size if prefix_len is None else prefix_len
        clip = self.clip * CLIP_SKIPPED_FACTOR if self.planted_defect == "clip_skipped" else self.clip
        clipped, norms = clip_prefix_l2(rows, clip=clip, prefix_len=prefix)
        z = self.noise_multiplier * (0.5 if self.planted_defect == "noise_halved" else 1.0)
        mechanism = GridDiscreteGaussian(noise_multiplier=z, clip=self.clip, dim=rows.shape[1])
        noisy = mechanism.add_noise(clipped, rng=rng)
        if self.planted_defect == "count_phase_noiseless":  # the one-hots and the count, snapped, no noise
            noisy[:, prefix:] = np.rint(clipped[:, prefix:] / mechanism.gamma) * mechanism.gamma
        return torch.from_numpy(noisy).to(vectors.dtype), torch.from_numpy(np.asarray(norms))

    # ------------------------------------------------------------ secure mode
    def _planned_release(self, n: int) -> RoundRelease:
        """The release the clients' plans are made from: the claimed one, unless a defect is planted."""
        release = self._release(self.noise_multiplier, n)
        defect = self.planted_defect
        if defect == "noise_halved":
            return release.with_noise_multiplier(self.noise_multiplier / 2)
        if defect == "clip_skipped":  # the same noise std z C around a clip 100 times larger
            factor = CLIP_SKIPPED_FACTOR
            return replace(release, clip=self.clip * factor, noise_multiplier=self.noise_multiplier / factor)
        if defect == "dropout_share_uncompensated":
            return replace(release, n_min=n)
        return release

    def plans_for(self, n: int) -> SecureRoundPlans:
        """The round's plans from public parameters (`round.encoding.secure_round_plans`), cached per n."""
        if n not in self._plans:
            if n < 3:
                raise ConfigError(f"secure aggregation needs at least 3 participants per round, got {n}")
            plans = self._planned_release(n).plans()
            if plans is None:
                raise ConfigError("the run has no secure aggregation: a round has no secure plans")
            if self.planted_defect == "count_phase_noiseless":
                plans = replace(plans, counts=without_noise(plans).counts)
            elif self.planted_defect == "clip_skipped":  # the count phase as claimed: only the update's clip moves
                honest = self._release(self.noise_multiplier, n).plans()
                plans = replace(plans, counts=honest.counts if honest is not None else None)
            self._plans[n] = plans
        return self._plans[n]

    def _phase_plan(self, phase: int, num_clients: int) -> tuple[SecureRoundPlans, DistributedPlan]:
        plans = self.plans_for(num_clients)
        plan = plans.counts if phase == Phase.COUNTS else plans.update
        if plan is None:
            raise ConfigError("the round has no count phase: the model has no groups")
        return plans, plan

    def secure_session(self, phase: int, num_clients: int, round_index: int) -> SecureSumSession:
        """A fresh secure-sum session of the configured backend for one phase of a round."""
        _, plan = self._phase_plan(phase, num_clients)
        return open_session(
            self.settings.secure_aggregation.value,
            num_clients=num_clients,
            dim=plan.padded_dim,
            modulus_bits=plan.modulus_bits,
            round_id=round_id_for(round_index, phase),
        )

    def partial_session(self, phase: int, num_clients: int, round_index: int) -> RingSum:
        """A ring sum over some of a round's clients (another process's share of the fast secure sum)."""
        if self.settings.secure_aggregation is not SecureAggregation.FAST:
            raise ConfigError(
                f"secure_aggregation={self.settings.secure_aggregation.value!r} cannot be split over processes; use 'fast'"
            )
        session = self.secure_session(phase, num_clients, round_index)
        if not isinstance(session, RingSum):  # the 'fast' backend's session is a RingSum (`open_session`)
            raise ConfigError(
                f"secure_aggregation={self.settings.secure_aggregation.value!r} opened a {type(session).__name__}"
            )
        return session

    def encode_chunk(
        self,
        phase: int,
        num_clients: int,
        ids: np.ndarray,
        vectors: np.ndarray,
        round_index: int,
        block: int,
        *,
        rng: np.random.Generator | None = None,
    ) -> np.ndarray:
        """The clients' side of a secure phase: each row (float64) encoded with the shared participant encoding
        (clip, rotation, scaling, conditional rounding, noise share) into ring residues (chunk, padded).
        `rng` (the audit's seed replay only): the chunk's generator in place of `chunk_generator`'s."""
        plans, plan = self._phase_plan(phase, num_clients)
        aggregate = self.settings.noise_sampling == "aggregate" and plan.noise_multiplier > 0
        client_plans = without_noise(plans) if aggregate else plans
        seed = rotation_seed(self.seed, round_index, phase)
        if self.settings.insecure_reproducible_noise and not aggregate:  # each client from its own generator,
            return np.stack(
                [
                    phase_upload(
                        client_plans,
                        Phase(phase),
                        row,
                        rotation_seed=seed,  # as a network
                        rng=client_generator(self.seed, round_index, phase, c),
                    )  # client draws
                    for c, row in zip(ids, vectors)
                ]
            )
        generator = rng if rng is not None else self.chunk_generator(round_index, phase, block)
        return phase_upload(client_plans, Phase(phase), vectors, rotation_seed=seed, rng=generator)

    def encode_audit_rows(
        self, phase: int, num_clients: int, rows: np.ndarray, round_index: int, rng: np.random.Generator
    ) -> np.ndarray:
        """The ring sum (padded,) of the audit's rows (`audit_rows`) through the clients' encoding without a
        noise share, AUDIT_ROWS_CHUNK rows at a time."""
        plans, plan = self._phase_plan(phase, num_clients)
        quiet, seed = without_noise(plans), rotation_seed(self.seed, round_index, phase)
        total = np.zeros(plan.padded_dim, dtype=np.int64)
        for start in range(0, len(rows), AUDIT_ROWS_CHUNK):
            chunk = np.asarray(rows[start : start + AUDIT_ROWS_CHUNK], dtype=np.float64)
            residues = phase_upload(quiet, Phase(phase), chunk, rotation_seed=seed, rng=rng)
            total = add_to_ring(plan, total, wrap_to_modulus(residues.sum(0), modulus_bits=plan.modulus_bits))
        return total

    def finish_secure_sum(self, phase: int, num_clients: int, ring: np.ndarray, round_index: int) -> np.ndarray:
        """The server's side: the ring sum of the phase (plus the audit's rows, and the one summed noise draw of
        the 'aggregate' shortcut), decoded to floats (dim,)."""
        _, plan = self._phase_plan(phase, num_clients)
        extra = self.audit_rows(phase, round_index) if self.audit_rows is not None else None
        if extra is not None and len(extra):
            rng = self.chunk_generator(round_index, phase, AUDIT_ROWS_BLOCK)
            ring = add_to_ring(plan, ring, self.encode_audit_rows(phase, num_clients, extra, round_index, rng))
        if self.settings.noise_sampling == "aggregate" and plan.noise_multiplier > 0:
            # One draw of the sum of n shares per coordinate (see PrivacySettings.noise_sampling).
            ring = add_to_ring(
                plan, ring, summed_noise_shares(plan, num_clients, self.noise_generator(round_index, phase))
            )
        self.last_ring_sums[phase] = ring.copy()
        return decode_sum(plan, ring, survivors=num_clients, rotation_seed=rotation_seed(self.seed, round_index, phase))

    def secure_counts(self, participants: np.ndarray, one_hots: torch.Tensor, round_index: int) -> torch.Tensor:
        """Phase 1: the secure (noisy when DP is on) sum of the one-hots, rounded to integers >= 0. (blocks, groups)."""
        plan = self.plans_for(len(participants)).counts
        if plan is None:
            return torch.zeros(0, 0, dtype=one_hots.dtype)
        n = len(participants)
        session = self.secure_session(Phase.COUNTS, n, round_index)
        rows = one_hots.to(torch.float64).numpy()  # (clients, blocks * groups): tiny, one chunk
        session.add(participants, self.encode_chunk(Phase.COUNTS, n, participants, rows, round_index, 0))
        total = self.finish_secure_sum(Phase.COUNTS, n, session.finish(), round_index)
        counts = np.clip(np.rint(total), 0, None).reshape(self.layout.num_blocks, self.layout.num_groups)
        return torch.as_tensor(counts, dtype=one_hots.dtype)

    def suppressed(self, counts: torch.Tensor) -> torch.Tensor:
        """(blocks, groups) bool: `round.participant.suppressed_groups` at this run's minimum group size."""
        floor = 1 if self.planted_defect == "group_of_one_released" else self.min_group_size
        return suppressed_groups(counts, floor)

    # ------------------------------------------------------------ accounting
    def record_round(self) -> dict[str, Any]:
        """Record one finished round; return the epsilon spent so far (JSON-ready) for metrics.jsonl."""
        eps = self.accountant.step(release=self.accounted_release())
        row: dict[str, Any] = {"epsilon": json_epsilon(eps), "private": self.private}
        if self.settings.insecure_reproducible_noise:
            row["not_private"] = NOT_PRIVATE
        return row

    def accounted_release(self) -> RoundRelease:
        """What the accountant is told a round released: the release, unless a defect is planted."""
        if self.planted_defect == "replace_one_as_add_remove" and self.dp.mode == "local" and self.noise_multiplier:
            # the add/remove sensitivity sqrt(C^2 + B + 1) in place of replace-one's: the same curve as the
            # honest sensitivity at a noise multiplier larger by their ratio
            c, b = self.clip, self.blocks
            ratio = math.sqrt(4 * c * c + 2 * b + 1) / math.sqrt(c * c + b + 1)
            return self.release.with_noise_multiplier(self.noise_multiplier * ratio)
        return self.release

    def load_accountant_state(self, state: dict[str, Any]) -> None:
        """Restore the accountant from a checkpoint (a version-1 round count is rounds of this run's release)."""
        self.accountant.load_state_dict(state, release_of_counted_rounds=self.release)

    def account(self) -> PrivacyAccount:
        """The accountant's account of the rounds released so far (zero rounds of this run's release before any)."""
        if not self.accountant.history:
            return account_rounds(self.release, rounds=0, delta=self.delta, sample_rate=self.sample_rate)
        return self.accountant.account()

    def describe(self) -> dict[str, Any]:
        """The settings as a JSON-able dict (for the run's config)."""
        out = asdict(self.settings)
        out["dp"] = self.dp.to_dict()
        return out
