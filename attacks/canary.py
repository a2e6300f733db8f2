"""Canary contributions and the exact mechanism check of a cell: the evidence behind R1-R3.

Canaries (Andrew et al. ICLR 2024, "one-shot empirical privacy estimation for FL"): m canary
contributions, not users (no model is trained for them), each included with probability 1/2 from a
sealed seed and unsealed only when the cell is over. Each canary k owns a unit direction u_k (random
signs on a support of its own in the shared parameters, away from the item tables the row attacks read:
the supports are disjoint, so <u_j, u_k> = 0). Canaries are built at 2 C so that the clip decides their
size, and they are worst case for the adjacency the claim is made for:

- individual views (local DP, replace-one): every canary sends an upload in every round, through the real
  mechanism (`PrivacyPipeline.privatize_local`: clip, grid discrete Gaussian): "in" is +C u_k with group
  a_k in every block and example count 1, "out" is -C u_k with group b_k != a_k and count 0. The two
  uploads differ by d_k = (2 C u_k, e_a - e_b per block, 1), of norm sqrt(4 C^2 + 2 B + 1): the whole
  replace-one sensitivity the accountant covers.
- sum views (secure aggregation, zero-out): an included canary adds C u_k to the round's update sum
  through the clients' own encoding (`PrivacyPipeline.audit_rows`: clip, rotation, scaling, rounding; no
  noise share of its own, so the release's noise is the participants'); an excluded one adds nothing.
  Many canaries share one sum, so they can move only their own directions: the delta part (C), not the
  example count or the group one-hots (one coordinate each for everyone). Those parts are checked by the
  noise test below, and the most the canaries could show is stated beside the claim.

Per canary and round the statistic is t = <release - (what the auditor knows was sent by everyone
else), d_k / |d_k|> (sum views: the other participants' clipped updates, which the strong adversary
DP protects against knows; individual views: the canary's own upload, centred between "in" and "out").
The canary's score is sum_r t / (sqrt(R) sigma) at the claimed noise std sigma.

The exact mechanism check (white box; the auditor knows everything that was sent): the release minus
everything the claim says went into it is the noise alone, so every coordinate of it is a sample of
the claimed noise. Counted over every coordinate of every round (sum views: the update sum and, from
the ring sums, the unrounded count sum; individual views: every participant's upload and every
canary's), its variance must equal the claimed one (the noise shares of all participants of the round,
sized for n_min survivors), and its correlation with the noise the run's public seed would give must
be nil. `attacks.grid` turns these into tests under one error budget.
"""

from __future__ import annotations

import math
import secrets
from typing import Any

import numpy as np
import torch

from attacks.scores import binary_scores
from mrff_secure.dp import clip_prefix_l2
from mrff_secure.dp.mechanisms import GridDiscreteGaussian
from mrff_secure.errors import ConfigError
from mrff_secure.federation.client_shard import chunk_blocks
from mrff_secure.federation.privacy_pipeline import AUDIT_ROWS_BLOCK, PrivacyPipeline
from mrff_secure.federation.simulation import ServerView
from mrff_secure.round.encoding import add_to_ring, decode_sum, summed_noise_shares, wrap_to_modulus
from mrff_secure.round.participant import SIMULATION_NOISE_STREAM, dp_generator, rotation_seed
from mrff_secure.round.release import RoundRelease
from mrff_secure.round.spec import Phase

MAX_SUPPORT = 64
PRE_CLIP = 2.0  # canaries are built at PRE_CLIP x C: the clip makes them C
CANARY_STREAM_BLOCK = 2**31 - 2  # the canaries' noise stream of a local-DP round (a block no users have)
ROUND_ZERO = 0


def claimed_noise_std(release: RoundRelease, participants: int, phase: Phase = Phase.UPDATE) -> float:
    """The noise std per coordinate that `release` says a round of `participants` clients adds (float units):
    local DP z C; secure, every participant's share, each sized for n_min survivors: z C' sqrt(n / n_min)."""
    if release.dp_mode == "local":
        return release.noise_multiplier * release.clip
    plans = release.plans()
    if plans is None or release.dp_mode == "off":
        return 0.0
    plan = plans.update if phase == Phase.UPDATE else plans.counts
    if plan is None:
        return 0.0
    return math.sqrt(participants * plan.share_variance) / plan.scale


