"""Scaling, conditional randomized rounding and the modular-clipping estimate (distributed mode).

Pipeline of one client (Kairouz, Liu, Steinke, ICML 2021, Sec. 4): clip to L2 <= c, rotate,
multiply by ``scale`` (= 1/gamma), round each coordinate randomly to floor or ceil (unbiased),
and re-round until the integer vector's L2 norm is <= the bound of :func:`rounded_l2_bound`
(each try succeeds with probability >= 1 - beta). That bound is the sensitivity the discrete
accountants use. The secure-aggregation layer reduces the integer sum modulo 2^b; a coordinate
whose true sum leaves [-2^(b-1), 2^(b-1)) wraps around ("modular clipping"), and
:func:`modular_clipping_probability` bounds how often that happens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import optimize

from mrff_secure.checks import check_choice, check_int, check_number
from mrff_secure.errors import PrivacyError

MAX_MODULUS_BITS = 62  # int64 holds a centered value of 62 bits plus headroom for one addition


def rounded_l2_bound(*, scaled_norm: float, dim: int, beta: float) -> float:
    """L2 bound enforced on the rounded integer vector (Kairouz et al. 2021, conditional rounding).

    ``scaled_norm`` bounds the scaled float vector (c * scale). With beta > 0 the bound is
    min(c + sqrt(d), sqrt(c^2 + d/4 + sqrt(2 ln(1/beta)) (c + sqrt(d)/2))); with beta = 0 only
    the deterministic c + sqrt(d) (every coordinate moves by less than 1).
    """
    c = check_number("scaled_norm", scaled_norm, low=0.0, error=PrivacyError)
    d = check_int("dim", dim, low=1, error=PrivacyError)
    b = check_number("beta", beta, low=0.0, high=1.0, high_open=True, error=PrivacyError)
    deterministic = c + math.sqrt(d)
    if b == 0.0:
        return deterministic
    probabilistic = math.sqrt(c * c + d / 4.0 + math.sqrt(2.0 * math.log(1.0 / b)) * (c + math.sqrt(d) / 2.0))
    return min(deterministic, probabilistic)


def rounded_l1_bound(*, l2_bound: float, dim: int) -> float:
    """L1 bound of an integer vector with L2 norm <= l2_bound: min(l2^2, sqrt(d) l2).

    (|v_i| <= v_i^2 for integers, and Cauchy-Schwarz.)
    """
    l2 = check_number("l2_bound", l2_bound, low=0.0, error=PrivacyError)
    d = check_int("dim", dim, low=1, error=PrivacyError)
    return min(l2 * l2, math.sqrt(d) * l2)


def conditional_randomized_round(
    x: np.ndarray, *, norm_bound: float, rng: np.random.Generator, max_tries: int = 1000
) -> np.ndarray:
    """Round floats (d,) or (clients, d) to int64, each row re-drawn until its L2 norm <= bound.

    Each coordinate becomes floor(x) + Bernoulli(x - floor(x)) (unbiased). Raises PrivacyError
    if a row still exceeds the bound after ``max_tries`` draws (bound too small for the input).
    """
    bound = check_number("norm_bound", norm_bound, low=0.0, error=PrivacyError)
    if not isinstance(x, np.ndarray) or not np.issubdtype(x.dtype, np.floating):
        raise PrivacyError("conditional_randomized_round takes a floating-point numpy array")
    if x.ndim not in (1, 2):
        raise PrivacyError(f"expected (d,) or (clients, d), got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise PrivacyError("conditional_randomized_round got a non-finite value")
    rows = np.asarray(np.atleast_2d(x), dtype=np.float64)  # (clients, d)
    floor = np.floor(rows)
    frac = rows - floor
    out = np.empty(rows.shape, dtype=np.int64)
    todo = np.arange(rows.shape[0])
    bound_sq = bound * bound
    for _ in range(max_tries):
        every = todo.size == rows.shape[0]  # skip the gather copies on the first (usually only) draw
        base, fraction = (floor, frac) if every else (floor[todo], frac[todo])
        draw = base + (rng.random(fraction.shape) < fraction)  # (todo, d)
        ok = np.einsum("ij,ij->i", draw, draw) <= bound_sq
        if every and ok.all():
            return draw.astype(np.int64).reshape(x.shape)
        out[todo[ok]] = draw[ok].astype(np.int64)
        todo = todo[~ok]
        if todo.size == 0:
            return out.reshape(x.shape)
    raise PrivacyError(
        f"conditional rounding failed for {todo.size} vector(s) after {max_tries} tries: "
        f"the norm bound {bound} is too small for the scaled input"
    )


def wrap_to_modulus(v: np.ndarray, *, modulus_bits: int) -> np.ndarray:
    """Integers -> their residues in [0, 2^b) (int64)."""
    b = check_int("modulus_bits", modulus_bits, low=2, high=MAX_MODULUS_BITS, error=PrivacyError)
    return np.asarray(v, dtype=np.int64) & ((np.int64(1) << b) - 1)  # == mod 2^b in two's complement


def centered_lift(u: np.ndarray, *, modulus_bits: int) -> np.ndarray:
    """Residues mod 2^b -> the signed representatives in [-2^(b-1), 2^(b-1)) (int64)."""
    b = check_int("modulus_bits", modulus_bits, low=2, high=MAX_MODULUS_BITS, error=PrivacyError)
    m = np.int64(1) << b
    r = np.mod(np.asarray(u, dtype=np.int64), m)
    return np.where(r >= (m >> 1), r - m, r)


@dataclass(frozen=True)
class ModularClippingReport:
    """Bounds on wrap-around of the integer secure sum.

    per_coordinate: P[one coordinate of the sum leaves [-2^(b-1), 2^(b-1))];
    any_coordinate: union bound over all ``padded_dim`` coordinates (capped at 1);
    half_range: 2^(b-1); variance_proxy: the sum coordinate's sub-Gaussian variance proxy
    (signal + rounding + noise, integer units) that the tail bound used.
    """

    per_coordinate: float
    any_coordinate: float
    half_range: int
    variance_proxy: float


def modular_clipping_probability(
    *,
    l2_bound: float,
    scale: float,
    padded_dim: int,
    n_clients: int,
    share_variance: float,
    modulus_bits: int,
    mechanism: str,
) -> ModularClippingReport:
    """Chernoff bound on a sum coordinate leaving the centered range of the modulus 2^b.

    A sum coordinate is S + R + N: S the rotated sum of n clipped, scaled vectors (sub-Gaussian
    with variance proxy (n * l2_bound * scale)^2 / p in the worst case, all updates aligned),
    R the n rounding errors (each in an interval of length 1, proxy 1/4), N the n noise shares
    (discrete Gaussian: proxy = its sigma^2; Skellam: its exact log-MGF 2 mu (cosh t - 1) with
    mu = variance / 2). All n clients are assumed present (the largest sum). Approximation: the
    rounding errors are treated as unconditional randomized rounding; the rejection step of
    conditional rounding only discards draws of large norm.
    """
    c = check_number("l2_bound", l2_bound, low=0.0, error=PrivacyError)
    s = check_number("scale", scale, low=0.0, low_open=True, error=PrivacyError)
    p = check_int("padded_dim", padded_dim, low=1, error=PrivacyError)
    n = check_int("n_clients", n_clients, low=1, error=PrivacyError)
    var = check_number("share_variance", share_variance, low=0.0, error=PrivacyError)
    b = check_int("modulus_bits", modulus_bits, low=2, error=PrivacyError)
    check_choice("mechanism", mechanism, ("discrete_gaussian", "skellam"), error=PrivacyError)
    half = 2 ** (b - 1)
    proxy = (n * c * s) ** 2 / p + n / 4.0
    if mechanism == "discrete_gaussian":
        proxy += n * var

    def log_mgf(t: float) -> float:
        out = proxy * t * t / 2.0
        if mechanism == "skellam" and var > 0:  # (cosh overflows for the large t of a noise-free sum)
            out += n * var * (math.cosh(t) - 1.0)  # 2 * (var/2) * (cosh t - 1) per share
        return out

    r = float(half)
    # optimal t for the sub-Gaussian part alone is r / proxy; search around it
    t_hi = max(r / max(proxy, 1e-300), 1e-12)
    if mechanism == "skellam" and var > 0:
        t_hi = min(t_hi, math.asinh(r / (n * var)) + 1.0) if n * var > 0 else t_hi
    res = optimize.minimize_scalar(lambda t: log_mgf(t) - t * r, bounds=(0.0, t_hi * 1.5 + 1e-12), method="bounded")
    log_tail = min(0.0, float(res.fun))
    per = min(1.0, 2.0 * math.exp(log_tail))
    return ModularClippingReport(
        per_coordinate=per,
        any_coordinate=min(1.0, per * p),
        half_range=half,
        variance_proxy=proxy + (n * var if mechanism == "skellam" else 0.0),
    )
