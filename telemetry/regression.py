"""Canary-vs-control statistics (pure: numpy/scipy, no Django).

Each comparison gives a verdict with the numbers behind it, so a gate decision can be checked by
a person. Fixed p-values alone over-fire on large fleets, so every "fail" needs BOTH a significant
(or, for quantiles, observed) difference AND an effect larger than the operator's threshold.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats

PASS, FAIL, NOT_ENOUGH = "pass", "fail", "not_enough_data"
# A bin counts as signal when it exceeds this many standard deviations of the summed DP noise:
# at 4 sd a noise-only bin survives about 3 times in 100,000, so a gate evaluated every 30 s over
# 12 bins fakes a tail about once a month rather than several times a day (as 3 sd would).
NOISE_SDS = 4.0
# The gate job re-tests a wave every gate interval on growing data; a one-sided 1% level keeps a
# healthy canary from being rolled back by chance over a soak of many evaluations, while a real
# regression (z well above 5 within a few windows) still fails at once.
GATE_ALPHA = 0.01


@dataclass
class Verdict:
    verdict: str
    canary: float | None = None
    control: float | None = None
    effect: float | None = None
    statistic: float | None = None
    p_value: float | None = None
    n_canary: int = 0
    n_control: int = 0
    threshold: float | None = None
    detail: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def two_proportion_ztest(
    x1: float, n1: float, x2: float, n2: float, noise_var1: float = 0.0, noise_var2: float = 0.0
) -> tuple[float, float]:
    """Pooled two-proportion z-test of p1 > p2 (one-sided: we only fail a canary for being worse).

    Counts may be DP-noisy floats; they are clipped into [0, n]. ``noise_var*`` is the variance of
    the DP noise summed into each error count: it widens the standard error, so noise alone (which
    matters most when few devices report) cannot look like a significant regression.
    Returns (z, p).
    """
    n1, n2 = max(float(n1), 0.0), max(float(n2), 0.0)
    if n1 <= 0 or n2 <= 0:
        return 0.0, 1.0
    x1, x2 = min(max(float(x1), 0.0), n1), min(max(float(x2), 0.0), n2)
    pooled = (x1 + x2) / (n1 + n2)
    var = pooled * (1 - pooled) * (1 / n1 + 1 / n2) + noise_var1 / n1**2 + noise_var2 / n2**2
    if var <= 0:
        return 0.0, 1.0
    z = (x1 / n1 - x2 / n2) / math.sqrt(var)
    return z, float(stats.norm.sf(z))


def histogram_quantile(edges: Sequence[float], counts: Sequence[float], q: float) -> float | None:
    """Quantile of a binned distribution, linear within the bin it falls in.

    Noisy negative counts are clipped to zero; an empty histogram has no quantile (None).
    """
    c = np.clip(np.asarray(counts, dtype=np.float64), 0.0, None)
    total = c.sum()
    if total <= 0:
        return None
    e = np.asarray(edges, dtype=np.float64)
    cdf = np.concatenate([[0.0], np.cumsum(c) / total])
    i = int(np.searchsorted(cdf, q, side="left"))
    i = min(max(i, 1), len(c))
    lo, hi = cdf[i - 1], cdf[i]
    frac = 0.0 if hi == lo else (q - lo) / (hi - lo)
    return float(e[i - 1] + frac * (e[i] - e[i - 1]))


def error_rate_verdict(
    canary_errors: float,
    canary_inferences: float,
    control_errors: float,
    control_inferences: float,
    n_canary: int,
    n_control: int,
    max_increase: float = 0.02,
    min_devices: int = 20,
    alpha: float = GATE_ALPHA,
    canary_noise_var: float = 0.0,
    control_noise_var: float = 0.0,
) -> Verdict:
    """Fail when the canary's error rate is significantly higher AND by more than ``max_increase``.

    Below ``min_devices`` on a side nothing is computed. Rates are noisy counts clipped into [0, 1]:
    noise may make errors negative or exceed a small inference count.
    """
    v = Verdict(NOT_ENOUGH, n_canary=n_canary, n_control=n_control, threshold=max_increase)
    if n_canary < min_devices or n_control < min_devices:
        v.detail = f"needs {min_devices} reporting devices on each side (canary {n_canary}, control {n_control})"
        return v
    v.canary, v.control = (
        clipped_rate(canary_errors, canary_inferences),
        clipped_rate(control_errors, control_inferences),
    )
    if v.canary is None or v.control is None:
        v.detail = "no inferences stand clear of the privacy noise on a side yet"
        return v
    v.effect = v.canary - v.control
    v.statistic, v.p_value = two_proportion_ztest(
        canary_errors, canary_inferences, control_errors, control_inferences, canary_noise_var, control_noise_var
    )
    failed = v.effect > max_increase and v.p_value < alpha
    v.verdict = FAIL if failed else PASS
    v.detail = (
        f"error rate {v.canary:.4f} vs {v.control:.4f} (+{v.effect:.4f}, z={v.statistic:.2f}, "
        f"p={v.p_value:.3g}); fails above +{max_increase} when p<{alpha}"
    )
    return v


def clipped_rate(errors: float, inferences: float) -> float | None:
    """errors / inferences with both noisy counts clipped (errors into [0, inferences]); None without inferences."""
    if not inferences > 0:
        return None
    return min(max(float(errors), 0.0), float(inferences)) / float(inferences)


def denoise(counts: Sequence[float], noise_var: float, sds: float = NOISE_SDS) -> np.ndarray:
    """Keep only bins that stand clear of the summed DP noise; the rest cannot be told from zero.

    Clipping alone is not enough: every empty bin keeps the positive half of its noise, and with few
    real counts that mass lands in the tail and inflates high quantiles (a p95 of 700 ms for a
    model that answers in 1 ms). ``noise_var`` is the per-bin variance of the summed noise.
    """
    c = np.asarray(counts, dtype=np.float64)
    if noise_var <= 0:
        return np.clip(c, 0.0, None)
    return np.where(c > sds * math.sqrt(noise_var), c, 0.0)


def latency_verdict(
    edges: Sequence[float],
    canary_counts: Sequence[float],
    control_counts: Sequence[float],
    quantile: float,
    n_canary: int,
    n_control: int,
    max_ratio: float = 1.25,
    min_devices: int = 20,
    canary_noise_var: float = 0.0,
    control_noise_var: float = 0.0,
    min_delta_ms: float = 5.0,
) -> Verdict:
    """Fail when the canary's latency quantile is more than ``max_ratio`` times the control's AND
    more than ``min_delta_ms`` slower: an effect-size floor, because a 2x ratio between two
    sub-millisecond models is scheduler noise on a busy device, not a regression.

    Quantiles are read from the histograms after ``denoise``; when nothing stands clear of the noise
    the answer is not-enough-data, never a guess. The statistic is a two-sample KS on the binned
    latency CDFs (how different the shapes are).
    """
    v = Verdict(NOT_ENOUGH, n_canary=n_canary, n_control=n_control, threshold=max_ratio)
    if n_canary < min_devices or n_control < min_devices:
        v.detail = f"needs {min_devices} reporting devices on each side (canary {n_canary}, control {n_control})"
        return v
    canary_counts = denoise(canary_counts, canary_noise_var)
    control_counts = denoise(control_counts, control_noise_var)
    v.canary = histogram_quantile(edges, canary_counts, quantile)
    v.control = histogram_quantile(edges, control_counts, quantile)
    if v.canary is None or v.control is None:
        v.detail = "latency histograms do not stand clear of the privacy noise yet: more windows needed"
        return v
    v.effect = v.canary / v.control if v.control > 0 else (math.inf if v.canary > 0 else 1.0)
    a = np.clip(np.asarray(canary_counts, float), 0, None)
    b = np.clip(np.asarray(control_counts, float), 0, None)
    v.statistic = float(np.max(np.abs(np.cumsum(a) / a.sum() - np.cumsum(b) / b.sum())))
    v.verdict = FAIL if (v.effect > max_ratio and v.canary - v.control > min_delta_ms) else PASS
    v.detail = (
        f"p{round(quantile * 100)} {v.canary:.2f} ms vs {v.control:.2f} ms (×{v.effect:.3f}); "
        f"fails above ×{max_ratio} when also more than {min_delta_ms:g} ms slower"
    )
    return v


def rate_verdict(
    failures: int, attempts: int, n_devices: int, max_rate: float = 0.05, min_devices: int = 20
) -> Verdict:
    """Install failure rate of the canary: fail when it is above ``max_rate`` (an absolute limit)."""
    v = Verdict(NOT_ENOUGH, n_canary=n_devices, threshold=max_rate)
    if n_devices < min_devices or attempts <= 0:
        v.detail = f"needs {min_devices} devices with install attempts (have {n_devices})"
        return v
    v.canary = failures / attempts
    v.effect = v.canary
    v.verdict = FAIL if v.canary > max_rate else PASS
    v.detail = f"{failures} of {attempts} installs failed ({v.canary:.3f}); fails above {max_rate}"
    return v


NUMBER_FIELDS = ("canary", "control", "effect", "statistic", "p_value", "observed")
# Gates judged on the canary alone (the control's number is context, not part of the verdict).
ONE_SIDED = frozenset({"install_failure_rate"})


def hide_small(row: Mapping[str, Any], k: int, one_sided: bool = False) -> dict[str, Any]:
    """A verdict (or gate row) as it may be stored and shown: no number when a side has fewer than ``k``.

    A gate compares two groups, so its numbers (rates, quantiles, effect, p-value) are shown only when
    both have at least ``k`` reporting devices; for a ``one_sided`` gate (judged on the canary alone,
    like install failures) the canary's side decides and a small control hides just its own number.
    The verdict and the device counts stay: they are what a person acts on, and a regression on few
    devices must still act.
    """
    out = dict(row)
    n_can, n_con = int(out.get("n_canary") or 0), int(out.get("n_control") or 0)
    hide_all = n_can < k or (n_con < k and not one_sided)
    names = NUMBER_FIELDS if hide_all else (("control",) if n_con < k else ())
    hidden = [name for name in names if out.get(name) is not None]
    for name in hidden:
        out[name] = None
    if hide_all and hidden:
        out["detail"] = (
            f"{out.get('verdict', '')}; numbers hidden: a side has fewer than the minimum of {k} reporting devices "
            f"(canary {n_can}, control {n_con})"
        ).lstrip("; ")
    return out
