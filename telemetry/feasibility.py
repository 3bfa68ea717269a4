"""Whether a privacy setting can meet its target with the fleet it has, and the nearest one that can
(pure: no Django).

An operator's setting is refused, with its reason and a computed alternative, when:

- the group size is outside [``MIN_GROUP``, ``MAX_GROUP``] or larger than the fleet (a round would
  never fill, or would put fewer devices than the cohort floor in a sum);
- δ is not below 1/n for the fleet's n devices (δ ≥ 1/n allows "release one device's data in the
  clear" mechanisms), or so small that the noise truncation's own δ (rounds · 2^−40) uses it up;
- ε is so small that the noise a device must add, at its truncation bound, could make a group sum
  leave the ring's centred range (it would decode wrong): noise that would wrap the ring is refused
  here, *before* any round is scheduled, with the smallest ε whose noise fits;
- ε is not in (0, ``EPSILON_MAX``] (above it the guarantee says nothing a person can use).

The ring check is ``agent.dpnoise.check_ring`` itself, on the same calibration the rounds use
(``telemetry.accounting.calibrate``), for every group size the setting's rounds use.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from agent.dpnoise import DeviceNoise, check_ring
from agent.encoding import Layout, drift_layout, health_layout, sensitivity
from agent.secagg.config import RoundConfig
from agent.secagg.ring import Ring, RingOverflow
from telemetry.accounting import TRUNCATION_DELTA, calibrate
from telemetry.detectability import MAX_GROUP, MIN_GROUP, Setting, _replace

RING_BITS: int = RoundConfig.__dataclass_fields__["ring_bits"].default  # what rounds use unless told
EPSILON_MAX = 100.0
EPSILON_STEP = 0.01  # the nearest ε is rounded up to this


@dataclass(frozen=True)
class Problem:
    field: str
    reason: str


@dataclass(frozen=True)
class Verdict:
    problems: tuple[Problem, ...]
    nearest: Setting | None  # None when nothing an operator sets can fix it (or nothing is wrong)

    @property
    def ok(self) -> bool:
        return not self.problems


def drift_layout_for(s: Setting) -> Layout:
    return drift_layout([(f"f{i}", s.bins) for i in range(s.features)], s.output_bins, s.resolution_bits)


def health_layout_for(s: Setting) -> Layout:
    return health_layout(s.latency_bins, s.resolution_bits)


def _budgets(s: Setting) -> list[tuple[str, float, int, Layout, list[int]]]:
    """(field, ε, rounds per day, layout, group sizes) for each budget's rounds."""
    drift_n = [min(s.group_size, max(s.fleet, 1))]
    health_n = sorted({drift_n[0], min(s.canary_group_size, s.canary)})
    return [
        ("epsilon_drift_day", s.epsilon_drift_day, s.drift_rounds_per_day, drift_layout_for(s), drift_n),
        ("epsilon_health_day", s.epsilon_health_day, s.health_rounds_total, health_layout_for(s), health_n),
    ]


def fits_ring(s: Setting, epsilon: float, rounds: int, layout: Layout, group_sizes: list[int]) -> bool:
    """Whether every group sum, all devices at their largest value and noise bound, fits the ring."""
    ring = Ring(RING_BITS)
    for n in group_sizes:
        cal = calibrate(epsilon, rounds, s.min_survivors(n), sensitivity(layout).l2, layout.length, s.delta)
        try:
            check_ring(ring, layout.max_coordinate, n, DeviceNoise.for_group(cal.sigma2_device, n, layout.length))
        except RingOverflow:
            return False
    return True


def smallest_fitting_epsilon(s: Setting, rounds: int, layout: Layout, group_sizes: list[int]) -> float:
    """The smallest ε (on the ``EPSILON_STEP`` grid) whose noise fits the ring; inf if none does."""
    lo, hi = 0, round(EPSILON_MAX / EPSILON_STEP)  # in steps; fits(hi) is checked first
    if not fits_ring(s, hi * EPSILON_STEP, rounds, layout, group_sizes):
        return math.inf
    while hi - lo > 1:  # invariant: lo does not fit (or is 0), hi fits
        mid = (lo + hi) // 2
        if fits_ring(s, mid * EPSILON_STEP, rounds, layout, group_sizes):
            hi = mid
        else:
            lo = mid
    return round(hi * EPSILON_STEP, 10)


def largest_delta_below(n: int) -> float:
    """The largest power of ten strictly below 1/n."""
    d = 10.0 ** math.floor(math.log10(1 / n))
    return d if d < 1 / n else d / 10


def _structural(s: Setting, explicit_group: bool) -> tuple[list[Problem], dict]:
    probs, fix = [], {}
    if explicit_group:
        if s.group_size < MIN_GROUP:
            probs.append(Problem("group_size", f"a group needs at least {MIN_GROUP} devices (the cohort floor)"))
            fix["group_size"] = MIN_GROUP
        elif s.group_size > MAX_GROUP:
            probs.append(Problem("group_size", f"a group has at most {MAX_GROUP} devices"))
            fix["group_size"] = MAX_GROUP
        if s.group_size > s.fleet:
            probs.append(
                Problem("group_size", f"groups of {s.group_size} need that many devices; the fleet has {s.fleet}")
            )
            if s.fleet >= MIN_GROUP:
                fix["group_size"] = s.fleet
            else:
                fix["group_size"] = 0  # automatic: rounds wait until the fleet reaches the cohort floor
    if s.fleet > 0 and s.delta >= 1 / s.fleet:
        probs.append(Problem("delta", f"δ = {s.delta:g} is not below 1/n = {1 / s.fleet:g} for {s.fleet} devices"))
        fix["delta"] = largest_delta_below(s.fleet)
    rounds = max(s.drift_rounds_per_day, s.health_rounds_total)
    if s.delta <= rounds * TRUNCATION_DELTA:
        probs.append(Problem("delta", f"δ = {s.delta:g} is used up by the noise truncation of {rounds} rounds"))
        fix["delta"] = 1e-10
    for name, eps in (("epsilon_drift_day", s.epsilon_drift_day), ("epsilon_health_day", s.epsilon_health_day)):
        if not (eps > 0 and math.isfinite(eps)):
            probs.append(Problem(name, "ε must be a positive number"))
            fix[name] = 1.0
        elif eps > EPSILON_MAX:
            probs.append(Problem(name, f"ε = {eps:g} above {EPSILON_MAX:g} protects nothing a person can use"))
            fix[name] = EPSILON_MAX
    return probs, fix


def check(s: Setting, explicit_group: bool = False) -> Verdict:
    """Every reason ``s`` cannot be used, and the nearest setting that can (same values wherever possible).

    ``explicit_group``: the operator chose the group size (else it follows the fleet).
    """
    probs, fix = _structural(s, explicit_group)
    near = _replace(s, **fix) if fix else s  # group_size 0 becomes the automatic size
    for name, eps, rounds, layout, groups in _budgets(near):
        if rounds < 1 or fits_ring(near, eps, rounds, layout, groups):
            continue
        least = smallest_fitting_epsilon(near, rounds, layout, groups)
        probs.append(
            Problem(
                name,
                f"at ε = {eps:g} the noise a device must add could make a group sum wrap the "
                f"{RING_BITS}-bit ring; the smallest ε that fits is {least:g}",
            )
        )
        near = _replace(near, **{name: least})
    if not probs:
        return Verdict((), None)
    return Verdict(tuple(probs), near)
