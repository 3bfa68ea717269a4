"""Device-level privacy accounting per device and day (pure: no Django; Google's ``dp-accounting``).

The protected unit is one device's whole contribution to a round (``agent.encoding``, replace-one).
A round with distributed discrete Gaussian noise of total variance σ²_total on the sum of the
t_min devices that must survive is, by Kairouz–Liu–Steinke 2021 (Thm. on sums of discrete
Gaussians), (ξ, ρ)-zCDP with ρ = Δ2²/(2σ²_total) and ξ = τ·d (``ddg_tau``; below 1e-16 per
coordinate for σ_dev ≥ 2, and charged whatever its size);
truncating each device's noise at ``agent.dpnoise.truncation_bound`` adds at most 2^−40 to δ.
Rounds compose by adding their Rényi curves: ``dp-accounting``'s RdpAccountant on ZCDpEvents gives
(ε, δ) for the day at δ (default 1e-6), with its tight RDP → (ε, δ) conversion. Not a sum of
epsilons.

Two budgets, two ledgers: ``drift`` (input and output distributions) and ``health`` (latency,
error fraction). Each ledger bounds what its own releases say about a device; what the device's
whole day reveals is both composed (``combined_epsilon``), shown beside them.

Every figure comes from what the server assigned (sensitivity of the layout, σ²_dev, t_min,
vector length) — never from anything a device declares.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction

import dp_accounting
from dp_accounting.rdp import RdpAccountant

from agent.dpnoise import TRUNCATION_LOG2

DEFAULT_DELTA = 1e-6
DEFAULT_EPSILON_DAY = 4.0
DRIFT, HEALTH = "drift", "health"
BUDGETS = (DRIFT, HEALTH)
TRUNCATION_DELTA = 2.0**-TRUNCATION_LOG2
# σ²_dev is rounded *up* to this grid so the device gets an exact rational and never less noise.
SIGMA2_GRID = 1000


def ddg_tau(n: int, sigma2_device: float) -> float:
    """τ = 10·Σ_{k=1}^{n−1} exp(−2π²σ²·k/(k+1)) of the distributed discrete Gaussian theorem."""
    return 10.0 * sum(math.exp(-2 * math.pi**2 * sigma2_device * k / (k + 1)) for k in range(1, max(n, 1)))


@dataclass(frozen=True)
class RoundCharge:
    """One round's privacy cost for each device in it, from the round's assigned parameters."""

    rho: float
    xi: float = 0.0
    delta: float = 0.0

    @classmethod
    def for_round(
        cls, sensitivity_l2: float, sigma2_device: Fraction | float, min_survivors: int, length: int
    ) -> RoundCharge:
        s2 = float(sigma2_device)
        if s2 <= 0 or min_survivors < 1:
            raise ValueError("a round needs positive noise and at least one survivor")
        total = min_survivors * s2
        return cls(sensitivity_l2**2 / (2 * total), ddg_tau(min_survivors, s2) * length, TRUNCATION_DELTA)

    def event(self) -> dp_accounting.DpEvent:
        return dp_accounting.ZCDpEvent(rho=self.rho, xi=self.xi)


def _fresh() -> RdpAccountant:
    """An RDP accountant. ρ is already computed from the replace-one sensitivity, so the events are
    stated as they are (the library's REPLACE_ONE would double a Gaussian's sensitivity in PLD)."""
    return RdpAccountant()


def _accountant(charges: Iterable[RoundCharge]) -> RdpAccountant:
    acc = _fresh()
    events = [c.event() for c in charges]
    if events:
        acc.compose(dp_accounting.ComposedDpEvent(events))
    return acc


def epsilon(charges: Sequence[RoundCharge], delta: float = DEFAULT_DELTA) -> float:
    """ε at ``delta`` for these rounds composed; truncation's δ is taken out of ``delta`` first."""
    if not charges:
        return 0.0
    remaining = delta - sum(c.delta for c in charges)
    if remaining <= 0:
        return math.inf
    return float(_accountant(charges).get_epsilon(remaining))


def may_join(
    scheduled: Sequence[RoundCharge], next_round: RoundCharge, epsilon_day: float, delta: float = DEFAULT_DELTA
) -> bool:
    """Whether one more round keeps the device's day within ``epsilon_day`` in this budget."""
    return epsilon([*scheduled, next_round], delta) <= epsilon_day * (1 + 1e-9)


