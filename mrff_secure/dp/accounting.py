"""Privacy accounting math, user level: opacus' RDP and PRV accountants for Gaussian histories, and the RDP
bounds of the distributed discrete mechanisms.

Which figure is a run's guarantee is decided in `mrff_secure/round/accountant.py`, not here. Its headline
is the RDP bound of the mechanism used: local DP, the Gaussian RDP of :func:`rdp_epsilon` (the grid
discrete Gaussian's RDP is at most the continuous one's) at q = 1 every round; distributed DP, the
discrete curves below, summed over the rounds and converted once by :func:`rdp_to_epsilon`. The PRV
figure of :func:`gaussian_epsilons` is the continuous Gaussian's, shown beside the headline for
reference only ("gaussian_limit"); ``Epsilons.headline`` is the headline of that reference, not of a run.

Gaussian case: the history is [(noise_multiplier, sample_rate, steps), ...] exactly as opacus'
accountants keep it; one step is one round, the unit of privacy is one user. The adjacency enters only
through the noise multiplier, which the caller computes as noise std / L2 sensitivity under the
adjacency of the release (`round.release.RoundRelease.accounted_noise_multiplier`): replace-one for
local DP, whose uploads the server sees identified (one upload replaced by any other: sensitivity
sqrt(4 C^2 + 2 B + 1) with B blocks with group one-hots); zero-out under secure aggregation (one user's
contribution replaced by zeros). ``sample_rate`` is a Poisson client-sampling rate; the runs pass 1
(no amplification: the server learns who took part in a round).

Conventions: a history with a z = 0 entry that touches a user yields ``math.inf`` (no noise, no
guarantee, never 0); an empty history yields 0.0 (nothing released). The PRV accountant breaks
down numerically for very large epsilons (it can return ``inf`` or, worse, a too-small finite
value near 709 where exp overflows), and its cost grows with its grid: opacus discretizes the
privacy loss on [-L, L] (L about the RDP epsilon at delta/4000) with a mesh of
eps_error / sqrt(T log(12000 / delta) / 2), so a tiny z (huge epsilon) or many rounds ask for
billions of points and minutes of FFTs. :func:`prv_out_of_range` predicts that grid from RDP
alone (cheap) and PRV is only called where the grid has at most ``PRV_MAX_GRID_POINTS`` points
(about a second) and RDP is at most ``PRV_MAX_EPSILON``; elsewhere, or where PRV returns a
non-finite or overflow-range value, ``Epsilons.prv`` is None, ``Epsilons.headline`` is the RDP bound
(always a valid upper bound) and ``prv_note`` says so ("PRV out of range at z=...; RDP bound used").

Discrete mechanisms (distributed mode): the RDP bounds of the distributed discrete Gaussian
(Kairouz, Liu, Steinke 2021, Prop. 14) and of Skellam (Agarwal, Kairouz, Liu 2021, Thm. 3.5 /
Cor. 3.6), written here from the papers, for the L2 / L1 sensitivities the caller passes (zero-out;
`round.release` doubles them for the replace-one figure), composed over rounds and converted with
opacus' ``get_privacy_spent``. We do NOT amplify them by sampling (conservative): every round counts.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

from mrff_secure.checks import check_choice, check_int, check_number
from mrff_secure.errors import PrivacyError

from .discretize import rounded_l1_bound, rounded_l2_bound

HistoryEntry = tuple[float, float, int]
PRV_MAX_EPSILON = 500.0  # skip PRV beyond this RDP epsilon (numerically unreliable, and slow)
PRV_OVERFLOW_EPSILON = 700.0  # a PRV result at or above this is exp-overflow garbage
PRV_EPS_ERROR = 0.01
# The most grid points (summed over the history's distinct entries) PRV is asked for: about one second
# on two cores (measured: 1.4e6 points 0.8 s, 4.9e6 points 3.5 s, 1.4e7 points 7.5 s and ~2 GB).
PRV_MAX_GRID_POINTS = 2_000_000
# Integer orders for the discrete bounds (Skellam's bound is stated for integer alpha > 1).
DISCRETE_ORDERS: tuple[int, ...] = tuple(range(2, 129)) + (160, 192, 256, 384, 512, 1024)


def _check_delta(delta: float) -> float:
    return check_number("delta", delta, low=0.0, high=1.0, low_open=True, high_open=True, error=PrivacyError)


def _check_entry(entry: Sequence[float]) -> HistoryEntry:
    if len(entry) != 3:
        raise PrivacyError(f"a history entry is (noise_multiplier, sample_rate, steps), got {entry!r}")
    z, q, steps = entry
    if isinstance(steps, np.integer):  # a count from numpy is as good as an int
        steps = int(steps)
    return (
        check_number("noise_multiplier", z, low=0.0, error=PrivacyError),
        check_number("sample_rate", q, low=0.0, high=1.0, error=PrivacyError),
        check_int("steps", steps, low=0, error=PrivacyError),
    )


def normalize_history(history: Sequence[Sequence[float]]) -> list[HistoryEntry]:
    """Validate, drop entries that touch no user (steps 0 or sample_rate 0), merge neighbours."""
    out: list[HistoryEntry] = []
    for entry in history:
        z, q, steps = _check_entry(entry)
        if steps == 0 or q == 0.0:
            continue
        if out and out[-1][0] == z and out[-1][1] == q:
            out[-1] = (z, q, out[-1][2] + steps)
        else:
            out.append((z, q, steps))
    return out


def _checked_history(
    history: Sequence[Sequence[float]], delta: float
) -> tuple[list[HistoryEntry], float, float | None]:
    """The normalized history and checked delta, with the epsilon no accountant is needed for: 0.0 for
    an empty history (nothing released), inf where an entry has no noise; None otherwise."""
    delta = _check_delta(delta)
    hist = normalize_history(history)
    if not hist:
        return hist, delta, 0.0
    if any(z == 0.0 for z, _, _ in hist):
        return hist, delta, math.inf
    return hist, delta, None


def rdp_epsilon(*, history: Sequence[Sequence[float]], delta: float) -> float:
    """Epsilon from opacus' RDPAccountant (its default orders) for a Gaussian history (inf where it
    overflows: a z so small that no finite bound is proven)."""
    hist, delta, settled = _checked_history(history, delta)
    if settled is not None:
        return settled
    return _rdp_accountant_epsilon(hist, delta)


def _rdp_accountant_epsilon(hist: list[HistoryEntry], delta: float) -> float:
    acc = RDPAccountant()
    acc.history = list(hist)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        eps = float(acc.get_epsilon(delta=delta))
    return math.inf if math.isnan(eps) else eps


# The integer orders among opacus' default RDP orders: RDP minimised over them is >= opacus' own
# (a subset), and fast for every sampling rate (its fractional orders take up to seconds at q ~ 0.5).
_ESTIMATE_ORDERS: tuple[int, ...] = tuple(range(2, 11)) + tuple(range(12, 64))


def rdp_epsilon_upper_estimate(*, history: Sequence[Sequence[float]], delta: float) -> float:
    """RDP epsilon over the integer orders only: >= :func:`rdp_epsilon`, in milliseconds (for predictions)."""
    hist, delta, settled = _checked_history(history, delta)
    if settled is not None:
        return settled
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        curve = sum(
            compute_rdp(q=q, noise_multiplier=z, steps=steps, orders=list(_ESTIMATE_ORDERS)) for z, q, steps in hist
        )
    return rdp_to_epsilon(orders=_ESTIMATE_ORDERS, rdp=curve, delta=delta)


def prv_grid_points(*, history: Sequence[Sequence[float]], delta: float, eps_error: float = PRV_EPS_ERROR) -> float:
    """The number of grid points opacus' PRVAccountant would discretize and FFT for ``history``
    (per distinct entry, summed), predicted with its own domain rule from RDP alone (milliseconds;
    RDP over the integer orders, so the prediction errs on the large side). ``math.inf`` where the
    domain is unbounded (a z = 0 entry, or RDP overflows)."""
    delta = _check_delta(delta)
    hist = normalize_history(history)
    if not hist:
        return 0.0
    delta_error = delta / 1000.0  # opacus' default
    total = sum(steps for _, _, steps in hist)
    length = rdp_epsilon_upper_estimate(history=hist, delta=delta_error / 4.0)
    for z, q, _ in hist:
        length = max(length, rdp_epsilon_upper_estimate(history=[(z, q, 1)], delta=delta_error / (8.0 * total)))
    if not math.isfinite(length):
        return math.inf
    length = max(length, eps_error) + 3.0
    mesh = eps_error / math.sqrt(total * math.log(12.0 / delta_error) / 2.0)
    return (2.0 * length / mesh + 2.0) * len(hist)


def _fmt_z(hist: list[HistoryEntry]) -> str:
    zs = sorted({z for z, _, _ in hist})
    return f"z={zs[0]:.4g}" if len(zs) == 1 else f"z={zs[0]:.4g}..{zs[-1]:.4g}"


def prv_out_of_range(
    *, history: Sequence[Sequence[float]], delta: float, rdp: float | None = None, eps_error: float = PRV_EPS_ERROR
) -> str | None:
    """Why PRV is not asked for ``history`` (None: it is in its fast, reliable range)."""
    hist = normalize_history(history)
    if not hist:
        return None
    if rdp is None:  # the estimate is >= RDP: it may refuse PRV a little early, never late
        rdp = rdp_epsilon_upper_estimate(history=hist, delta=delta)
    if rdp > PRV_MAX_EPSILON:
        return (
            f"PRV out of range at {_fmt_z(hist)}: RDP epsilon {rdp:.4g} > {PRV_MAX_EPSILON:g} is beyond its "
            "numerical range; RDP bound used"
        )
    points = prv_grid_points(history=hist, delta=delta, eps_error=eps_error)
    if points > PRV_MAX_GRID_POINTS:
        return (
            f"PRV out of range at {_fmt_z(hist)}: its grid would need {points:.3g} points "
            f"(> {PRV_MAX_GRID_POINTS:.3g}: seconds to minutes of FFTs); RDP bound used"
        )
    return None


def prv_epsilon(*, history: Sequence[Sequence[float]], delta: float, eps_error: float = PRV_EPS_ERROR) -> float:
    """Epsilon from opacus' PRVAccountant (upper bound) for a Gaussian history.

    Raises PrivacyError when the history is out of PRV's fast range (:func:`prv_out_of_range`:
    it is never called there), when the accountant fails, or when it returns a value in its
    overflow range.
    """
    hist, delta, settled = _checked_history(history, delta)
    if settled is not None:
        return settled
    reason = prv_out_of_range(history=hist, delta=delta, eps_error=eps_error)
    if reason is not None:
        raise PrivacyError(reason)
    return _prv(hist, delta, eps_error)


def _prv(hist: list[HistoryEntry], delta: float, eps_error: float) -> float:
    """opacus' PRV on a normalized history already checked to be in range."""
    acc = PRVAccountant()
    acc.history = list(hist)
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            eps = float(acc.get_epsilon(delta=delta, eps_error=eps_error))
    except (RuntimeError, ValueError, FloatingPointError, OverflowError) as exc:
        raise PrivacyError(f"the PRV accountant failed on {hist}: {exc}") from exc
    if not math.isfinite(eps) or eps >= PRV_OVERFLOW_EPSILON:
        raise PrivacyError(f"PRV out of range at {_fmt_z(hist)}: the accountant returned {eps}; RDP bound used")
    return eps


