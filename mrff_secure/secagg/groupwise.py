"""The group-wise update vector of DESIGN.md and the two-phase round, as pure numpy functions.

Layout of one client's vector (length = d_shared + B*G*d_group + B*G + 1):

    [ shared delta (d_shared) | for each block b, for each group g: group delta (d_group) or zeros |
      for each block: one-hot of the chosen group (G ints) | number of local examples (1 int) ]

Every client fills every group slot (zeros where it is not routed), so the
vector never reveals its group. The delta part is quantized with the
fixed-point codec; the count part is carried exactly as integers, with its
own range [0, max_examples].

Small groups leak (a sum over one user is that user's update), so a round runs
two secure sums: phase 1 sums the count one-hots alone; phase 2 sums the full
vectors, in which clients zero the slot of every group whose phase-1 count is
below min_group_size (default 5, never below 2).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np

from mrff_secure.errors import ConfigError
from mrff_secure.secagg.config import SecAggConfig
from mrff_secure.secagg.encoding import InputRangeError, dequantize, quantize

DEFAULT_MIN_GROUP_SIZE = 5


def check_min_group_size(min_group_size: int) -> None:
    """Refuse a minimum group size below 2: a group of one user would release that user's update."""
    if not isinstance(min_group_size, int) or isinstance(min_group_size, bool) or min_group_size < 2:
        raise ConfigError(f"min_group_size must be an int >= 2 (a group of one leaks its update), got {min_group_size!r}")


@dataclass(frozen=True)
class GroupwiseSum:
    """A decoded phase-2 sum."""

    shared_sum: np.ndarray  # (d_shared,) float64
    group_sums: np.ndarray  # (blocks, groups, d_group) float64
    group_counts: np.ndarray  # (blocks, groups) int64
    example_count: int


