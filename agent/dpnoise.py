"""Distributed discrete Gaussian noise (Kairouz, Liu and Steinke, ICML 2021), sampled exactly.

Each device adds N_Z(0, σ²_dev) to every coordinate of its integer contribution before masking.
The server only ever sees sums, and the sum of the t_min devices that must survive a round carries
variance t_min·σ²_dev = σ²_total, the noise the accountant charged the round for (more survivors only
add noise). Sums of discrete Gaussians are not exactly discrete Gaussian; the theorem's extra Rényi
term τ·d (``telemetry.accounting.ddg_tau``) is charged by the accountant; it is below 1e-16 per
coordinate once σ_dev ≥ 2 (the defaults are in the thousands).

The sampler is Canonne, Kamath and Steinke (NeurIPS 2020, "The Discrete Gaussian for Differential
Privacy", Algorithms 1–3): rejection from a discrete Laplace, with every Bernoulli(exp(−γ)) done in
exact integer arithmetic on uniform draws from the operating system's secure source (``secrets``).
No floating point touches a sample (Mironov 2012 shows how floating-point noise leaks). Written by
hand because no maintained Python package fits a device: OpenDP's Rust sampler is exact too, but
brings a large native wheel and a framework of domains and metrics for one function; the algorithm
is 40 lines and is tested against the exact pmf (``tests/test_dp_noise.py``).

Noise that could wrap the ring is impossible by construction: each coordinate's noise is limited to
±``truncation_bound`` (resampled beyond it, which happens with probability < 2^−40 per round for
the whole group, an event the accountant adds to δ), so a group sum is bounded and
``check_ring`` refuses parameters whose bound reaches the ring's half range.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from agent.secagg.ring import Ring

TRUNCATION_LOG2 = 40  # the whole group's chance of any truncation in a round is below 2^-40

_random = secrets.SystemRandom()
_randbelow = _random.randrange


def _bernoulli_exp_unit(num: int, den: int) -> bool:
    """Bernoulli(exp(−num/den)) for 0 ≤ num/den ≤ 1 (CKS Algorithm 1, first part)."""
    k = 1
    while _randbelow(den * k) < num:
        k += 1
    return k % 2 == 1


def bernoulli_exp(num: int, den: int) -> bool:
    """Bernoulli(exp(−γ)) for rational γ = num/den ≥ 0, exactly."""
    whole = num // den
    for _ in range(whole):
        if not _bernoulli_exp_unit(1, 1):
            return False
    return _bernoulli_exp_unit(num - whole * den, den)


def discrete_laplace(t: int) -> int:
    """P[X = x] ∝ exp(−|x|/t) for integer t ≥ 1 (CKS Algorithm 2)."""
    while True:
        u = _randbelow(t)
        if not bernoulli_exp(u, t):
            continue
        v = 0
        while bernoulli_exp(1, 1):
            v += 1
        x = u + t * v
        negative = _randbelow(2) == 1
        if negative and x == 0:
            continue
        return -x if negative else x


def discrete_gaussian(sigma2: Fraction) -> int:
    """P[X = x] ∝ exp(−x²/(2σ²)) for rational σ² > 0 (CKS Algorithm 3)."""
    num, den = sigma2.numerator, sigma2.denominator
    t = math.isqrt(num // den) + 1  # ⌊σ⌋ + 1
    while True:
        y = discrete_laplace(t)
        # γ = (|y| − σ²/t)² / (2σ²) = (|y|·t·den − num)² / (2·num·t²·den)
        a = abs(y) * t * den - num
        if bernoulli_exp(a * a, 2 * num * t * t * den):
            return y


def truncation_bound(sigma2: Fraction, group_size: int, length: int, log2_fail: int = TRUNCATION_LOG2) -> int:
    """B with P[any of group_size·length samples has |X| > B] ≤ 2^−log2_fail.

    The discrete Gaussian is σ-subgaussian (CKS 2020), so P[|X| > B] ≤ 2·exp(−B²/(2σ²)).
    """
    per_sample = log2_fail * math.log(2) + math.log(2 * group_size * length)
    return math.ceil(math.sqrt(2 * float(sigma2) * per_sample)) + 1


@dataclass(frozen=True)
class DeviceNoise:
    """What the server assigns a device for one round: its noise variance (rational) and bound."""

    sigma2: Fraction
    bound: int

    def __post_init__(self) -> None:
        if self.sigma2 < 0 or self.bound < 0:
            raise ValueError("noise variance and bound must be non-negative")

    @classmethod
    def for_group(cls, sigma2: Fraction, group_size: int, length: int) -> DeviceNoise:
        return cls(Fraction(sigma2), truncation_bound(Fraction(sigma2), group_size, length) if sigma2 > 0 else 0)


def sample_noise(length: int, noise: DeviceNoise) -> np.ndarray:
    """``length`` independent discrete Gaussian samples, each within ±bound (resampled beyond)."""
    out = np.zeros(length, dtype=np.int64)
    if noise.sigma2 == 0:
        return out
    for i in range(length):
        while True:
            x = discrete_gaussian(noise.sigma2)
            if -noise.bound <= x <= noise.bound:
                out[i] = x
                break
    return out


def discrete_gaussian_pmf(sigma2: float, support: np.ndarray) -> np.ndarray:
    """The exact pmf on ``support`` (normalised over a range wide enough to hold all the mass)."""
    sd = math.sqrt(sigma2)
    width = int(40 * sd) + 10
    xs = np.arange(-width, width + 1)
    z = np.exp(-(xs.astype(float) ** 2) / (2 * sigma2)).sum()
    return np.exp(-(np.asarray(support, float) ** 2) / (2 * sigma2)) / z


def max_abs_group_sum(max_coordinate: int, group_size: int, noise: DeviceNoise) -> int:
    """Largest |sum| one coordinate can reach: every device at its largest value and noise bound."""
    return group_size * (max_coordinate + noise.bound)


def check_ring(ring: Ring, max_coordinate: int, group_size: int, noise: DeviceNoise) -> None:
    """Refuse (RingOverflow) a ring in which a group sum could wrap."""
    ring.check_capacity(max_abs_group_sum(max_coordinate, group_size, noise))
