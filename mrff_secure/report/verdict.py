"""The report's one overall verdict, shown first: holds / fails / inconclusive / no claim tested.

An audit's grid.json states it (`grid["verdict"]`: verdict, exit_code, headline, alpha, tests, problems,
not_tested); an older grid.json without it gets one derived here from its rules, by the rules of
`mrff audit`'s exit code (any rule fails: fails; R0 without the canary's power, or another rule
inconclusive: inconclusive). Each problem names its rule and cell, says what was measured in numbers,
and what to do next. Also here: the plain-language definitions of the terms a report uses.
"""

from __future__ import annotations

from typing import Any

from mrff_secure.errors import ConfigError
from mrff_secure.report.tables import fmt, number

HOLDS, FAILS, INCONCLUSIVE, NO_CLAIM = "holds", "fails", "inconclusive", "no claim tested"
VERDICTS = (HOLDS, FAILS, INCONCLUSIVE, NO_CLAIM)
BANNER_TEXT = {HOLDS: "HOLDS", FAILS: "FAILS", INCONCLUSIVE: "INCONCLUSIVE", NO_CLAIM: "NO CLAIM TESTED"}
VERDICT_KEYS = ("verdict", "exit_code", "headline", "alpha", "tests", "problems", "not_tested")

TERMS = {
    "epsilon, delta": "a mechanism is (epsilon, delta)-DP when no test can tell two adjacent datasets apart with "
    "true positive rate above e^epsilon x false positive rate + delta (and the same the other way round): "
    "smaller epsilon is more private; epsilon = ∞ (unbounded) means no guarantee",
    "zero-out adjacency": "the two datasets differ in one user's data being replaced by nothing (a zero "
    "contribution): the adjacency of secure aggregation, where who takes part is visible anyway",
    "replace-one adjacency": "the two datasets differ in one user's data being swapped for another user's: "
    "about twice the sensitivity, the natural adjacency where the server sees each identified upload",
    "m (canaries per cell)": "the number of canary contributions in an audited cell (not users: each is a "
    "worst-case contribution for the cell's adjacency, inserted in the real release path); each is included "
    "with probability 1/2 from a sealed seed, and the audit tries to tell the included ones from the others",
    "max certifiable": "the largest lower bound (epsilon, or Gaussian mu) that m canaries could ever show at "
    "the test's confidence, even perfectly separated: a claim above it cannot be refuted with m canaries",
    "not refutable at m": "the claimed epsilon is above what m canaries can certify, so no outcome of the "
    "canary test could contradict it; R1 says nothing about such a cell (it is not a pass)",
    "family confidence": "every statistical test of the audit (R1-R5 over all cells) holds together at this "
    "confidence (Bonferroni: each test at alpha / tests, alpha = 1 - confidence)",
    "alpha (false-alarm rate)": "the probability that an honest implementation gets a verdict other than "
    "holds by chance alone (the canary noise is fresh in every run)",
    "mu (Gaussian DP)": "a mechanism is mu-GDP when telling its outputs on two adjacent datasets apart is no "
    "easier than telling N(0, 1) from N(mu, 1); the claim's mu is the mu whose (epsilon, delta) curve gives the "
    "claimed epsilon at the claimed delta, and R1 fails when the canaries' lower bound on mu is above it",
    "exact mechanism check (R2)": "the auditor knows what every client sent, so the release minus what was sent "
    "is the noise alone: its variance must be the claimed one (chi-square over every coordinate of every "
    "round), an included canary must move the release by no more than the claimed sensitivity, and the noise "
    "must not be reproducible from the run's public seed",
    "TPR at low FPR": "the fraction of members an attack finds while wrongly flagging at most 0.1% (or 1%) of "
    "non-members; with n non-members the smallest step of FPR is 1/n",
}


RULE_NAMES = {
    "R1": "the canary bound on epsilon",
    "R2": "the exact mechanism check",
    "R3": "the claimed trade-off curve",
    "R4": "secure aggregation hides individuals",
    "R5": "attacks weaken with noise",
    "malicious-server": "active attacks refused",
}


def _problem(rule: str, cell: str, what: str, then: str) -> dict[str, str]:
    return {"rule": rule, "cell": cell, "what": what, "next": then}


RERUN = (
    "rerun `mrff audit` with a new seed (and more --canaries) to rule out the audit's own false alarm, "
    "whose probability is alpha"
)


