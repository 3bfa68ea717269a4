"""Drift statistics on binned data, and thresholds that know about sampling and DP noise.

Pure numpy (no Django): the beat job, the regression gate and the tests call the same code.
Inputs are count vectors over the same bin edges; DP noise can make counts negative or fractional,
so every function first turns counts into a proper distribution (negatives clipped to zero, a
small pseudo-count so empty bins do not make PSI infinite).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# Probability added to every bin before PSI/JS: keeps log(0) away without moving real scores.
PSEUDO = 1e-4
# Below this PSI a shift is too small to act on, however sure we are that it is real:
# fixed p-values over-fire at fleet scale (KS flags a 0.01 sigma shift at N=1,000,000).
PSI_FLOOR = 0.1
# Per-test false-alarm rate of the noise-aware null before the floor applies.
ALPHA = 0.001


def distribution(counts: Sequence[float] | np.ndarray, pseudo: float = PSEUDO) -> np.ndarray:
    """Counts (possibly noisy) → probabilities: clip negatives, add ``pseudo`` per bin, normalise."""
    c = np.clip(np.asarray(counts, dtype=np.float64), 0.0, None)
    total = c.sum()
    p = c / total if total > 0 else np.full(c.shape, 1.0 / c.size)
    p = p + pseudo
    return p / p.sum()


def psi(reference: Sequence[float], current: Sequence[float]) -> float:
    """Population stability index Σ (p−q)·ln(p/q): a symmetrised KL divergence."""
    q, p = distribution(reference), distribution(current)
    return float(np.sum((p - q) * np.log(p / q)))


def js_distance(reference: Sequence[float], current: Sequence[float]) -> float:
    """Jensen–Shannon distance (square root of the divergence), base 2 so it lies in [0, 1]."""
    q, p = distribution(reference), distribution(current)
    m = 0.5 * (p + q)
    div = 0.5 * np.sum(p * np.log2(p / m)) + 0.5 * np.sum(q * np.log2(q / m))
    return float(np.sqrt(max(div, 0.0)))


def centers(edges: Sequence[float]) -> np.ndarray:
    """Bin centres: where W1 puts a bin's mass (the clipped end bins sit at their centres too)."""
    e = np.asarray(edges, dtype=np.float64)
    return 0.5 * (e[:-1] + e[1:])


def wasserstein1(edges: Sequence[float], reference: Sequence[float], current: Sequence[float]) -> float:
    """Earth mover's distance with each bin's mass at its centre: ∫|F_p − F_q| over the centres.

    Uses the raw normalised counts (no pseudo-count) so it equals
    ``scipy.stats.wasserstein_distance(c, c, q, p)`` exactly.
    """
    c = centers(edges)
    q, p = distribution(reference, 0.0), distribution(current, 0.0)
    cdf_gap = np.abs(np.cumsum(p) - np.cumsum(q))[:-1]
    return float(np.sum(cdf_gap * np.diff(c)))


def ks_statistic(reference: Sequence[float], current: Sequence[float]) -> float:
    """Largest gap between the binned CDFs (the KS statistic the bins allow us to see)."""
    q, p = distribution(reference, 0.0), distribution(current, 0.0)
    return float(np.max(np.abs(np.cumsum(p) - np.cumsum(q))))


def scores(edges: Sequence[float] | None, reference: Sequence[float], current: Sequence[float]) -> dict[str, float]:
    """All four statistics at once; W1 needs edges (None for class outputs, which have no order)."""
    out = {
        "psi": psi(reference, current),
        "js": js_distance(reference, current),
        "ks": ks_statistic(reference, current),
        "w1": None,
    }
    if edges is not None:
        out["w1"] = wasserstein1(edges, reference, current)
    return out


def null_psi_samples(
    reference: Sequence[float],
    current_mass: float,
    noise_var_per_bin: float,
    reference_mass: float | None = None,
    reference_noise_var: float = 0.0,
    sims: int = 400,
    seed: int = 0,
) -> np.ndarray:
    """PSI values we would see with NO drift, by simulation.

    The current histogram is ``current_mass`` inferences drawn from the reference distribution
    plus Gaussian noise of ``noise_var_per_bin`` on each bin (a sum of many Laplace noises is close
    to Gaussian). The reference itself is a finite (and, when learned from a window, noisy) sample
    of ``reference_mass``; that uncertainty is simulated too. Seeded: the same inputs always give
    the same threshold, so alerts do not flicker between runs.
    """
    rng = np.random.default_rng(seed)
    q = distribution(reference, 0.0)
    m = max(round(current_mass), 1)
    cur = rng.multinomial(m, q, size=sims).astype(np.float64)
    if noise_var_per_bin > 0:
        cur += rng.normal(0.0, np.sqrt(noise_var_per_bin), size=cur.shape)
    if reference_mass:
        ref = rng.multinomial(max(round(reference_mass), 1), q, size=sims).astype(np.float64)
        if reference_noise_var > 0:
            ref += rng.normal(0.0, np.sqrt(reference_noise_var), size=ref.shape)
    else:
        ref = np.tile(q, (sims, 1))
    return psi_rows(ref, cur)


