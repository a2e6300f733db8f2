"""The rules R0-R5 over a grid's cells, one error budget, and the audit's one verdict.

One error budget: every statistical test of the audit (each cell's bounds and mechanism tests, the pooled
noise tests, R3's curve points, every R4 gain and R5 step) shares alpha = 1 - family_confidence
(Bonferroni: each test at alpha / tests), so an honest implementation gets any verdict other than
"holds" with probability at most alpha (default 1%: `benchmarks/audit_power.py` measures it). A rule
never says "holds" where it could not have failed: a claim above what m canaries can certify is "not
refutable at m", and the verdict lists it under what was not tested.

- R0 power, at plain noise 0 (and the canaries at secure aggregation without noise): every attack
  reaches its bar (reconstruction F1, interaction-MIA AUC against the data's own ceiling, attribute
  advantage, group accuracy, canary AUC). Otherwise the audit is inconclusive (exit 3).
- R1 bound, every DP cell with canaries: the one-run lower bounds from the canaries (f-DP, Mahloujifar et
  al. 2024: epsilon for any mechanism at the claim's delta, and mu for a Gaussian trade-off curve)
  stay at or under the claim (epsilon; the claim's GDP mu). Steinke et al.'s one-run bound with delta
  and the split-half Clopper-Pearson bound are shown beside it, not judged.
- R2 mechanism, white box (the auditor knows what was sent): the release minus what was sent has exactly
  the claimed noise variance (two-sided chi-square, pooled over the cells of each threat model, update
  and count parts apart); an included canary moves the release by no more than the claimed sensitivity
  (one-sided z test); the noise is uncorrelated with what the run's public seed would draw; no group
  slot is sent for a group whose released count is below the minimum group size; the server saw no more
  releases than the accountant counted.
- R3 trade-off: at FPR 0.01, 0.05, 0.1 the canary test's TPR lower bound stays under the claimed curve.
- R4 secure aggregation, every sum-view cell: no individual update in the view; under DP no per-user
  attack gains significantly over the population baseline (secure aggregation alone, noise 0: gains are
  findings "secure aggregation alone is not DP", listed in the verdict, since no DP claim is made there).
- R5 monotone: no attack's score above chance grows significantly with more noise.
- malicious-server (and the network cell): every active attack refused or accounted by the real client.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import stats

from attacks.bounds import (
    fdp_one_run_mu_bound,
    gdp_epsilon,
    gdp_mu,
    max_certifiable,
    one_run_epsilon_bound,
    split_half_bound,
    tradeoff_check,
)
from mrff_secure.checks import check_number
from mrff_secure.round.spec import SUM_VIEWS, ThreatModel

DP_THREAT_MODELS = (ThreatModel.SECAGG_DP, ThreatModel.LOCAL_DP)
FAMILY_CONFIDENCE = 0.99  # default: an honest implementation's verdict is "holds" with probability >= 0.99
POWER = {
    "reconstruction_f1": 0.95,
    "membership_auc": 0.9,
    "attribute_advantage": 0.2,
    "group_accuracy": 0.95,
    "canary_auc": 1.0,
}
MEMBERSHIP_CEILING_MARGIN = 0.05
"""Interaction MIA's bar where the data's oracle ceiling is known (`attacks.oracle`: the better of an oracle
that reads the exact rows each user touched and one that reads how often): the ceiling minus this margin,
never above POWER's 0.9. On the synthetic data the ceiling is ~0.92, so the bar is ~0.87; on data where
the oracle is near 1 it stays 0.9."""
R4_MAX_ADVANTAGE = 0.05
R5_TOLERANCE = 0.05
ATTACK_SCORES = ("reconstruction_auc", "membership_auc", "attribute_advantage", "group_advantage", "canary_auc")
CHANCE = {
    "reconstruction_auc": 0.5,
    "membership_auc": 0.5,
    "attribute_advantage": 0.0,
    "group_advantage": 0.0,
    "canary_auc": 0.5,
}
"""Where each score carries no signal: R5 reads max(score, chance), since a score moving about below
chance is no attack getting stronger."""
SUM_VIEW_POPULATION_SCORES = ("reconstruction_auc", "membership_auc")
"""Under a sum view these score every user alike (population level, judged against the population by R4),
so R5 does not read them there."""
TRADEOFF_FPRS = (0.01, 0.05, 0.1)
VERDICT_EXIT = {"holds": 0, "fails": 3, "inconclusive": 3, "no claim tested": 3}


def num(value: Any) -> float:
    """A JSON-ready number ("inf", "nan" strings included) back to float."""
    return float(value)


def _canary_cells(results: list[dict]) -> list[dict]:
    return [r for r in results if r["threat_model"] in DP_THREAT_MODELS and r.get("canary")]


def _r5_series(results: list[dict]) -> list[tuple[str, list[dict], str]]:
    series = []
    for model in DP_THREAT_MODELS:
        for seed in sorted({r["seed"] for r in results}):
            cells = sorted(
                (
                    r
                    for r in results
                    if r["threat_model"] == model
                    and r["seed"] == seed
                    and r["target_epsilon"] is None
                    and r.get("client_fraction", 1.0) >= 1.0
                    and not r.get("planted_defect")
                ),
                key=lambda r: num(r["noise_multiplier"]),
            )
            for attack in ATTACK_SCORES:
                if model in SUM_VIEWS and attack in SUM_VIEW_POPULATION_SCORES:
                    continue
                usable = [c for c in cells if c["scores"].get(attack) is not None]
                if len(usable) >= 2:
                    series.append((f"{model} seed={seed} {attack}", usable, attack))
    return series


def _r4_gains(r: dict) -> dict[str, tuple[float, Any]]:
    se = r.get("standard_errors", {})
    gains = {
        "reconstruction": (num(r["reconstruction"]["advantage_auc"]), se.get("reconstruction_auc")),
        "membership": (num(r["membership"]["advantage_auc"]), se.get("membership_auc")),
        "attributes": (num(r["attributes"]["max_advantage"]), se.get("attribute_advantage")),
    }
    if r["groups"].get("applicable"):
        gains["groups"] = (num(r["groups"]["advantage"]), se.get("group_advantage"))
    if r["scores"].get("disaggregation_rare_advantage") is not None:
        gains["disaggregation_rare_rows"] = (
            num(r["scores"]["disaggregation_rare_advantage"]),
            se.get("disaggregation_rare_advantage"),
        )
    return gains


def count_tests(results: list[dict]) -> dict[str, int]:
    """How many statistical tests each rule runs on these cells (the error budget's denominator)."""
    canaries = _canary_cells(results)
    noise_parts = set()
    for r in canaries:
        for part in ("update_noise", "count_noise"):
            if r["canary"][part]["samples"]:
                noise_parts.add((r["threat_model"], part))
    replays = sum(1 for r in canaries if r["canary"]["update_noise"]["replayed_samples"])
    r4 = sum(len(_r4_gains(r)) for r in results if r["threat_model"] in SUM_VIEWS)
    r5 = sum(len(cells) - 1 for _, cells, _ in _r5_series(results))
    return {
        "R1": 2 * len(canaries),  # f-DP epsilon (any mechanism) and f-DP mu (Gaussian curve)
        "R2": len(noise_parts) + len(canaries) + replays,  # noise (pooled), canary shift, seed replay
        "R3": len(TRADEOFF_FPRS) * len(canaries),
        "R4": r4,
        "R5": r5,
    }


def _power(results: list[dict]) -> dict[str, Any]:
    plain = [r for r in results if r["threat_model"] == ThreatModel.PLAIN and not r.get("planted_defect")]
    if not plain:
        return {"verdict": "inconclusive", "evidence": "no plain cell: the attacks' power is unknown"}
    bars = dict(POWER)
    ceilings = [
        max(num(r["oracle"]["oracle_auc_rows"]), num(r["oracle"]["oracle_auc_counts"]))
        for r in plain
        if r.get("oracle")
    ]
    if ceilings:
        bars["membership_auc"] = min(POWER["membership_auc"], min(ceilings) - MEMBERSHIP_CEILING_MARGIN)
    noiseless_secure = [r for r in results if r["threat_model"] == ThreatModel.SECAGG and r.get("canary")]
    lacking = set()
    evidence: dict[str, Any] = {}
    for r in plain:
        scores = {k: r["scores"].get(k) for k in bars if k != "canary_auc"}
        evidence[r["cell"]] = scores
        lacking |= {k for k, v in scores.items() if v is None or not num(v) >= bars[k]}
    if noiseless_secure:
        aucs = {r["cell"]: r["scores"].get("canary_auc") for r in noiseless_secure}
        evidence.update({cell: {"canary_auc": v} for cell, v in aucs.items()})
        if any(v is None or not num(v) >= bars["canary_auc"] for v in aucs.values()):
            lacking.add("canary_auc")
    return {
        "verdict": "holds" if not lacking else "inconclusive",
        "attacks_without_power": sorted(lacking),
        "thresholds": bars,
        "membership_ceiling": min(ceilings) if ceilings else None,
        "evidence": evidence,
    }


def _bounds(r: dict, alpha_test: float) -> dict[str, Any]:
    claimed, delta = num(r["claim"]["epsilon"]), num(r["claim"]["delta"])
    scores, included = np.asarray(r["canary"]["scores"]), np.asarray(r["canary"]["included"], dtype=bool)
    m = scores.size
    fdp = fdp_one_run_mu_bound(scores, included, alpha=alpha_test, delta=delta)
    eps_bound = num(fdp["epsilon_lower_bound_any_mechanism"])
    mu_bound = num(fdp["mu_lower_bound"])
    mu_claim = gdp_mu(claimed, delta) if math.isfinite(claimed) else math.inf
    certifiable = max_certifiable(m, delta=delta, alpha=alpha_test)
    ceiling = num(certifiable["fdp_epsilon_any_mechanism"])
    mu_ceiling = num(certifiable["fdp_mu"])
    canary = r["canary"]
    # the most these canaries could show if the mechanism is exactly as claimed (infinitely many of them)
    sigma = num(canary["claimed_noise_std"])
    canary_mu = math.sqrt(canary["rounds"]) * num(canary["canary_sensitivity"]) / sigma if sigma > 0 else math.inf
    fails = eps_bound > claimed or mu_bound > mu_claim
    refutable = claimed < ceiling or mu_claim < mu_ceiling
    verdict = "fails" if fails else ("holds" if refutable else "not refutable at m")
    steinke = one_run_epsilon_bound(scores, included, delta=delta, alpha=alpha_test)
    split = split_half_bound(scores, included, delta=delta, alpha=alpha_test, seed=int(canary["sealed_seed"]) % 2**32)
    return {
        "verdict": verdict,
        "claimed_epsilon": claimed,
        "delta": delta,
        "epsilon_lower_bound": eps_bound,
        "claimed_mu": mu_claim,
        "mu_lower_bound": mu_bound,
        "canaries": m,
        "max_certifiable_epsilon": ceiling,
        "max_certifiable_mu": mu_ceiling,
        "max_certifiable_epsilon_gaussian": gdp_epsilon(mu_ceiling, delta),
        "canary_mu_if_as_claimed": canary_mu,
        "canary_epsilon_if_as_claimed": gdp_epsilon(canary_mu, delta) if math.isfinite(canary_mu) else math.inf,
        "second_opinions": {
            "one_run_steinke_epsilon": steinke["epsilon_lower_bound"],
            "split_half_clopper_pearson_epsilon": split["epsilon_lower_bound"],
        },
        "confidence_per_test": 1 - alpha_test,
    }


def detectable_std_shortfall(samples: int, alpha_test: float) -> float:
    """The smallest relative shortfall of the noise std that the two-sided chi-square test over `samples`
    residuals detects with 95% power at `alpha_test` (normal approximation of chi-square, var 2 / samples)."""
    z_a, z_b = float(stats.norm.ppf(1 - alpha_test / 2)), float(stats.norm.ppf(0.95))
    detectable_var = max(0.0, 1.0 - (z_a + z_b) * math.sqrt(2.0 / samples))
    return 1.0 - math.sqrt(detectable_var)


def _two_sided_chi_square(sum_squares: float, samples: int, alpha_test: float) -> dict[str, Any]:
    """sum_squares of `samples` residuals / claimed std: chi-square with `samples` degrees of freedom when the
    noise is exactly the claimed one. Fails on either side (less noise: a privacy defect; more: something was
    released that the claim does not describe)."""
    ratio = sum_squares / samples
    low = float(stats.chi2.cdf(sum_squares, samples))
    p = min(1.0, 2 * min(low, 1.0 - low))
    return {
        "verdict": "fails" if p < alpha_test else "holds",
        "samples": samples,
        "variance_ratio": ratio,
        "variance_ratio_interval": [
            float(stats.chi2.ppf(alpha_test / 2, samples)) / samples,
            float(stats.chi2.ppf(1 - alpha_test / 2, samples)) / samples,
        ],
        "p_value": p,
        "detectable_std_shortfall": detectable_std_shortfall(samples, alpha_test),
    }


def _mechanism(results: list[dict], alpha_test: float) -> dict[str, Any]:
    cells: dict[str, Any] = {}
    pooled: dict[str, Any] = {}
    for model in DP_THREAT_MODELS:
        for part in ("update_noise", "count_noise"):
            tallies = [
                (r["cell"], r["canary"][part])
                for r in _canary_cells(results)
                if r["threat_model"] == model and r["canary"][part]["samples"]
            ]
            if not tallies:
                continue
            total = sum(num(t["sum_squares"]) for _, t in tallies)
            samples = sum(int(t["samples"]) for _, t in tallies)
            test = _two_sided_chi_square(total, samples, alpha_test)
            test["cells"] = {cell: num(t["variance_ratio"]) for cell, t in tallies}
            pooled[f"{model} {part.replace('_', ' ')}"] = test
    z_crit = float(stats.norm.ppf(1 - alpha_test))
    for r in _canary_cells(results):
        canary = r["canary"]
        problems = []
        shift, se = num(canary["measured_shift"]), num(canary["measured_shift_se"])
        sensitivity = num(canary["canary_sensitivity"])
        shift_z = (shift - sensitivity) / se if se > 0 else (math.inf if shift > sensitivity else 0.0)
        if shift_z > z_crit:
            problems.append(
                f"an included canary moves the release by {shift:.4g} (+- {se:.2g}) where the claim allows "
                f"{sensitivity:.4g}: the clip or the sensitivity is not what the claim says"
            )
        update = canary["update_noise"]
        corr = num(update["seed_correlation"]) if update["replayed_samples"] else math.nan
        corr_z = corr * math.sqrt(update["replayed_samples"]) if math.isfinite(corr) else math.nan
        if math.isfinite(corr_z) and corr_z > z_crit:
            problems.append(
                f"the noise correlates {corr:.3f} with the noise the run's public seed draws "
                f"({update['replayed_samples']} samples): anyone who knows the seed removes it"
            )
        if canary.get("seed_reproduces_release"):
            problems.append(
                "the run's public seed reproduces the released ring sum exactly: the DP randomness (rounding and "
                "noise) is not from the operating system, anyone who knows the seed removes the noise"
            )
        if canary.get("suppression_violations"):
            problems.append(
                f"{canary['suppression_violations']} group slots were sent for groups whose released count was "
                f"below the minimum group size {r['claim'].get('min_group_size')}"
            )
        releases, accounted = int(r["view"]["rounds"]), int(r["claim"]["rounds"])
        if releases > accounted:
            problems.append(f"the server saw {releases} releases, the accountant counted {accounted}")
        cells[r["cell"]] = {
            "verdict": "fails" if problems else "holds",
            "problems": problems,
            "measured_shift": shift,
            "measured_shift_se": se,
            "claimed_sensitivity": sensitivity,
            "shift_z": shift_z,
            "seed_correlation": corr,
            "seed_reproduces_release": canary.get("seed_reproduces_release"),
            "update_noise_ratio": num(update["variance_ratio"]),
            "update_noise_samples": int(update["samples"]),
            "detectable_std_shortfall": detectable_std_shortfall(int(update["samples"]), alpha_test)
            if update["samples"]
            else None,
            "count_noise_ratio": num(canary["count_noise"]["variance_ratio"])
            if canary["count_noise"]["samples"]
            else None,
            "suppression_violations": canary.get("suppression_violations", 0),
            "releases_seen": releases,
            "releases_accounted": accounted,
        }
    verdicts = [c["verdict"] for c in cells.values()] + [t["verdict"] for t in pooled.values()]
    return {
        "verdict": ("fails" if "fails" in verdicts else "holds") if verdicts else "not applicable",
        "pooled_noise": pooled,
        "cells": cells,
    }


def _rule_verdict(cells: dict) -> str:
    verdicts = {c["verdict"] for c in cells.values()}
    if "fails" in verdicts:
        return "fails"
    if not verdicts:
        return "not applicable"
    if "not private without noise" in verdicts:
        return "holds under DP; not private without noise"
    return "holds" if "holds" in verdicts else "not refutable at m"


def evaluate_rules(results: list[dict], *, family_confidence: float = FAMILY_CONFIDENCE) -> dict[str, Any]:
    """The verdict of every rule, with its evidence, every test at alpha / tests (see the module docstring)."""
    check_number("the audit's confidence", family_confidence, low=0.5, high=1.0, high_open=True)
    alpha = 1.0 - family_confidence
    tests = count_tests(results)
    total = max(1, sum(tests.values()))
    alpha_test = alpha / total
    z_crit = float(stats.norm.ppf(1.0 - alpha_test))
    budget = {"alpha": alpha, "tests": tests, "total_tests": total, "alpha_per_test": alpha_test}
    rules: dict[str, Any] = {"R0": _power(results)}
    r1, r3 = {}, {}
    for r in _canary_cells(results):
        r1[r["cell"]] = _bounds(r, alpha_test)
        scores, included = np.asarray(r["canary"]["scores"]), np.asarray(r["canary"]["included"], dtype=bool)
        r3[r["cell"]] = tradeoff_check(
            scores,
            included,
            epsilon=num(r["claim"]["epsilon"]),
            delta=num(r["claim"]["delta"]),
            fprs=TRADEOFF_FPRS,
            alpha=alpha_test * len(TRADEOFF_FPRS),
            seed=r["seed"],
        )
    rules["R1"] = {"verdict": _rule_verdict(r1), "cells": r1}
    rules["R2"] = _mechanism(results, alpha_test)
    rules["R3"] = {"verdict": _rule_verdict(r3), "cells": r3}
    r4 = {}
    for r in results:
        if r["threat_model"] not in SUM_VIEWS:
            continue
        gains = _r4_gains(r)
        significant = {
            name: gain
            for name, (gain, error) in gains.items()
            if gain > R4_MAX_ADVANTAGE + z_crit * (num(error) if error is not None else 0.0)
        }
        findings = []
        noiseless = r["threat_model"] == ThreatModel.SECAGG
        if noiseless and significant:
            findings.append(
                "per-user attacks gain over the population under secure aggregation without noise ("
                + ", ".join(f"{k} {v:+.3f}" for k, v in significant.items())
                + "): secure aggregation alone is not DP"
            )
        if noiseless and r["scores"].get("canary_auc") is not None and num(r["scores"]["canary_auc"]) > 0.9:
            findings.append(
                f"canary AUC {num(r['scores']['canary_auc']):.3f} at noise 0: a contribution's presence shows "
                "in the sums (secure aggregation alone is not DP)"
            )
        counted = {} if noiseless else significant
        ok = r["view"]["rounds_with_individual_updates"] == 0 and not counted
        # secure aggregation alone makes no DP claim: per-user findings there are its own verdict, never "holds"
        verdict = "fails" if not ok else ("not private without noise" if findings else "holds")
        entry: dict[str, Any] = {
            "verdict": verdict,
            "individual_views": r["view"]["rounds_with_individual_updates"],
            "advantages_over_population": {k: {"gain": g, "standard_error": e} for k, (g, e) in gains.items()},
            "significant_gains": significant,
            "sampled": r.get("client_fraction", 1.0) < 1.0,
        }
        if findings:
            entry["finding"] = " ; ".join(findings)
        r4[r["cell"]] = entry
    rules["R4"] = {"verdict": _rule_verdict(r4), "max_advantage": R4_MAX_ADVANTAGE, "cells": r4}
    r5 = {}
    for name, usable, attack in _r5_series(results):
        values = [max(num(c["scores"][attack]), CHANCE[attack]) for c in usable]
        errors = [num(c.get("standard_errors", {}).get(attack) or 0.0) for c in usable]
        rises = [
            (a, b)
            for a, b, ea, eb in zip(values, values[1:], errors, errors[1:])
            if b > a + R5_TOLERANCE + z_crit * (ea * ea + eb * eb) ** 0.5
        ]
        r5[name] = {
            "verdict": "fails" if rises else "holds",
            "noise_multipliers": [c["noise_multiplier"] for c in usable],
            "values": values,
            "standard_errors": errors,
        }
    rules["R5"] = {"verdict": _rule_verdict(r5), "tolerance": R5_TOLERANCE, "series": r5}
    for name in ("R1", "R2", "R3", "R4", "R5"):
        rules[name]["alpha_per_test"] = alpha_test
    rules["budget"] = budget
    return rules


NEXT_STEP = {
    "R0": "the audit cannot tell a private run from a leaky one on this data: use data with more signal "
    "(more users or rounds per cell, --rare-values) or check the named attack",
    "R1": "the canaries show more privacy loss than claimed: read R2 for the cause (noise, clip, seed), "
    "then rerun this cell alone (--cells) to confirm",
    "R2": "the release is not the mechanism the claim describes: fix the named part (noise shares, clip, "
    "generator, suppression) before trusting any epsilon of this configuration",
    "R3": "the canary test beats the claimed trade-off curve: the claim is too strong; read R1 and R2",
    "R4": "a per-user attack gains over the population although the server saw only noisy sums: check the "
    "noise of the sampled rounds and the minimum group size",
    "R5": "an attack got stronger with more noise: check the noise calibration of the named cells",
    "malicious-server": "the real client accepted an active attack: see the named attack's evidence",
    "network": "the real client paid for a release it should have refused: see the named lie's evidence",
}


def _problem_lines(name: str, rule: dict) -> list[dict[str, str]]:
    out = []
    if name == "R2":
        for label, test in rule.get("pooled_noise", {}).items():
            if test["verdict"] == "fails":
                worst = max(test["cells"].items(), key=lambda kv: abs(math.log(max(kv[1], 1e-300))))
                out.append(
                    {
                        "rule": name,
                        "cell": f"{label} (pooled over {len(test['cells'])} cells; e.g. {worst[0]})",
                        "what": f"measured / claimed noise variance {test['variance_ratio']:.4f} over "
                        f"{test['samples']} samples (p = {test['p_value']:.2g}); per cell: "
                        + ", ".join(f"{c} {v:.3f}" for c, v in test["cells"].items()),
                        "next": NEXT_STEP[name],
                    }
                )
    for cell, entry in rule.get("cells", {}).items():
        if entry.get("verdict") != "fails":
            continue
        if name == "R1":
            what = (
                f"epsilon lower bound {entry['epsilon_lower_bound']:.3g} or mu lower bound "
                f"{entry['mu_lower_bound']:.3g} above the claim (epsilon {entry['claimed_epsilon']:.3g}, "
                f"mu {entry['claimed_mu']:.3g}) from {entry['canaries']} canaries"
            )
        elif name == "R2":
            what = "; ".join(entry["problems"])
        elif name == "R3":
            bad = [p for p in entry["points"] if p["violated"]]
            what = ", ".join(
                f"TPR >= {p['tpr_lower']:.3f} at FPR <= {p['fpr_upper']:.3f} where the claim allows "
                f"{p['claimed_max_tpr']:.3f}"
                for p in bad
            )
        elif name == "R4":
            what = "significant gains over the population: " + ", ".join(
                f"{k} {v:+.3f}" for k, v in entry["significant_gains"].items()
            )
            if entry["individual_views"]:
                what = f"{entry['individual_views']} rounds with individual updates in the view; " + what
        else:
            what = "see the rule's evidence"
        out.append({"rule": name, "cell": cell, "what": what, "next": NEXT_STEP[name]})
    if name == "R5":
        for series, entry in rule.get("series", {}).items():
            if entry["verdict"] == "fails":
                out.append(
                    {
                        "rule": name,
                        "cell": series,
                        "what": "scores "
                        + ", ".join(f"{v:.3f}" for v in entry["values"])
                        + " at noise "
                        + ", ".join(f"{z:g}" for z in entry["noise_multipliers"]),
                        "next": NEXT_STEP[name],
                    }
                )
    if name in ("malicious-server", "network") and rule.get("verdict") == "fails":
        where = "active attacks against the client code" if name == "malicious-server" else "network cell"
        out.append({"rule": name, "cell": where, "what": f"leaked: {rule.get('leaked')}", "next": NEXT_STEP[name]})
    return out


def overall_verdict(rules: dict[str, Any], results: list[dict]) -> dict[str, Any]:
    """The audit's one verdict (console, report banner, report.json and exit code all read it)."""
    problems: list[dict[str, str]] = []
    for name, rule in rules.items():
        if name == "budget" or not isinstance(rule, dict):
            continue
        problems += _problem_lines(name, rule)
    not_tested: list[str] = []
    r0 = rules.get("R0", {})
    inconclusive = []
    if rules.get("network", {}).get("verdict") == "inconclusive":
        inconclusive.append(
            {
                "rule": "network",
                "cell": "network cell",
                "what": "the network cell could not judge every lie: "
                + ", ".join(f"{k} {v}" for k, v in rules["network"].get("outcomes", {}).items()),
                "next": "rerun; if it stays inconclusive, read the cell's evidence in grid.json (network_cell)",
            }
        )
    if r0.get("verdict") == "inconclusive":
        lacking = r0.get("attacks_without_power") or ["every attack (no plain cell)"]
        bars = r0.get("thresholds", {})
        inconclusive.append(
            {
                "rule": "R0",
                "cell": "plain cells",
                "what": "attacks without power: "
                + ", ".join(f"{k} (bar {bars[k]:.3g})" if k in bars else k for k in lacking),
                "next": NEXT_STEP["R0"],
            }
        )
    unrefutable = {
        c: e for c, e in rules.get("R1", {}).get("cells", {}).items() if e["verdict"] == "not refutable at m"
    }
    if unrefutable:
        claims = [e["claimed_epsilon"] for e in unrefutable.values()]
        first = next(iter(unrefutable.values()))
        not_tested.append(
            f"{len(unrefutable)} cells claim more (epsilon {min(claims):.3g} to {max(claims):.3g}) than "
            f"{first['canaries']} canaries can certify (epsilon {first['max_certifiable_epsilon_gaussian']:.3g} for "
            f"a Gaussian mechanism, {first['max_certifiable_epsilon']:.3g} for any): R1 could not have failed there "
            f"({', '.join(unrefutable)}); their mechanism is still checked exactly (R2)"
        )
    if "network" not in rules:
        not_tested.append(
            "the network path: no lying server was played against real client processes (--no-network-cell)"
        )
    for cell, entry in rules.get("R4", {}).get("cells", {}).items():
        if entry.get("finding"):
            not_tested.append(f"{cell}: {entry['finding']} (a finding, not a DP claim)")
    dp_cells = [r for r in results if r["threat_model"] in DP_THREAT_MODELS]
    refutable = [c for c, e in rules.get("R1", {}).get("cells", {}).items() if e["verdict"] != "not refutable at m"]
    if problems:
        verdict = "fails"
        first = problems[0]
        headline = f"A PRIVACY CLAIM FAILS: {first['rule']} in {first['cell']}: {first['what']}"
    elif not dp_cells or not any(r.get("canary") for r in dp_cells):
        verdict, problems = "no claim tested", inconclusive
        headline = (
            "NO DP CLAIM TESTED: no cell of this audit makes a DP claim"
            if not dp_cells
            else "NO DP CLAIM TESTED: no DP cell had canaries (--canaries 0, or only sampled cells)"
        )
    elif inconclusive:
        verdict, problems = "inconclusive", inconclusive
        headline = f"INCONCLUSIVE: {inconclusive[0]['what']}: the audit proves nothing either way"
    elif not refutable:
        verdict = "no claim tested"
        headline = "NO DP CLAIM TESTED: every claim is above what the canaries can certify"
    else:
        verdict = "holds"
        findings = [c for c, e in rules.get("R4", {}).get("cells", {}).items() if e.get("finding")]
        headline = (
            f"EVERY CLAIM HOLDS: {len(dp_cells)} DP cells ({len(refutable)} with a claim the canaries could refute), "
            f"{rules['budget']['total_tests']} tests, false-alarm rate <= {rules['budget']['alpha']:.3g}"
            + (
                f"; secure aggregation without noise is not private (per-user findings in {len(findings)} cells: "
                "it makes no DP claim)"
                if findings
                else ""
            )
        )
    return {
        "verdict": verdict,
        "exit_code": VERDICT_EXIT[verdict],
        "headline": headline,
        "alpha": rules.get("budget", {}).get("alpha"),
        "tests": rules.get("budget", {}).get("total_tests"),
        "problems": problems,
        "not_tested": not_tested,
    }