def _cell_problems(rule: str, cells: dict[str, Any], family: float | None) -> list[dict[str, str]]:
    out = []
    for cell, body in cells.items():
        if body.get("verdict") != FAILS:
            continue
        if rule == "R1":
            what = (
                f"the canary lower bound on epsilon is {fmt(body.get('epsilon_lower_bound'))} at "
                f"{fmt(body.get('confidence_per_cell'))} confidence, above the claimed epsilon "
                f"{fmt(body.get('claimed_epsilon'))} ({fmt(body.get('canaries'))} canaries)"
            )
            then = (
                "the accountant under-counts this cell's privacy loss: compare the noise multiplier, clip and rounds "
                "it was given with what the cell ran (R2 of the same cell measures the noise); then " + RERUN
            )
        elif rule == "R2":
            low, high = (body.get("mu_hat_family") or [None, None])[:2]
            what = (
                f"the canaries separate by mu_hat = {fmt(body.get('mu_hat'))} (interval {fmt(low)} to {fmt(high)}) "
                f"while the claimed mechanism allows at most mu = {fmt(body.get('claimed_mu'))}: the noise measured "
                f"along the canaries is z = {fmt(body.get('measured_noise_multiplier'))} against the claimed "
                f"z = {fmt(body.get('claimed_noise_multiplier'))}"
            )
            then = (
                "less noise is released than the accountant is told: check the noise multiplier given to the "
                "accountant against the one the encoder adds for this cell; then " + RERUN
            )
        elif rule == "R3":
            points = [p for p in body.get("points", []) if p.get("violated")]
            what = (
                "; ".join(
                    f"at FPR {fmt(p.get('target_fpr'))} the canary test's TPR is at least {fmt(p.get('tpr_lower'))}, "
                    f"above the claimed curve's {fmt(p.get('claimed_max_tpr'))}"
                    for p in points
                )
                or "the canary test beats the claimed trade-off curve"
            )
            then = "the claimed (epsilon, delta) is too small for the released noise: check the accountant; " + RERUN
        elif rule == "R4":
            parts = []
            if body.get("individual_views"):
                parts.append(f"the server saw individual updates in {fmt(body['individual_views'])} round(s)")
            parts += [
                f"{name} gains {fmt(gain)} over the population (allowed: 0.05 + 2.33 standard errors)"
                for name, gain in (body.get("significant_gains") or {}).items()
            ]
            what = "; ".join(parts) or "per-user information passed the secure sum"
            then = (
                "secure aggregation let per-user information through: check that only sums reach the server "
                "(group slots, counts, survivors); then " + RERUN
            )
        elif rule == "R5":
            values = ", ".join(fmt(v) for v in body.get("values", []))
            levels = ", ".join(fmt(v) for v in body.get("noise_multipliers", []))
            what = f"scores {values} at noise multipliers {levels}: the attack gets stronger with more noise"
            then = "check that each noise level is applied as configured; then " + RERUN
        else:
            what, then = f"verdict {body.get('verdict')}", RERUN
        out.append(_problem(rule, cell, what, then))
    return out