def psi_rows(reference: np.ndarray, current: np.ndarray) -> np.ndarray:
    """PSI of each row pair (vectorised ``psi`` for the simulated null)."""

    def dist(c: np.ndarray) -> np.ndarray:
        c = np.clip(c, 0.0, None)
        tot = c.sum(axis=1, keepdims=True)
        p = np.where(tot > 0, c / np.where(tot > 0, tot, 1.0), 1.0 / c.shape[1]) + PSEUDO
        return p / p.sum(axis=1, keepdims=True)

    q, p = dist(reference), dist(current)
    return np.sum((p - q) * np.log(p / q), axis=1)


def psi_threshold(
    reference: Sequence[float],
    current_mass: float,
    noise_var_per_bin: float,
    reference_mass: float | None = None,
    reference_noise_var: float = 0.0,
    alpha: float = ALPHA,
    floor: float = PSI_FLOOR,
    sims: int = 400,
) -> float:
    """Alarm level for PSI: the (1−α) point of the noise-aware null, never below the effect floor.

    With few reports or much noise the null is wide and the level rises (noise alone does not
    alarm); with many reports it falls to ``floor`` (tiny but real shifts do not alarm either).
    The (1−α) quantile of 400 draws is extrapolated from the null's mean and spread (a scaled
    chi-square has a long right tail: mean + 6 sd covers α=0.001 for ν ≥ 3).
    """
    null = null_psi_samples(reference, current_mass, noise_var_per_bin, reference_mass, reference_noise_var, sims)
    return alarm_level(null, alpha, floor)


def alarm_level(null: np.ndarray, alpha: float = ALPHA, floor: float = PSI_FLOOR) -> float:
    """The (1−α) point of simulated no-drift PSIs (extrapolated: mean + z·sd), never below ``floor``."""
    z = {0.05: 2.0, 0.01: 3.5, 0.001: 6.0}.get(alpha, 6.0)
    level = float(np.mean(null) + z * np.std(null))
    level = max(level, float(np.quantile(null, min(1.0 - alpha, 1.0))))
    return max(level, floor)


def psi_threshold_shares(
    reference: Sequence[float],
    bin_var: float,
    reference_mass: float | None = None,
    reference_bin_var: float = 0.0,
    alpha: float = ALPHA,
    floor: float = PSI_FLOOR,
    sims: int = 400,
    seed: int = 0,
) -> float:
    """Alarm level for PSI of a distribution read from secure-aggregation rounds.

    A round rollup is a median of group distributions whose noise is known per bin *in shares*
    (``telemetry.group_sums``: σ²_sum / (scale·a)², times the median's factor) from the rounds'
    public parameters; it carries no inference count, and each active device weighs the same, so
    the null is the reference's shares plus Gaussian noise of ``bin_var`` on each bin — no
    multinomial over inferences. The reference's own uncertainty is simulated as in
    ``null_psi_samples``: a sample of ``reference_mass`` (shares) and/or noise ``reference_bin_var``
    (shares). Seeded, like ``psi_threshold``, so the level does not flicker between runs.
    """
    if not bin_var >= 0 or not reference_bin_var >= 0:
        raise ValueError("noise variances must be non-negative numbers")
    rng = np.random.default_rng(seed)
    q = distribution(reference, 0.0)
    cur = np.tile(q, (sims, 1))
    if bin_var > 0:
        cur = cur + rng.normal(0.0, np.sqrt(bin_var), size=cur.shape)
    if reference_mass:
        m = max(round(reference_mass), 1)
        ref = rng.multinomial(m, q, size=sims) / m  # true division: float64
    else:
        ref = np.tile(q, (sims, 1))
    if reference_bin_var > 0:
        ref = ref + rng.normal(0.0, np.sqrt(reference_bin_var), size=ref.shape)
    return alarm_level(psi_rows(ref, cur), alpha, floor)


def drifted(score: float, threshold: float) -> bool:
    return score > threshold