def combined_epsilon(
    drift: Sequence[RoundCharge], health: Sequence[RoundCharge], delta: float = DEFAULT_DELTA
) -> float:
    """What both budgets' releases reveal about a device's day together."""
    return epsilon([*drift, *health], delta)


@dataclass(frozen=True)
class Calibration:
    epsilon_day: float
    delta: float
    rounds_per_day: int
    min_survivors: int
    sensitivity_l2: float
    length: int
    sigma2_device: Fraction  # what each device is told
    sigma2_total: float  # what the sum of min_survivors devices carries
    charge: RoundCharge

    @property
    def noise_multiplier(self) -> float:
        """σ_total / Δ2: the sum's noise in units of one device's largest possible influence."""
        return math.sqrt(self.sigma2_total) / self.sensitivity_l2

    @property
    def epsilon_reached(self) -> float:
        return epsilon([self.charge] * self.rounds_per_day, self.delta)


def calibrate(
    epsilon_day: float,
    rounds_per_day: int,
    min_survivors: int,
    sensitivity_l2: float,
    length: int,
    delta: float = DEFAULT_DELTA,
) -> Calibration:
    """The smallest per-device noise (on the 1/1000 grid) whose day of rounds stays within ε_day."""
    if not (epsilon_day > 0 and math.isfinite(epsilon_day)):
        raise ValueError("epsilon_day must be positive and finite")
    if not 0 < delta < 1 or rounds_per_day < 1 or min_survivors < 1 or sensitivity_l2 <= 0:
        raise ValueError("need 0 < delta < 1, rounds_per_day ≥ 1, min_survivors ≥ 1, sensitivity > 0")
    if rounds_per_day * TRUNCATION_DELTA >= delta:
        raise ValueError("delta is too small for this many rounds' truncation")

    def event(multiplier: float) -> dp_accounting.DpEvent:
        s2_dev = (multiplier * sensitivity_l2) ** 2 / min_survivors
        return dp_accounting.SelfComposedDpEvent(
            RoundCharge.for_round(sensitivity_l2, s2_dev, min_survivors, length).event(), rounds_per_day
        )

    mult = dp_accounting.calibrate_dp_mechanism(
        _fresh,
        event,
        epsilon_day,
        delta - rounds_per_day * TRUNCATION_DELTA,
        dp_accounting.LowerEndpointAndGuess(1e-3, 1.0),
        tol=1e-9,
    )
    s2 = Fraction(math.ceil((mult * sensitivity_l2) ** 2 / min_survivors * SIGMA2_GRID), SIGMA2_GRID)
    while True:  # the search's tolerance may land on the wrong side: step up until it holds
        cal = _calibration(epsilon_day, delta, rounds_per_day, min_survivors, sensitivity_l2, length, s2)
        if cal.epsilon_reached <= epsilon_day:
            return cal
        s2 = s2 * Fraction(1001, 1000) + Fraction(1, SIGMA2_GRID)


def _calibration(eps: float, delta: float, rounds: int, t: int, sens: float, length: int, s2: Fraction) -> Calibration:
    charge = RoundCharge.for_round(sens, s2, t, length)
    return Calibration(eps, delta, rounds, t, sens, length, s2, t * float(s2), charge)


def epsilon_day_for(
    sigma2_device: Fraction | float,
    rounds_per_day: int,
    min_survivors: int,
    sensitivity_l2: float,
    length: int,
    delta: float = DEFAULT_DELTA,
) -> float:
    """The inverse of ``calibrate``: a day's ε for a given per-device noise."""
    charge = RoundCharge.for_round(sensitivity_l2, sigma2_device, min_survivors, length)
    return epsilon([charge] * rounds_per_day, delta)


@dataclass(frozen=True)
class DaySpend:
    budget: str
    rounds: int
    rho: float
    epsilon: float
    epsilon_day: float

    @property
    def remaining(self) -> float:
        return max(self.epsilon_day - self.epsilon, 0.0)


def day_spend(
    budget: str, charges: Sequence[RoundCharge], epsilon_day: float, delta: float = DEFAULT_DELTA
) -> DaySpend:
    """A device's ledger line for one budget and day (what the ledger page shows)."""
    if budget not in BUDGETS:
        raise ValueError(f"unknown budget {budget!r}")
    return DaySpend(budget, len(charges), sum(c.rho for c in charges), epsilon(charges, delta), epsilon_day)
