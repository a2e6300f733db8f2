"""Privacy defects planted on purpose, to measure the audit's power (`benchmarks/audit_power.py`).

TESTING THE AUDIT ONLY. Each defect is a switch in the real code path of `PrivacyPipeline` (the noise it
adds, the clip it applies, the counts it suppresses, what it tells its accountant): the run's claim stays
the honest one while the release is not what the claim describes, and `mrff audit` must say so (exit 3).
No command line of a training or network run reaches these switches; an audit cell that plants one
carries its name in the cell's name and in every result.
"""

from __future__ import annotations

from mrff_secure.checks import check_choice

PLANTED_DEFECTS: dict[str, str] = {
    "noise_halved": "every noise draw has half the claimed standard deviation",
    "noise_from_seed": "the DP noise is drawn from the run's public seed (anyone who knows it removes it)",
    "count_phase_noiseless": "the group counts (phase 1; local DP: the one-hot and count coordinates) carry no noise",
    "clip_skipped": "updates are clipped at 100 C instead of the claimed C",
    "dropout_share_uncompensated": "noise shares are sized for every participant, not for the n_min survivors "
    "the claim assumes (a dropped client's share is missing from the sum)",
    "group_of_one_released": "groups below the minimum group size are released, not suppressed",
    "replace_one_as_add_remove": "local DP is accounted for add/remove of a user (sensitivity "
    "sqrt(C^2 + B + 1)) while the server sees identified uploads (replace-one: sqrt(4 C^2 + 2 B + 1))",
}
"""Defect name -> what it breaks. Defects the default audit cannot plant or see are in NOT_PLANTED."""

NOT_PLANTED: dict[str, str] = {
    "input_released_twice": "the simulation releases each round's input once; a second release of the same "
    "input is a network attack, refused by the client's ledger and checked by the audit's network cell",
    "evaluation_exact": "the audit's simulated cells release no federated evaluation, so it neither plants nor "
    "detects an exact evaluation sum; the client refuses to send exact evaluations under its default policy "
    "(tests/network/test_evaluation_dp.py), and the network cell checks that each evaluation is accounted",
    "amplification_with_visible_participation": "the accountant never claims amplification by sampling "
    "(every round is accounted as if the user took part); nothing to plant",
    "masks_reused_across_rounds": "the audit's cells sum in the ring without pairwise masks, so it neither plants "
    "nor detects mask reuse; the protocol derives every mask from keys and a session context fresh for each "
    "(run, round, phase, round body), which the malicious-server row's replayed-bundle attack exercises",
}

CLIP_SKIPPED_FACTOR = 100.0


def check_defect(name: str | None) -> str | None:
    """The defect's name (None: none), refused when unknown."""
    if name is None:
        return None
    return check_choice("planted_defect", name, tuple(PLANTED_DEFECTS))
