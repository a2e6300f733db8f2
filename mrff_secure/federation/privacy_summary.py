"""The run summary's `privacy` object: what a training run's privacy pipeline spent and how, in words an
auditor reads (JSON-ready: inf as "inf"). Report prose only; the numbers come from the pipeline's
accountant and plans."""

from __future__ import annotations

from typing import Any

from mrff_secure.federation.privacy_pipeline import NOT_PRIVATE, PrivacyPipeline
from mrff_secure.round.accountant import privacy_warnings


def noise_source(pipeline: PrivacyPipeline) -> str:
    """Where the run's DP randomness came from, in words."""
    if pipeline.settings.insecure_reproducible_noise:
        return "run seed (insecure_reproducible_noise): NOT PRIVATE"
    return "operating-system entropy (round.encoding.secure_generator: PCG64 seeded from os.urandom)"


def privacy_summary(pipeline: PrivacyPipeline, *, participants_per_round: int | None = None) -> dict[str, Any]:
    """The run summary's `privacy` object (JSON-ready: inf as "inf")."""
    account = pipeline.account()
    mode = {"plain": "off", "local": "local", "secure": pipeline.dp.mode}[pipeline.mode]
    out: dict[str, Any] = {
        "private": pipeline.private,
        "mode": mode,
        "secure_aggregation": pipeline.settings.secure_aggregation,
        "noise_multiplier": pipeline.noise_multiplier,
        "target_epsilon": pipeline.dp.target_epsilon,
        "clip": pipeline.clip if pipeline.dp.enabled or pipeline.settings.secure else None,
        "clip_choice": (
            "chosen from private data (declared): the choice of C is released outside the guarantee"
            if pipeline.settings.clip_from_private_data
            else "stated by the operator; the run cannot check that it was chosen without private data"
        ),
        "noise_std": pipeline.noise_multiplier * pipeline.clip if pipeline.dp.enabled else 0.0,
        "noise_source": noise_source(pipeline),
        "delta_source": "given"
        if pipeline.dp.delta is not None
        else f"default 1/n^1.1 with n={pipeline.num_users} users",
        "sample_rate": pipeline.sample_rate,
        "participants_per_round": pipeline.participants,
        "min_group_size": pipeline.min_group_size,
        "count_part": _count_part_note(pipeline),
        **account.to_json(),
        # exactly what was accounted: `dp.account_rounds(dp.RoundRelease(**release), rounds=..., delta=...)`
        "release": pipeline.release.to_dict(),
    }
    out["notes"] = list(out["notes"])
    headline = out["epsilon"]
    out["warnings"] = (
        privacy_warnings(
            epsilon=float("inf") if headline == "inf" else float(headline),
            delta=pipeline.delta,
            noise_multiplier=pipeline.noise_multiplier,
            n_users=pipeline.num_users,
        )
        if pipeline.dp.enabled
        else []
    )
    if pipeline.settings.insecure_reproducible_noise:
        out["not_private"] = NOT_PRIVATE
        out["notes"].insert(0, NOT_PRIVATE)
    if pipeline.settings.clip_from_private_data:
        out["notes"].append("C was chosen from private data: that choice is not covered by epsilon")
    if pipeline.mode == "secure":
        n = participants_per_round or pipeline.participants
        out["noise_sampling"] = pipeline.settings.noise_sampling
        out["modulus_bits"] = pipeline.settings.modulus_bits
        out["max_dropout_fraction"] = pipeline.dp.max_dropout_fraction
        if n >= 3:
            plans = pipeline.plans_for(n)
            p = plans.update
            out["update_plan"] = {
                "dim": p.dim,
                "padded_dim": p.padded_dim,
                "scale": p.scale,
                "n_min": p.n_min,
                "l2_bound": p.l2_bound,
                "share_variance": p.share_variance,
                "modular_clipping_probability": p.clipping.any_coordinate,
                "per_client_max_abs": plans.update_max_abs,
            }
            if plans.counts is not None:
                c = plans.counts
                out["count_plan"] = {
                    "dim": c.dim,
                    "clip": c.clip,
                    "scale": c.scale,
                    "noise_std_counts": c.noise_multiplier * c.clip,
                    "modular_clipping_probability": c.clipping.any_coordinate,
                }
        if pipeline.settings.noise_sampling == "aggregate":
            out["notes"].append(
                "noise_sampling=aggregate: clients encoded without noise and the ring sum received one draw of "
                "the summed shares (exact in distribution for Skellam; within D_inf <= tau for the discrete "
                "Gaussian, Kairouz et al. 2021) - a simulation shortcut, never a client behaviour"
            )
    return out


def _count_part_note(pipeline: PrivacyPipeline) -> dict[str, Any]:
    if pipeline.mode == "plain":
        return {"uploaded": "one-hot group per block and the raw example count", "noised": False}
    if pipeline.mode == "local":
        return {
            "uploaded": "one-hot group per block (weight 1) and min(examples, cap) / cap, in every upload",
            "count_cap": pipeline.count_cap,
            "clipped": False,
            "noised": pipeline.dp.enabled,
            "treatment": "in the replace-one sensitivity sqrt(4C^2 + 2B + 1) of each upload",
            "averaging_counts": "noisy counts summed from the noisy uploads (post-processing; no count phase in "
            "the clear); a group FFN is updated only when its noisy count >= "
            "max(min_group_size, 1, 3 z C sqrt(n))",
        }
    return {
        "uploaded": "phase 1: one-hot group per block (zero-out sensitivity sqrt(B)); phase 2: min(examples, cap) "
        "/ cap beside the clipped delta part (sensitivity sqrt(C^2 + 1)); phase-2 one-hots are zero",
        "count_cap": pipeline.count_cap,
        "clipped": False,
        "noised": pipeline.dp.enabled,
        "averaging_counts": "phase-1 secure count sum (noisy when DP is on), rounded; the same counts decide "
        "suppression",
    }
