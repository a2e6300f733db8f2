"""Aggregation math: from the round's summed update vector to the new global parameters."""

from __future__ import annotations

import torch

from mrff_secure.federation.update_vector import UpdateLayout


def apply_sum(global_params: dict[str, torch.Tensor], layout: UpdateLayout, summed: torch.Tensor,
              num_participants: int, group_counts: torch.Tensor) -> dict[str, torch.Tensor]:
    """New global parameters: shared += sum / participants; group += group sum / group count.

    `group_counts` (blocks, groups) are the counts used for averaging (from the
    count phase); a group with count 0 (or suppressed, whose sum is zero) keeps its FFN.
    """
    shared_sums, group_sums, _, _ = layout.split(summed)
    out = dict(global_params)
    for name, total in shared_sums.items():
        out[name] = global_params[name] + total / num_participants
    for block, names in enumerate(layout.group_names):
        counts = group_counts[block]  # (groups,)
        for name in names:
            total = group_sums[name]  # (groups, *shape)
            scale = torch.where(counts > 0, 1.0 / counts.clamp(min=1), torch.zeros_like(counts))
            out[name] = global_params[name] + total * scale.view(-1, *([1] * (total.dim() - 1)))
    return out