class NoiseTally:
    """Sums of the residual noise samples of one part of a release: the chi-square test's statistic."""

    def __init__(self) -> None:
        self.samples = 0
        self.sum_squares = 0.0  # sum of (residual / claimed std)^2
        self.cross = 0.0  # sum of residual * seed-replayed noise, both / claimed std
        self.replay_squares = 0.0
        self.replayed_residual_squares = 0.0  # sum of squares of the residuals that have a replay
        self.replayed = 0

    def add(self, residual: np.ndarray, claimed_std: float, replay: np.ndarray | None = None) -> None:
        if claimed_std <= 0:
            return
        r = np.asarray(residual, dtype=np.float64).ravel() / claimed_std
        self.samples += r.size
        self.sum_squares += float(r @ r)
        if replay is not None:
            q = np.asarray(replay, dtype=np.float64).ravel() / claimed_std
            self.cross += float(r @ q)
            self.replay_squares += float(q @ q)
            self.replayed_residual_squares += float(r @ r)
            self.replayed += r.size

    def to_dict(self) -> dict[str, Any]:
        ratio = self.sum_squares / self.samples if self.samples else math.nan
        corr = (
            self.cross / math.sqrt(self.replayed_residual_squares * self.replay_squares)
            if self.replayed and self.replay_squares > 0
            else math.nan
        )
        return {
            "samples": self.samples,
            "sum_squares": self.sum_squares,
            "variance_ratio": ratio,
            "replayed_samples": self.replayed,
            "seed_correlation": corr,
        }