def json_epsilon(value: float | None) -> float | str | None:
    """An epsilon as every JSON output writes it: a float, or the string "inf" (never null for an
    infinite epsilon, never 0.0; JSON has no infinity). None stays None (a figure not asked for)."""
    if value is None:
        return None
    value = float(value)
    if math.isnan(value) or math.isinf(value):  # NaN: nothing proven, so no guarantee
        return "inf" if math.isnan(value) or value > 0 else "-inf"
    return value


@dataclass(frozen=True)
class Epsilons:
    """Epsilon of a continuous Gaussian history at ``delta`` from both accountants. ``prv`` is None where PRV
    was out of range or could not be trusted (see ``prv_note``); ``headline`` is PRV when available, else
    the RDP bound. A run reports these as its "gaussian_limit", for reference only (module docstring)."""

    prv: float | None
    rdp: float
    delta: float
    prv_note: str | None = None

    @property
    def headline(self) -> float:
        return self.prv if self.prv is not None else self.rdp

    @property
    def accountant(self) -> str:
        """The accountant behind ``headline``: "prv", or "rdp" where PRV was out of range."""
        return "prv" if self.prv is not None else "rdp"

    def to_json(self) -> dict[str, Any]:
        """JSON-ready: infinite epsilons as "inf"; where PRV was out of range ``epsilon_prv`` carries the RDP
        bound used instead (``accountant`` "rdp", the reason in ``prv_note``), never null."""
        return {
            "epsilon": json_epsilon(self.headline),
            "accountant": self.accountant,
            "epsilon_prv": json_epsilon(self.headline),
            "epsilon_rdp": json_epsilon(self.rdp),
            "prv_note": self.prv_note,
            "delta": self.delta,
        }


