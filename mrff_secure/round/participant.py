"""What a participant uploads in each phase of a round, from its local result: one function per rule,
called by the simulation's client shard and by the network client alike.

- `rotation_seed`: the public seed of a phase's random rotation (the server announces nothing else:
  every client and the server derive it from the run seed, the round and the phase).
- `scaled_example_count`: the example count a client uploads, min(count, cap) / cap (sensitivity 1).
- `suppressed_groups`: the slots every client zeroes because the phase-1 count of the group is below
  the minimum group size (zero included: a noisy count can read 0 while a member exists).
- `dp_generator`: the generator of a client's DP randomness (rounding, noise): the operating system's
  entropy, or, only under the debugging switch insecure_reproducible_noise, a seed-derived one.
- `update_vectors` / `group_one_hots`: the float vectors of phase 2 and phase 1 before encoding;
  `phase_upload`: their ring residues (`round.encoding`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import numpy as np
import torch

from mrff_secure.round.encoding import SecureRoundPlans, counts_upload, secure_generator, update_upload
from mrff_secure.round.spec import Phase
from mrff_secure.round.update_vector import UpdateLayout

ROTATION_STREAM = 23  # labels the rotation seeds among the run seed's derived streams
SIMULATION_NOISE_STREAM = 31  # labels the simulation's chunk-level (non-client) DP draws


def rotation_seed(run_seed: int, round_index: int, phase: int) -> int:
    """The public seed of a phase's random rotation: shared by the round's clients and the server."""
    return int(np.random.SeedSequence([run_seed, round_index, int(phase), ROTATION_STREAM]).generate_state(1)[0])


def scaled_example_count(num_examples: torch.Tensor, count_cap: int) -> torch.Tensor:
    """The uploaded example count: min(count, cap) / cap, in [0, 1] (sensitivity 1), in the input's dtype."""
    return num_examples.clamp(max=float(count_cap)) / float(count_cap)


CountsT = TypeVar("CountsT", torch.Tensor, np.ndarray)  # the simulation's tensors, the coordinator's arrays


def suppressed_groups(counts: CountsT, min_group_size: int) -> CountsT:
    """(blocks, groups) bool: the phase-1 counts below min_group_size, zero included (a noisy count can
    read 0 while a member exists: its slot must be zeroed too). Every client and the server apply it."""
    return counts < min_group_size


def dp_generator(insecure_seed: int | None, key: Sequence[int]) -> np.random.Generator:
    """The generator of one stream of DP randomness.

    `round.encoding.secure_generator()` (operating-system entropy, never stored) unless the run asked
    for insecure_reproducible_noise (`insecure_seed` set): then the stream is derived from that seed and
    `key` (round, phase, client or chunk), so anyone who knows the seed can remove the noise, and every
    output of such a run says it is not private.
    """
    if insecure_seed is None:
        return secure_generator()
    return np.random.default_rng([int(insecure_seed), *(int(k) for k in key)])


def client_generator(insecure_seed: int | None, round_index: int, phase: int, client: int) -> np.random.Generator:
    """One client's generator of a secure phase: the same stream in the simulation and on a network
    client (so that, with reproducible noise, a networked run equals the simulation bit for bit)."""
    return dp_generator(insecure_seed, (round_index, phase, client))


def group_one_hots(layout: UpdateLayout, routes: torch.Tensor) -> torch.Tensor:
    """Phase-1 input before encoding: (clients, blocks * groups) one-hot of each client's group per block."""
    clients = routes.shape[0]
    return torch.nn.functional.one_hot(routes.long(), layout.num_groups).reshape(clients, -1)


def update_vectors(
    layout: UpdateLayout,
    deltas: dict[str, torch.Tensor],
    routes: torch.Tensor | None,
    num_examples: torch.Tensor,
    *,
    suppressed: torch.Tensor | None,
    count_cap: int,
) -> torch.Tensor:
    """Phase-2 vectors before encoding, (clients, layout.size): the deltas (suppressed slots zeroed), the
    one-hots (zeroed later by the encoder) and the scaled example count."""
    return layout.build(deltas, routes, scaled_example_count(num_examples, count_cap), suppressed)


def phase_upload(
    plans: SecureRoundPlans, phase: Phase, vectors: np.ndarray, *, rotation_seed: int, rng: np.random.Generator
) -> np.ndarray:
    """The ring residues of one phase's float vectors ((size,) or (clients, size)), `round.encoding`'s
    counts or update encoding under the phase's public rotation seed."""
    upload = counts_upload if phase == Phase.COUNTS else update_upload
    return upload(plans, vectors, rotation_seed=rotation_seed, rng=rng)