class CanaryAudit:
    """The canaries of one cell and its residual noise: `transform` (before the clients' encoding),
    `rows_for` (the sum views' canary rows), `on_round` (the server's view), `result` (unsealed)."""

    def __init__(
        self,
        pipeline: PrivacyPipeline,
        *,
        num_canaries: int,
        excluded: np.ndarray,
        block_rows: int,
        seed: int | None = None,
    ) -> None:
        if num_canaries < 2:
            raise ConfigError(f"a canary audit needs at least 2 canaries, got {num_canaries}")
        layout = pipeline.layout
        self.pipeline, self.layout, self.m = pipeline, layout, num_canaries
        self.clip = pipeline.clip
        self.individual = pipeline.mode == "local"
        self.block_rows = block_rows
        self.seed = secrets.randbits(64) if seed is None else seed
        rng = np.random.default_rng(self.seed)
        free = np.setdiff1d(np.arange(layout.shared_size), np.asarray(excluded, dtype=np.int64))
        if free.size < num_canaries:
            raise ConfigError(
                f"{num_canaries} canaries need disjoint supports: the shared part has {free.size} coordinates "
                "outside the item tables; use fewer --canaries"
            )
        support = max(1, min(MAX_SUPPORT, free.size // num_canaries))
        self.coords = rng.permutation(free)[: support * num_canaries].reshape(num_canaries, support)
        self.signs = rng.choice([-1.0, 1.0], size=self.coords.shape) / math.sqrt(support)
        self.included = rng.random(num_canaries) < 0.5  # sealed: read only through result()
        blocks, groups = layout.num_blocks if layout.num_groups else 0, layout.num_groups
        self.blocks, self.groups = blocks, groups
        self.group_in = rng.integers(0, max(groups, 1), size=(num_canaries, blocks))
        shift = rng.integers(1, max(groups, 2), size=(num_canaries, blocks))
        self.group_out = (self.group_in + shift) % max(groups, 1) if groups > 1 else self.group_in
        self._canary_rng = rng
        self._known: dict[int, dict[str, np.ndarray]] = {}  # sum views: round -> what the auditor knows was sent
        self._sent: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}  # individual views: (rows, clipped) chunks
        self.suppression_violations = 0  # sum views: slots sent for a group whose released count is too small
        self._replay_round: int | None = None  # sum views: the first round, replayed from the public seed
        self.seed_reproduces_release: bool | None = None
        self._statistic = np.zeros(num_canaries)
        self.rounds = 0
        self.releases_seen = 0
        self.update_noise, self.count_noise = NoiseTally(), NoiseTally()
        self.claimed_release: RoundRelease | None = None  # set by the grid before the first round
        self.threat_model: str | None = None
        if not self.individual:
            pipeline.audit_rows = self.rows_for

    # ------------------------------------------------------------------ inserting
    def _difference(self) -> tuple[np.ndarray, np.ndarray]:
        """Individual views: (m, width) in/out restricted rows after the clip (delta part C u_k, then the
        one-hots, then the example count)."""
        s = self.coords.shape[1]
        width = s + self.blocks * self.groups + 1
        inside, outside = np.zeros((self.m, width)), np.zeros((self.m, width))
        inside[:, :s], outside[:, :s] = self.clip * self.signs, -self.clip * self.signs
        for b in range(self.blocks):
            inside[np.arange(self.m), s + b * self.groups + self.group_in[:, b]] = 1.0
            outside[np.arange(self.m), s + b * self.groups + self.group_out[:, b]] = 1.0
        inside[:, -1] = 1.0
        return inside, outside

    def rows_for(self, phase: int, round_index: int) -> np.ndarray | None:
        """Sum views: the included canaries' rows (before the clip) for the round's update sum."""
        if phase != Phase.UPDATE:
            return None
        chosen = np.flatnonzero(self.included)
        rows = np.zeros((chosen.size, self.layout.size))
        for j, k in enumerate(chosen):
            rows[j, self.coords[k]] = PRE_CLIP * self.clip * self.signs[k]
        return rows

    def transform(self, vectors: torch.Tensor, round_index: int, rows: np.ndarray) -> torch.Tensor:
        """What the participants send, as the claim says it is sent (clipped at C): kept for the residuals."""
        x = vectors.detach().to(torch.float64).numpy()
        clipped, _ = clip_prefix_l2(x, clip=self.clip, prefix_len=self.layout.delta_size)
        if self.individual:
            self._sent.setdefault(round_index, []).append((np.asarray(rows), clipped))
        else:
            if self._replay_round is None:
                self._replay_round = round_index
            if round_index == self._replay_round:  # kept for the seed replay (one round only)
                self._sent.setdefault(round_index, []).append((np.asarray(rows), x.copy()))
            known = self._known.setdefault(round_index, {})
            hots = slice(self.layout.delta_size, self.layout.delta_size + self.blocks * self.groups)
            counts = clipped[:, hots].sum(0)
            clipped[:, hots] = 0.0  # phase 2 carries no one-hots
            known["sum"] = known["sum"] + clipped.sum(0) if "sum" in known else clipped.sum(0)
            known["counts"] = known["counts"] + counts if "counts" in known else counts
        return vectors

    # ------------------------------------------------------------------ reading
    def on_round(self, view: ServerView) -> None:
        self.threat_model = view.threat_model
        if self.claimed_release is None:
            raise ConfigError("the canary audit needs the claimed release before the first round")
        n = len(view.participants)
        if self.individual:
            self._individual_round(view, self._sent.pop(view.round_index, []), n)
        else:
            self._sum_round(view, self._known.pop(view.round_index, {}), n)
        self.rounds += 1
        self.releases_seen += 1

    def _individual_round(self, view: ServerView, sent_chunks: list[tuple[np.ndarray, np.ndarray]], n: int) -> None:
        release = self.claimed_release
        assert release is not None  # checked by on_round
        sigma = claimed_noise_std(release, n)
        if view.individual_updates is None:
            raise ConfigError("an individual view without its uploads")
        uploads = view.individual_updates.detach().to(torch.float64).numpy()
        if not sent_chunks:
            raise ConfigError(f"round {view.round_index}: the canary audit saw no upload before the view")
        rows = np.concatenate([r for r, _ in sent_chunks])
        sent = np.concatenate([v for _, v in sent_chunks])
        position = {int(p): i for i, p in enumerate(np.asarray(view.participants))}
        order = [position[int(r)] for r in rows]
        replay = self._local_replay(view, rows, sent) if view.round_index == ROUND_ZERO else None
        residual = uploads[order] - sent
        delta = self.layout.delta_size
        if replay is not None:
            first = replay.shape[0]
            self.update_noise.add(residual[:first, :delta], sigma, replay[:, :delta])
            self.update_noise.add(residual[first:, :delta], sigma)
        else:
            self.update_noise.add(residual[:, :delta], sigma)
        self.count_noise.add(residual[:, delta:], sigma)  # the one-hots and the example count
        # the canaries' uploads, through the real mechanism
        inside, outside = self._difference()
        chosen = np.where(self.included[:, None], inside, outside)
        s = self.coords.shape[1]
        before = chosen.copy()
        before[:, :s] *= PRE_CLIP
        rng = self.pipeline.chunk_generator(view.round_index, 0, CANARY_STREAM_BLOCK)
        noisy, _ = self.pipeline.privatize_local(torch.from_numpy(before), rng, prefix_len=s)
        y = noisy.numpy()
        self.update_noise.add(y[:, :s] - chosen[:, :s], sigma)
        self.count_noise.add(y[:, s:] - chosen[:, s:], sigma)
        d = inside - outside
        mid = (inside + outside) / 2
        norm = np.linalg.norm(d, axis=1)
        self._statistic += ((y - mid) * d).sum(1) / norm

    def _local_replay(self, view: ServerView, rows: np.ndarray, sent: np.ndarray) -> np.ndarray | None:
        """The noise of the round's first chunk as the run's public seed would draw it (local DP)."""
        chunks = chunk_blocks(np.sort(rows), self.block_rows)
        if not chunks or self.pipeline.noise_multiplier <= 0:
            return None
        block, first = chunks[0]
        if not np.array_equal(rows[: len(first)], first):
            return None  # the hook saw another order: no replay
        generator = dp_generator(self.pipeline.seed, (view.round_index, 0, SIMULATION_NOISE_STREAM, block))
        mechanism = GridDiscreteGaussian(
            noise_multiplier=self.pipeline.noise_multiplier, clip=self.clip, dim=self.layout.size
        )
        return mechanism.add_noise(np.zeros((len(first), self.layout.size)), rng=generator)

    def _sum_round(self, view: ServerView, known: dict[str, np.ndarray], n: int) -> None:
        release = self.claimed_release
        assert release is not None  # checked by on_round
        total = view.summed_update.detach().to(torch.float64).numpy()
        if "sum" not in known:
            raise ConfigError(f"round {view.round_index}: the canary audit saw no upload before the view")
        others = known["sum"]
        self._check_suppression(others, view)
        centred = total - others
        projections = (centred[self.coords] * self.signs).sum(1)  # (m,) <S - others, u_k>
        self._statistic += projections
        canary_sum = np.zeros_like(total)
        for k in np.flatnonzero(self.included):
            canary_sum[self.coords[k]] += self.clip * self.signs[k]
        residual = centred - canary_sum
        sigma = claimed_noise_std(release, n)
        if self.seed_reproduces_release is None and sigma > 0:
            self.seed_reproduces_release = self._replayed_ring(view, n)
        replay = None
        self.update_noise.add(residual, sigma, replay)
        ring_counts = self.pipeline.last_ring_sums.get(Phase.COUNTS)
        plans = self.pipeline.plans_for(n)
        if plans.counts is not None and ring_counts is not None and "counts" in known:
            count_seed = rotation_seed(self.pipeline.seed, view.round_index, Phase.COUNTS)
            decoded = decode_sum(plans.counts, ring_counts, survivors=n, rotation_seed=count_seed)
            self.count_noise.add(decoded - known["counts"], claimed_noise_std(release, n, Phase.COUNTS))

    def _replayed_ring(self, view: ServerView, n: int) -> bool:
        """Sum views: does the run's public seed reproduce the round's update ring sum exactly? Every chunk of
        what was sent (and the canaries) encoded again with the generators a seeded run would use: with DP
        randomness from the operating system the two differ in every coordinate."""
        chunks = self._sent.pop(view.round_index, [])
        actual = self.pipeline.last_ring_sums.get(Phase.UPDATE)
        if not chunks or actual is None:
            return False
        pipeline, r, phase = self.pipeline, view.round_index, Phase.UPDATE
        plan = pipeline.plans_for(n).update

        def seeded(block: int) -> np.random.Generator:  # what `chunk_generator` gives a seeded run
            return dp_generator(pipeline.seed, (r, phase, SIMULATION_NOISE_STREAM, block))

        ring = np.zeros(plan.padded_dim, dtype=np.int64)
        for rows, vectors in chunks:
            block = chunk_blocks(np.sort(rows), self.block_rows)[0][0]
            residues = pipeline.encode_chunk(phase, n, rows, vectors, r, block, rng=seeded(block))
            ring = add_to_ring(plan, ring, wrap_to_modulus(residues.sum(0), modulus_bits=plan.modulus_bits))
        extra = self.rows_for(phase, r)
        if extra is not None and len(extra):
            ring = add_to_ring(plan, ring, pipeline.encode_audit_rows(phase, n, extra, r, seeded(AUDIT_ROWS_BLOCK)))
        if pipeline.settings.noise_sampling == "aggregate" and plan.noise_multiplier > 0:
            noise = summed_noise_shares(plan, n, dp_generator(pipeline.seed, (r, phase, SIMULATION_NOISE_STREAM)))
            ring = add_to_ring(plan, ring, noise)
        return bool(np.array_equal(ring, actual))

    def _check_suppression(self, sent: np.ndarray, view: ServerView) -> None:
        """Count the group slots that were sent although the released count is below the minimum group size."""
        if not self.groups or not view.group_counts.numel():
            return
        size = self.layout.group_size
        small = view.group_counts.detach().to(torch.float64).numpy() < self.pipeline.min_group_size
        for b, g in zip(*np.nonzero(small)):
            start = self.layout.shared_size + (b * self.groups + g) * size
            if np.any(sent[start : start + size] != 0.0):
                self.suppression_violations += 1

    # ------------------------------------------------------------------ unsealing
    def result(self, *, claimed_std: float) -> dict[str, Any]:
        """Unseal: the canaries' scores (normalised at the claimed noise std), the measured shift of an
        included canary against an excluded one, AUC, and the noise tallies."""
        if self.rounds == 0:
            raise ConfigError("the canary audit saw no round")
        included = self.included
        r = self.rounds
        per_round = self._statistic / r  # mean projection per round, float units
        scale = claimed_std * math.sqrt(r) if claimed_std > 0 else 1.0
        scores = self._statistic / scale
        inside, outside = per_round[included], per_round[~included]
        shift = float(inside.mean() - outside.mean()) if inside.size and outside.size else math.nan
        shift_se = (
            claimed_std * math.sqrt(1.0 / (r * inside.size) + 1.0 / (r * outside.size))
            if inside.size and outside.size
            else math.nan
        )
        sensitivity = (
            float(np.linalg.norm(np.subtract(*self._difference())[0])) if self.individual else float(self.clip)
        )
        out: dict[str, Any] = {
            "canaries": self.m,
            "included": int(included.sum()),
            "rounds": r,
            "threat_model": self.threat_model,
            "kind": "individual uploads (replace-one)" if self.individual else "contributions to the sum (zero-out)",
            "support": int(self.coords.shape[1]),
            "sealed_seed": str(self.seed),
            "canary_sensitivity": sensitivity,
            "measured_shift": shift,
            "measured_shift_se": shift_se,
            "claimed_noise_std": claimed_std,
            "suppression_violations": self.suppression_violations,
            "seed_reproduces_release": self.seed_reproduces_release,
            "update_noise": self.update_noise.to_dict(),
            "count_noise": self.count_noise.to_dict(),
        }
        out.update({f"canary_{k}": v for k, v in binary_scores(included, scores).items()})
        out["scores"], out["included"] = scores.tolist(), included.tolist()  # unsealed: the audit is over
        return out