def gaussian_epsilons(*, history: Sequence[Sequence[float]], delta: float) -> Epsilons:
    """PRV and RDP epsilons of a continuous Gaussian history at ``delta`` (a run's reference figures, not
    its headline); PRV only where it is fast and reliable (:func:`prv_out_of_range`), else the RDP bound
    with a note."""
    rdp = rdp_epsilon(history=history, delta=delta)
    if rdp == 0.0 or math.isinf(rdp):
        return Epsilons(prv=rdp, rdp=rdp, delta=float(delta))
    reason = prv_out_of_range(history=history, delta=delta, rdp=rdp)
    if reason is not None:
        return Epsilons(prv=None, rdp=rdp, delta=float(delta), prv_note=reason)
    try:
        prv = _prv(normalize_history(history), float(delta), PRV_EPS_ERROR)
    except PrivacyError as exc:
        return Epsilons(prv=None, rdp=rdp, delta=float(delta), prv_note=str(exc))
    return Epsilons(prv=prv, rdp=rdp, delta=float(delta))


def epsilon(*, noise_multiplier: float, sample_rate: float, rounds: int, delta: float) -> Epsilons:
    """User-level epsilon after ``rounds`` rounds of Poisson client sampling at ``sample_rate``."""
    return gaussian_epsilons(history=[(noise_multiplier, sample_rate, rounds)], delta=delta)