def derive_verdict(rules: dict[str, Any]) -> dict[str, Any]:
    """The overall verdict of a grid.json without one, from its rules (mirrors `mrff audit`'s exit code)."""
    problems: list[dict[str, str]] = []
    not_tested: list[str] = []
    family = None
    tests = 0
    for rule in ("R1", "R2", "R3"):
        body = rules.get(rule, {})
        if "family_confidence" in body:
            family = number(body["family_confidence"])
            tests += int(body.get("cells_tested", 0))  # one test per audited DP cell and rule
    for rule, body in rules.items():
        if rule == "malicious-server":
            leaked = body.get("leaked", [])
            if body.get("verdict") == FAILS or leaked:
                problems.append(
                    _problem(
                        rule,
                        "malicious server",
                        f"the client code went along with: {', '.join(leaked) or 'an active attack'}",
                        "fix the client check that should refuse it (tests/secagg/test_secagg_hostile.py, "
                        "tests/network/test_malicious_server.py); no rerun will change this verdict",
                    )
                )
            continue
        items = body.get("cells", body.get("series", {}))
        if isinstance(items, dict):
            problems += _cell_problems(rule, items, family)
            if rule == "R1":
                untestable = [(cell, b) for cell, b in items.items() if b.get("verdict") == "not refutable at m"]
                if untestable:
                    m = sorted({fmt(b.get("canaries")) for _, b in untestable})
                    not_tested.append(
                        f"R1 (the canary bound) could not test {len(untestable)} cell(s): their claimed epsilon is "
                        f"above what m = {', '.join(m)} canaries can certify (not refutable at m: no outcome of the "
                        "canary test could contradict the claim; not a pass): "
                        + "; ".join(
                            f"{cell} (claimed {fmt(b.get('claimed_epsilon'))}, max certifiable "
                            f"{fmt(b.get('max_certifiable'))})"
                            for cell, b in untestable
                        )
                    )
    r0 = rules.get("R0", {})
    lacking = list(r0.get("attacks_without_power", []))
    evidence = r0.get("evidence") if isinstance(r0.get("evidence"), dict) else {}
    thresholds = r0.get("thresholds") or {}
    for name in lacking:
        seen = [number((scores or {}).get(name)) for scores in evidence.values() if isinstance(scores, dict)]
        shown = ", ".join(fmt(s) for s in seen if s is not None) or "not computed"
        not_tested.append(
            f"{name}: {shown} at plain noise 0, below its power bar {fmt(thresholds.get(name))}: this attack "
            "lacks power, so its results in the other cells prove nothing"
        )
    if r0.get("verdict") == INCONCLUSIVE and not r0.get("thresholds"):
        not_tested.append(str(r0.get("evidence", "no plain cell: the attacks' power is unknown")))
    inconclusive_r0 = r0.get("verdict") == INCONCLUSIVE and (
        not thresholds or set(lacking) >= set(thresholds) or "canary_auc" in lacking
    )
    others_inconclusive = [n for n, b in rules.items() if n != "R0" and b.get("verdict") == INCONCLUSIVE]
    tested = []  # "R2 in 10 cells": the rules that tested something, with how many cells or series held
    for name, body in rules.items():
        items = body.get("cells", body.get("series"))
        if name == "R0":
            continue
        if isinstance(items, dict):
            held = sum(1 for b in items.values() if b.get("verdict") == HOLDS)
            if held:
                unit = "series" if "series" in body else ("cell" if held == 1 else "cells")
                tested.append(f"{name} in {held} {unit}")
        elif body.get("verdict") in (HOLDS, FAILS):
            tested.append(name)
    if problems:
        verdict = FAILS
        named = "; ".join(f"{p['rule']} ({RULE_NAMES.get(p['rule'], p['rule'])}) in {p['cell']}" for p in problems[:3])
        more = f"; and {len(problems) - 3} more" if len(problems) > 3 else ""
        headline = f"{len(problems)} claim{'s' if len(problems) > 1 else ''} fail{'' if len(problems) > 1 else 's'}: {named}{more}."
    elif inconclusive_r0 or others_inconclusive:
        verdict = INCONCLUSIVE
        why = []
        if inconclusive_r0:
            why.append(
                "the attacks lack power where nothing protects the data (R0: "
                + (", ".join(lacking) or "no plain cell")
                + ")"
            )
        if others_inconclusive:
            why.append(f"{', '.join(others_inconclusive)} could not decide")
        headline = "The audit is inconclusive: " + "; ".join(why) + ". Its passes prove nothing."
    elif not tested:
        verdict = NO_CLAIM
        headline = "No claim was tested: the audit had no DP or secure-aggregation cell."
    else:
        verdict = HOLDS
        headline = f"Every claim the audit tested holds: {', '.join(tested)}" + (
            f"; {len(not_tested)} thing(s) it could not test are listed below." if not_tested else "."
        )
    alpha = None if family is None else min(1.0, 3 * (1.0 - family))
    return {
        "verdict": verdict,
        "exit_code": 3 if verdict in (FAILS, INCONCLUSIVE) else 0,
        "headline": headline,
        "alpha": alpha,
        "alpha_note": (
            f"at most 3 x {fmt(1 - family)}: R1, R2 and R3 each at family confidence {fmt(family)}"
            if family is not None
            else "no statistical test was run"
        ),
        "tests": tests,
        "problems": problems,
        "not_tested": not_tested,
        "source": "derived by the report from grid.json's rules (grid.json has no verdict)",
    }


def overall_verdict(grid: dict[str, Any]) -> dict[str, Any]:
    """grid["verdict"] when grid.json has one (checked), else one derived from grid["rules"]."""
    given = grid.get("verdict")
    if given is None:
        return derive_verdict(grid.get("rules", {}))
    if not isinstance(given, dict) or given.get("verdict") not in VERDICTS:
        raise ConfigError(
            f"grid.json's verdict must be an object whose verdict is one of {list(VERDICTS)}, not {given!r}"
        )
    problems = given.get("problems", [])
    if not isinstance(problems, list) or not all(
        isinstance(p, dict) and {"rule", "cell", "what", "next"} <= set(p) for p in problems
    ):
        raise ConfigError("grid.json's verdict.problems must be a list of {rule, cell, what, next} objects")
    out = {key: given.get(key) for key in VERDICT_KEYS}
    out["problems"], out["not_tested"] = problems, list(given.get("not_tested") or [])
    out.update({k: v for k, v in given.items() if k not in out})
    out["source"] = "grid.json"
    return out