@dataclass(frozen=True)
class VectorLayout:
    """Sizes of the flat vector: shared part, per-group part, blocks and groups per block."""

    d_shared: int
    d_group: int
    num_blocks: int
    num_groups: int

    def __post_init__(self) -> None:
        for name in ("d_shared", "d_group", "num_blocks", "num_groups"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"{name} must be a non-negative int, got {value!r}")
        if self.num_blocks > 0 and self.num_groups < 1:
            raise ConfigError(f"num_groups must be >= 1 when there are {self.num_blocks} blocks")

    @property
    def delta_length(self) -> int:
        """Float coordinates: the shared delta and every group slot."""
        return self.d_shared + self.num_blocks * self.num_groups * self.d_group

    @property
    def count_length(self) -> int:
        """Integer coordinates: the one-hots and the example count."""
        return self.num_blocks * self.num_groups + 1

    @property
    def length(self) -> int:
        return self.delta_length + self.count_length

    # --- building and splitting ----------------------------------------------------------

    def one_hots(self, chosen_groups: np.ndarray) -> np.ndarray:
        """(blocks * groups,) int64 one-hot of the group chosen in each block (the phase-1 vector)."""
        chosen = np.asarray(chosen_groups)
        if chosen.shape != (self.num_blocks,) or chosen.dtype.kind not in "iu":
            raise InputRangeError(f"chosen_groups must be ({self.num_blocks},) ints, got {chosen.shape} {chosen.dtype}")
        if chosen.size and (chosen.min() < 0 or chosen.max() >= self.num_groups):
            raise InputRangeError(f"chosen group out of range [0, {self.num_groups})")
        hot = np.zeros((self.num_blocks, self.num_groups), dtype=np.int64)  # (blocks, groups)
        hot[np.arange(self.num_blocks), chosen] = 1
        return hot.reshape(-1)

    def build(self, shared_delta: np.ndarray, group_deltas_per_block: np.ndarray, chosen_groups: np.ndarray,
              num_examples: int, *, suppressed: np.ndarray | None = None) -> np.ndarray:
        """One client's flat float vector. group_deltas_per_block is (blocks, d_group): the delta of the
        group chosen in each block. `suppressed` (blocks, groups) bool zeroes the slots of small groups."""
        shared = np.asarray(shared_delta, dtype=np.float64)
        group = np.asarray(group_deltas_per_block, dtype=np.float64)
        if shared.shape != (self.d_shared,):
            raise InputRangeError(f"shared delta has shape {shared.shape}, expected ({self.d_shared},)")
        if group.shape != (self.num_blocks, self.d_group):
            raise InputRangeError(f"group deltas have shape {group.shape}, expected ({self.num_blocks}, {self.d_group})")
        if not isinstance(num_examples, (int, np.integer)) or num_examples < 0:
            raise InputRangeError(f"num_examples must be a non-negative int, got {num_examples!r}")
        hot = self.one_hots(chosen_groups).reshape(self.num_blocks, self.num_groups)  # (blocks, groups)
        slots = hot[:, :, None] * group[:, None, :]  # (blocks, groups, d_group)
        if suppressed is not None:
            mask = np.asarray(suppressed, dtype=bool)
            if mask.shape != (self.num_blocks, self.num_groups):
                raise InputRangeError(f"suppressed has shape {mask.shape}, expected ({self.num_blocks}, {self.num_groups})")
            slots = np.where(mask[:, :, None], 0.0, slots)
        return np.concatenate([shared, slots.reshape(-1), hot.reshape(-1).astype(np.float64), [float(num_examples)]])

    def split(self, sum_vector: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(shared (d_shared,), group sums (blocks, groups, d_group), group counts (blocks, groups), example count ())."""
        v = np.asarray(sum_vector)
        if v.shape != (self.length,):
            raise InputRangeError(f"vector has shape {v.shape}, expected ({self.length},)")
        a = self.d_shared
        b = self.delta_length
        c = b + self.num_blocks * self.num_groups
        return (v[:a], v[a:b].reshape(self.num_blocks, self.num_groups, self.d_group),
                v[b:c].reshape(self.num_blocks, self.num_groups), v[c])

    # --- encoding ------------------------------------------------------------------------

    def max_abs(self, *, levels: int, max_examples: int) -> int:
        """The largest |integer| a client may send: sizes the modulus (SecAggConfig.max_abs)."""
        return max(levels, max_examples, 1)

    def encode(self, vector: np.ndarray, *, clip: float | np.ndarray, levels: int, max_examples: int,
               rng: np.random.Generator) -> np.ndarray:
        """Quantize the delta part (stochastic rounding) and pass the count part through exactly. (length,) int64."""
        v = np.asarray(vector, dtype=np.float64)
        if v.shape != (self.length,):
            raise InputRangeError(f"vector has shape {v.shape}, expected ({self.length},)")
        counts = v[self.delta_length:]
        if not np.all(counts == np.round(counts)) or counts.min() < 0 or counts.max() > max(max_examples, 1):
            raise InputRangeError(f"count part must be integers in [0, {max_examples}]")
        deltas = quantize(v[:self.delta_length], clip=clip, levels=levels, rng=rng)
        return np.concatenate([deltas, counts.astype(np.int64)])

    def decode(self, total: np.ndarray, *, clip: float | np.ndarray, levels: int) -> GroupwiseSum:
        """Turn the exact integer sum (AggregateResult.total) back into float sums and integer counts."""
        t = np.asarray(total, dtype=np.int64)
        if t.shape != (self.length,):
            raise InputRangeError(f"sum has shape {t.shape}, expected ({self.length},)")
        deltas = dequantize(t[:self.delta_length], clip=clip, levels=levels)
        shared, groups, counts, examples = self.split(np.concatenate([deltas, t[self.delta_length:].astype(np.float64)]))
        return GroupwiseSum(shared.copy(), groups.copy(), counts.astype(np.int64), int(examples))


def suppressed_groups(counts: np.ndarray, min_group_size: int = DEFAULT_MIN_GROUP_SIZE) -> np.ndarray:
    """(blocks, groups) bool: True where the phase-1 count is below min_group_size (that slot is zeroed)."""
    check_min_group_size(min_group_size)
    return np.asarray(counts) < min_group_size


SecureSum = Callable[[SecAggConfig, int, Mapping[int, np.ndarray]], np.ndarray]
"""(config, phase 1 or 2, client id -> signed int vector) -> exact int64 sum over the survivors.
The simulation passes an in-memory round, the gRPC server a networked one."""


def two_phase_round(layout: VectorLayout, secure_sum: SecureSum, *, num_clients: int,
                    shared_deltas: Mapping[int, np.ndarray], group_deltas: Mapping[int, np.ndarray],
                    chosen_groups: Mapping[int, np.ndarray], num_examples: Mapping[int, int],
                    clip: float | np.ndarray, levels: int, max_examples: int, rng: np.random.Generator,
                    min_group_size: int = DEFAULT_MIN_GROUP_SIZE,
                    secagg_options: Mapping[str, int] | None = None) -> tuple[GroupwiseSum, np.ndarray]:
    """Phase 1: secure-sum the one-hots to get the group counts. Phase 2: secure-sum the full vectors
    with the slots of groups below min_group_size zeroed. Returns (decoded phase-2 sum, suppressed mask).

    `rng` drives the stochastic rounding of every client here (a simulation convenience: real
    clients round with their own generator). secagg_options may set num_neighbours / threshold.
    """
    check_min_group_size(min_group_size)
    options = dict(secagg_options or {})
    ids = sorted(shared_deltas)
    count_config = SecAggConfig(num_clients=num_clients, vector_length=layout.num_blocks * layout.num_groups,
                                max_abs=1, **options) if layout.num_blocks else None
    if count_config is not None:
        counts_flat = secure_sum(count_config, 1, {c: layout.one_hots(chosen_groups[c]) for c in ids})
        counts = np.asarray(counts_flat, dtype=np.int64).reshape(layout.num_blocks, layout.num_groups)
    else:
        counts = np.zeros((0, layout.num_groups), dtype=np.int64)
    suppressed = suppressed_groups(counts, min_group_size)
    update_config = SecAggConfig(num_clients=num_clients, vector_length=layout.length,
                                 max_abs=layout.max_abs(levels=levels, max_examples=max_examples), **options)
    vectors = {
        c: layout.encode(layout.build(shared_deltas[c], group_deltas[c], chosen_groups[c], num_examples[c],
                                      suppressed=suppressed),
                         clip=clip, levels=levels, max_examples=max_examples, rng=rng)
        for c in ids
    }
    total = secure_sum(update_config, 2, vectors)
    return layout.decode(total, clip=clip, levels=levels), suppressed