def local_upload_epsilon(*, noise_multiplier: float, delta: float) -> Epsilons:
    """Epsilon of one local-mode upload seen on its own (one step, sample_rate 1)."""
    return gaussian_epsilons(history=[(noise_multiplier, 1.0, 1)], delta=delta)


# ---------------------------------------------------------------- discrete mechanisms


def _orders(orders: Sequence[float]) -> np.ndarray:
    arr = np.asarray(orders, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0 or np.any(arr <= 1.0) or np.any(arr != np.floor(arr)):
        raise PrivacyError("RDP orders for the discrete mechanisms must be integers > 1")
    return arr


def ddg_tau(*, share_sigma: float, n_shares: int) -> float:
    """tau = 10 * sum_{k=1}^{n-1} exp(-2 pi^2 sigma^2 k / (k+1)) (Kairouz et al. 2021)."""
    k = np.arange(1, n_shares, dtype=np.float64)
    return float(10.0 * np.sum(np.exp(-2.0 * math.pi**2 * share_sigma**2 * k / (k + 1.0))))


def ddg_rdp(
    *,
    orders: Sequence[float],
    l2_sensitivity: float,
    l1_sensitivity: float,
    share_sigma: float,
    n_shares: int,
    dim: int,
) -> np.ndarray:
    """RDP of a sum of ``n_shares`` discrete Gaussians N_Z(0, sigma^2) per coordinate in ``dim``
    coordinates, for an integer difference of L2 norm <= Delta2, L1 norm <= Delta1
    (Kairouz, Liu, Steinke 2021, Prop. 14; needs sigma >= 1/2). With a = Delta2 / (sqrt(n) sigma),
    b = Delta1 / (sqrt(n) sigma):

        eps(alpha) = min( alpha a^2 / 2 + tau d,
                          alpha / 2 (a^2 + 2 b tau + tau^2 d),
                          alpha / 2 (a + tau sqrt(d))^2 )
    """
    if share_sigma < 0.5:
        raise PrivacyError(f"the discrete Gaussian bound needs share sigma >= 1/2, got {share_sigma}")
    check_int("n_shares", n_shares, low=1, error=PrivacyError)
    check_int("dim", dim, low=1, error=PrivacyError)
    alpha = _orders(orders)
    root = math.sqrt(n_shares) * share_sigma
    a = l2_sensitivity / root
    b = l1_sensitivity / root
    tau = ddg_tau(share_sigma=share_sigma, n_shares=n_shares)
    t1 = alpha * a * a / 2.0 + tau * dim
    t2 = alpha / 2.0 * (a * a + 2.0 * b * tau + tau * tau * dim)
    t3 = alpha / 2.0 * (a + tau * math.sqrt(dim)) ** 2
    return np.minimum(np.minimum(t1, t2), t3)


def skellam_rdp(
    *, orders: Sequence[float], l2_sensitivity: float, l1_sensitivity: float, total_variance: float
) -> np.ndarray:
    """RDP of the multi-dimensional Skellam mechanism with per-coordinate variance V (integer
    alpha > 1; Agarwal, Kairouz, Liu 2021, written with V = 2 mu):

        eps(alpha) = alpha Delta2^2 / (2 V) + min( ((2 alpha - 1) Delta2^2 + 6 Delta1) / (4 V^2),
                                                   3 Delta1 / (2 V) )
    """
    check_number("Skellam total variance", total_variance, low=0.0, low_open=True, error=PrivacyError)
    alpha = _orders(orders)
    d2sq = l2_sensitivity**2
    v = total_variance
    extra = np.minimum(
        ((2.0 * alpha - 1.0) * d2sq + 6.0 * l1_sensitivity) / (4.0 * v * v), 3.0 * l1_sensitivity / (2.0 * v)
    )
    return alpha * d2sq / (2.0 * v) + extra


def rdp_to_epsilon(*, orders: Sequence[float], rdp: Sequence[float] | np.ndarray, delta: float) -> float:
    """(epsilon, delta) from an RDP curve, by opacus' ``get_privacy_spent``."""
    delta = _check_delta(delta)
    curve = np.asarray(rdp, dtype=np.float64)
    curve = np.where(np.isnan(curve), np.inf, curve)  # an order whose bound could not be computed proves nothing
    if not np.any(np.isfinite(curve)):
        return math.inf
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        eps, _ = get_privacy_spent(orders=list(orders), rdp=list(curve), delta=delta)
    eps = float(eps)
    return math.inf if math.isnan(eps) else eps


def gaussian_rdp_epsilon_at_orders(
    *, noise_multiplier: float, rounds: int, delta: float, orders: Sequence[float] = DISCRETE_ORDERS
) -> float:
    """The continuous Gaussian's epsilon (no sampling) at the same orders as the discrete bounds:
    the limit the discrete figures approach as the scale grows."""
    if noise_multiplier == 0:
        return math.inf
    rdp = compute_rdp(q=1.0, noise_multiplier=noise_multiplier, steps=rounds, orders=list(orders))
    return rdp_to_epsilon(orders=orders, rdp=rdp, delta=delta)


@dataclass(frozen=True)
class DiscreteAccount:
    """The discrete mechanism's guarantee and the integer-domain quantities behind it."""

    mechanism: str
    epsilon: float
    delta: float
    rounds: int
    l2_sensitivity: float  # rounded-vector bound, integer units
    l1_sensitivity: float
    total_std: float  # std of the sum's noise over n_min shares, integer units (z * C * scale)
    n_shares: int


def discrete_epsilon(
    *,
    mechanism: str,
    noise_multiplier: float,
    clip: float,
    scale: float,
    dim: int,
    n_min: int,
    rounds: int,
    delta: float,
    beta: float,
    l2_bound: float | None = None,
    orders: Sequence[float] = DISCRETE_ORDERS,
) -> DiscreteAccount:
    """Epsilon of ``rounds`` rounds of a distributed discrete mechanism, worst case n_min shares.

    ``dim`` is the rotated (padded) length; ``l2_bound`` the float L2 bound of a client's whole
    vector (defaults to ``clip``; larger when an unclipped count part rides along); the noise in
    the sum has std z * C * scale over n_min shares. No amplification by sampling.
    """
    check_choice("mechanism", mechanism, ("discrete_gaussian", "skellam"), error=PrivacyError)
    check_int("rounds", rounds, low=0, error=PrivacyError)
    check_int("n_min", n_min, low=1, error=PrivacyError)
    check_number("clip", clip, low=0.0, low_open=True, error=PrivacyError)
    check_number("scale", scale, low=0.0, low_open=True, error=PrivacyError)
    check_number("noise_multiplier", noise_multiplier, low=0.0, error=PrivacyError)
    delta = _check_delta(delta)
    bound = clip if l2_bound is None else check_number("l2_bound", l2_bound, low=clip, error=PrivacyError)
    d2 = rounded_l2_bound(scaled_norm=bound * scale, dim=dim, beta=beta)
    d1 = rounded_l1_bound(l2_bound=d2, dim=dim)
    total_std = noise_multiplier * clip * scale

    def account(epsilon: float) -> DiscreteAccount:
        return DiscreteAccount(
            mechanism=mechanism,
            epsilon=epsilon,
            delta=delta,
            rounds=rounds,
            l2_sensitivity=d2,
            l1_sensitivity=d1,
            total_std=total_std,
            n_shares=n_min,
        )

    if rounds == 0:
        return account(0.0)
    if total_std == 0.0:
        return account(math.inf)
    if mechanism == "discrete_gaussian":
        per_round = ddg_rdp(
            orders=orders,
            l2_sensitivity=d2,
            l1_sensitivity=d1,
            share_sigma=total_std / math.sqrt(n_min),
            n_shares=n_min,
            dim=dim,
        )
    else:
        per_round = skellam_rdp(orders=orders, l2_sensitivity=d2, l1_sensitivity=d1, total_variance=total_std**2)
    return account(rdp_to_epsilon(orders=orders, rdp=per_round * rounds, delta=delta))
