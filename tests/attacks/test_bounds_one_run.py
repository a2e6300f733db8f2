"""One-run audits, Gaussian DP conversions and the known-quantity mechanism checks of attacks/bounds.py:
each bound holds (with its stated confidence) on mechanisms whose privacy is known exactly, uses its
size where a worst case exists, and has the power its own numbers claim."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate, stats

from attacks.bounds import (
    fdp_mu_from_counts,
    fdp_one_run_mu_bound,
    fdp_tail_bound,
    gdp_delta,
    gdp_epsilon,
    gdp_mu,
    known_shift_test,
    max_certifiable,
    one_run_epsilon_bound,
    one_run_epsilon_from_counts,
    one_run_p_value,
    split_half_bound,
    variance_shortfall_test,
)
from mrff_secure.errors import ConfigError

DELTA = 1e-5


def _gdp_scores(rng: np.random.Generator, trials: int, m: int, mu: float) -> tuple[np.ndarray, np.ndarray]:
    """(trials, m) canary scores of an exactly mu-GDP mechanism: in ~ N(mu, 1), out ~ N(0, 1)."""
    included = rng.random((trials, m)) < 0.5
    return rng.normal(size=(trials, m)) + mu * included, included


def _rate_bounds(trials: int, rate: float, tail: float = 1e-4) -> tuple[float, float]:
    """The central 1 - 2 * tail range of Binomial(trials, rate) / trials."""
    return stats.binom.ppf(tail, trials, rate) / trials, stats.binom.isf(tail, trials, rate) / trials


# ------------------------------------------------------------------ Gaussian DP


def test_gdp_delta_is_the_privacy_profile_of_the_gaussian_shift():
    """delta(eps) = integral of max(0, p_mu - e^eps p_0), computed here by quadrature, agrees with the
    closed form; the edge cases are exact and nothing overflows at epsilon 1e4 or mu 1e6."""
    for mu in (0.3, 1.0, 2.5):
        for eps in (0.0, 0.5, 2.0, 5.0):
            profile, _ = integrate.quad(
                lambda x, mu=mu, eps=eps: max(0.0, stats.norm.pdf(x, mu) - math.exp(eps) * stats.norm.pdf(x)),
                -30,
                30,
                points=[eps / mu + mu / 2],
                epsabs=1e-13,
            )
            assert gdp_delta(mu, eps) == pytest.approx(profile, rel=1e-6, abs=1e-12)
    assert gdp_delta(0.0, 1.0) == 0.0 and gdp_delta(math.inf, 3.0) == 1.0
    for mu, eps in ((2.0, 1e4), (100.0, 1e4), (1e6, 1e4), (1e-300, 0.0), (0.5, 60.0)):
        value = gdp_delta(mu, eps)
        assert 0.0 <= value <= 1.0 and math.isfinite(value)
    tiny = gdp_delta(0.5, 15.0)  # about 1e-195: resolved, not cancelled to 0
    assert 0 < tiny < gdp_delta(0.5, 10.0) < 1e-80
    assert gdp_epsilon(0.5, tiny) == pytest.approx(15.0, rel=1e-9)
    profile = [gdp_delta(1.0, e) for e in np.linspace(0, 10, 41)]
    assert all(a > b for a, b in zip(profile, profile[1:]))


@pytest.mark.parametrize("mu", [0.05, 0.5, 1.0, 4.0, 50.0, 1000.0])
def test_gdp_epsilon_and_mu_invert_delta(mu):
    eps = gdp_epsilon(mu, DELTA)
    assert gdp_delta(mu, eps) == pytest.approx(DELTA, rel=1e-9)
    assert gdp_mu(eps, DELTA) == pytest.approx(mu, rel=1e-9)
    assert gdp_epsilon(mu, gdp_delta(mu, 0.0)) == 0.0 and gdp_epsilon(mu, 1.0) == 0.0
    assert gdp_epsilon(0.0, DELTA) == 0.0 and gdp_epsilon(mu, 0.0) == math.inf
    assert gdp_mu(0.0, 0.3) == pytest.approx(2 * stats.norm.ppf(0.65))  # delta(0) = 2 Phi(mu / 2) - 1
    assert math.isfinite(gdp_mu(1e4, DELTA))


# ------------------------------------------------------------------ one-run audit with delta (Steinke et al.)


@pytest.mark.parametrize("delta", [0.0, 1e-3])
def test_one_run_p_value_holds_on_the_worst_case_and_uses_its_size(delta):
    """The worst case of (eps, delta)-DP per canary: reveal the bit with probability delta, otherwise
    randomized response at eps, so the correct guesses are Binomial(r, delta + (1 - delta) q). The test
    that rejects when the p-value <= alpha does so at most alpha of the time; at delta = 0 (exactly the
    binomial of the theorem) it uses at least a third of its size. The epsilon bound from the counts
    exceeds eps only where eps itself is rejected."""
    eps, m, r, alpha = 1.0, 400, 200, 0.05
    q = 1 / (1 + math.exp(-eps))
    p_values = np.array([one_run_p_value(eps, delta, canaries=m, guesses=r, correct=v) for v in range(r + 1)])
    rejection_rate = stats.binom.pmf(np.arange(r + 1), r, delta + (1 - delta) * q)[p_values <= alpha].sum()
    assert rejection_rate <= alpha
    if delta == 0.0:
        assert rejection_rate >= alpha / 3
    for v in (110, 130, 150, 170):  # the theorem's delta term, recomputed from the binomial cdf
        cdf = stats.binom.cdf
        window = max((cdf(v - 1, r, q) - cdf(v - 1 - i, r, q)) / i for i in range(1, v + 1))
        expected = min(1.0, stats.binom.sf(v - 1, r, q) + 2 * m * delta * window)
        assert p_values[v] == pytest.approx(expected, rel=1e-9, abs=1e-300)
    for v in range(0, r + 1, 5):
        bound = one_run_epsilon_from_counts(canaries=m, guesses=r, correct=v, delta=delta, alpha=alpha)
        assert (bound > eps + 1e-6) <= (p_values[v] <= alpha)
        assert bound <= eps + 1e-6 or p_values[v] <= alpha


def test_one_run_bound_covers_mu_gdp_and_grows_with_mu():
    """2,000 audits of 500 canaries of an exactly mu-GDP mechanism: the 95% bound stays under the true
    epsilon(1e-5) in >= 95% of them, and its mean grows with mu."""
    rng = np.random.default_rng(1)
    trials, m, alpha = 2000, 500, 0.05
    means = []
    for mu in (0.0, 1.0, 3.0):
        scores, included = _gdp_scores(rng, trials, m, mu)
        bounds = np.array(
            [
                one_run_epsilon_bound(s, i, delta=DELTA, alpha=alpha)["epsilon_lower_bound"]
                for s, i in zip(scores, included)
            ]
        )
        assert np.mean(bounds > gdp_epsilon(mu, DELTA)) <= alpha
        means.append(bounds.mean())
    assert means[0] < 0.05 < means[1] < means[2]


def test_one_run_bound_reports_its_guesses_and_a_perfect_attack_reaches_max_certifiable():
    m = 400
    included = np.arange(m) < m // 2
    perfect = one_run_epsilon_bound(included * 10.0, included, delta=DELTA)
    assert perfect["correct"] == perfect["guesses"]
    assert perfect["epsilon_lower_bound"] == perfect["max_certifiable"]
    assert perfect["max_certifiable"] == max_certifiable(m, delta=DELTA)["one_run"]
    assert perfect["alpha_per_candidate"] == pytest.approx(0.05 / 4)
    fixed = one_run_epsilon_bound(included * 10.0, included, delta=DELTA, guesses=100)
    assert fixed["guesses"] == 100 and len(fixed["candidates"]) == 1
    assert fixed["epsilon_lower_bound"] < perfect["epsilon_lower_bound"]  # fewer guesses certify less
    assert perfect["max_certifiable"] < math.log(m)


# ------------------------------------------------------------------ f-DP one-run audit (Mahloujifar et al.)


def test_fdp_tail_bound_is_valid_and_tight_at_perfect_privacy():
    """At mu = 0 the guesses are fair coins whatever the attack: the bound on P[>= v correct] is at least the
    exact Binomial(r, 1/2) tail, and at most 1.25 times it where a test would use it (tail 1e-6 to 0.1)."""
    m, r = 100, 50
    for v in range(r // 2 + 1, r + 1):
        exact = stats.binom.sf(v - 1, r, 0.5)
        bound = fdp_tail_bound(0.0, canaries=m, guesses=r, correct=v)
        assert bound >= exact
        if 1e-6 <= exact <= 0.1:
            assert bound <= 1.25 * exact


@pytest.mark.parametrize("mu", [0.1, 1.0, 3.0])
def test_fdp_tail_bound_is_exact_for_one_canary(mu):
    """One canary, one guess: the best test of N(0, 1) against N(mu, 1) is right with probability
    Phi(mu / 2), and that is what the recursion gives."""
    assert fdp_tail_bound(mu, canaries=1, guesses=1, correct=1) == pytest.approx(stats.norm.cdf(mu / 2), abs=2e-9)


def test_fdp_tail_bound_holds_for_gaussian_canaries():
    """mu = 1 canaries guessed by rank: the simulated P[>= v correct] (its 99.99% upper limit) never exceeds
    the bound."""
    rng = np.random.default_rng(2)
    m, r, mu, trials = 100, 40, 1.0, 20000
    scores, included = _gdp_scores(rng, trials, m, mu)
    order = np.argsort(scores, axis=1, kind="stable")
    ranked = np.take_along_axis(included, order, axis=1)
    correct = ranked[:, m - r // 2 :].sum(1) + (~ranked[:, : r // 2]).sum(1)
    for v in range(int(np.median(correct)), r + 1):
        hits = int((correct >= v).sum())
        upper = 1.0 if hits == trials else stats.beta.ppf(1 - 1e-4, hits + 1, trials - hits)
        assert fdp_tail_bound(mu, canaries=m, guesses=r, correct=v) >= upper or hits == 0


def test_fdp_bound_covers_mu_gdp():
    """2,000 audits of 100 canaries, mu = 1: the 95% bound on mu (hence on the Gaussian epsilon) stays
    under the truth in >= 95% of them, and is 0 for most audits at mu = 0."""
    rng = np.random.default_rng(3)
    trials, alpha = 2000, 0.05
    for mu in (0.0, 1.0):
        scores, included = _gdp_scores(rng, trials, 100, mu)
        bounds = np.array([fdp_one_run_mu_bound(s, i, alpha=alpha)["mu_lower_bound"] for s, i in zip(scores, included)])
        assert np.mean(bounds > mu) <= alpha
        if mu == 0.0:
            assert np.mean(bounds == 0.0) > 0.9


def test_fdp_bound_has_power_at_mu_2_with_1000_canaries():
    """Three audits of 1,000 canaries at mu = 2: each bound is well above 0 (mean 1.11, sd 0.12 over 30
    seeds), and every
    epsilon it reports is under the truth (any-mechanism <= Gaussian conversion <= true epsilon)."""
    rng = np.random.default_rng(4)
    scores, included = _gdp_scores(rng, 3, 1000, 2.0)
    for s, i in zip(scores, included):
        result = fdp_one_run_mu_bound(s, i, delta=DELTA)
        assert 0.8 < result["mu_lower_bound"] < 2.0
        assert result["epsilon_lower_bound_at_delta"] == gdp_epsilon(result["mu_lower_bound"], DELTA)
        assert 1.0 < result["epsilon_lower_bound_any_mechanism"] < result["epsilon_lower_bound_at_delta"]
        assert result["epsilon_lower_bound_at_delta"] < gdp_epsilon(2.0, DELTA)
        assert result["mu_lower_bound"] <= result["max_certifiable_mu"]


def test_fdp_bound_from_counts_grows_with_correct_guesses():
    bounds = [fdp_mu_from_counts(canaries=200, guesses=100, correct=v) for v in (50, 60, 70, 80, 90, 100)]
    assert bounds[0] == 0.0 and all(a < b for a, b in zip(bounds, bounds[1:]))


# ------------------------------------------------------------------ what m canaries can certify


def test_max_certifiable_grows_with_m_and_alpha_and_matches_a_perfect_split_half():
    small, large = max_certifiable(100, delta=DELTA, alpha=0.05), max_certifiable(1000, delta=DELTA, alpha=0.05)
    strict = max_certifiable(1000, delta=DELTA, alpha=0.01 / 20)
    for key in ("split_half", "one_run", "fdp_mu", "fdp_epsilon_at_delta", "fdp_epsilon_any_mechanism"):
        assert small[key] < large[key] and strict[key] < large[key]
    included = np.zeros(1000, dtype=bool)
    included[np.random.default_rng(5).permutation(1000)[:500]] = True
    perfect = split_half_bound(included * 1.0, included, delta=DELTA, seed=0)
    assert perfect["epsilon_lower_bound"] == pytest.approx(large["split_half"], abs=0.1)


# ------------------------------------------------------------------ known-quantity mechanism checks


def test_variance_shortfall_test_has_its_size_power_and_stated_detectable_shortfall():
    rng = np.random.default_rng(6)
    alpha, n, claimed = 0.05, 100, 2.0
    honest = rng.normal(scale=claimed, size=(5000, n))
    rate = np.mean([variance_shortfall_test(x, claimed_std=claimed, alpha=alpha)["verdict"] == "fails" for x in honest])
    low, high = _rate_bounds(5000, alpha)
    assert low <= rate <= high
    shortfall = variance_shortfall_test(honest[0], claimed_std=claimed, alpha=alpha)["detectable_shortfall"]
    short = rng.normal(scale=claimed * (1 - shortfall), size=(2000, n))
    power = np.mean([variance_shortfall_test(x, claimed_std=claimed, alpha=alpha)["verdict"] == "fails" for x in short])
    low, high = _rate_bounds(2000, 0.95)
    assert low <= power <= high
    quarter_short = variance_shortfall_test(
        rng.normal(scale=0.75 * claimed, size=100_000), claimed_std=claimed, alpha=alpha
    )
    assert quarter_short["verdict"] == "fails" and quarter_short["variance_ratio"] == pytest.approx(0.5625, rel=0.02)
    more_noise = variance_shortfall_test(rng.normal(scale=2 * claimed, size=100_000), claimed_std=claimed, alpha=alpha)
    assert more_noise["verdict"] == "holds"  # one-sided: more noise than claimed is not a failure


def test_known_shift_test_has_its_size_power_and_stated_detectable_ratio():
    rng = np.random.default_rng(7)
    alpha, claimed = 0.05, 0.5
    scores, included = _gdp_scores(rng, 5000, 100, claimed)
    rate = np.mean(
        [
            known_shift_test(s, i, claimed_mu=claimed, alpha=alpha)["verdict"] == "fails"
            for s, i in zip(scores, included)
        ]
    )
    low, high = _rate_bounds(5000, alpha)
    assert low <= rate <= high
    doubled, included = _gdp_scores(rng, 500, 1000, 2 * claimed)
    results = [known_shift_test(s, i, claimed_mu=claimed, alpha=alpha) for s, i in zip(doubled, included)]
    assert np.mean([r["verdict"] == "fails" for r in results]) >= 0.99
    assert all(r["lower_limit"] < r["estimate"] < r["upper_limit"] for r in results)
    ratio = results[0]["detectable_mu_ratio"]
    assert 1.0 < ratio < 2.0
    at_ratio, included = _gdp_scores(rng, 2000, 1000, ratio * claimed)
    power = np.mean(
        [
            known_shift_test(s, i, claimed_mu=claimed, alpha=alpha)["verdict"] == "fails"
            for s, i in zip(at_ratio, included)
        ]
    )
    low, high = _rate_bounds(2000, 0.95, tail=1e-3)  # included counts vary around 500: power near, not at, 95%
    assert low - 0.01 <= power <= high + 0.01


# ------------------------------------------------------------------ bad input


def test_bad_input_is_refused_with_a_named_problem():
    scores, included = np.arange(10.0), np.arange(10) % 2 == 0
    with pytest.raises(ConfigError, match="one length"):
        one_run_epsilon_bound(scores, included[:5], delta=DELTA)
    with pytest.raises(ConfigError, match="finite"):
        fdp_one_run_mu_bound(np.full(10, np.nan), included)
    with pytest.raises(ConfigError, match="number of guesses"):
        one_run_epsilon_bound(scores, included, delta=DELTA, guesses=11)
    with pytest.raises(ConfigError, match="booleans"):
        one_run_epsilon_bound(scores, np.arange(10), delta=DELTA)
    with pytest.raises(ConfigError, match="delta"):
        one_run_epsilon_bound(scores, included, delta=2.0)
    with pytest.raises(ConfigError, match="correct"):
        one_run_p_value(1.0, 0.0, canaries=10, guesses=5, correct=6)
    with pytest.raises(ConfigError, match="mu"):
        gdp_delta(-1.0, 1.0)
    with pytest.raises(ConfigError, match="claimed_std"):
        variance_shortfall_test(scores, claimed_std=0.0)
    with pytest.raises(ConfigError, match="included and excluded"):
        known_shift_test(scores, np.ones(10, dtype=bool), claimed_mu=1.0)
