"""Which rounds a model version runs in a window, and what each is calibrated for (pure, no Django).

The model's privacy policy (``telemetry.policy.policy_for``: a ``detectability.Setting``) says how
many drift and health rounds a device takes part in per day and how a canary is grouped; the
privacy page's figures are computed for exactly that schedule. This turns it into the scheduler's
answer for one window, so the rounds formed are the rounds the page promised:

- drift rounds on ``drift_rounds_per_day`` windows a day, spread evenly over the day's windows;
- health rounds on ``health_rounds_per_day`` windows a day, and in *every* window while the version
  takes part in a running campaign (the canary's version and its control: the gate compares their
  sums window by window). A device's day then holds up to ``health_rounds_total`` health rounds,
  which is what the noise is calibrated for; the per-device ledger (``rounds.within_budget``) stops
  a device that reaches its day's ε however long the campaign soaks;
- the group size: the policy's (0 follows the fleet), and for a version in a campaign the canary's
  ``canary_groups`` groups (one group of n has 1/n² of the noise of a mean: the page's canary
  figures assume it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from telemetry.detectability import MIN_GROUP, Setting

DRIFT, HEALTH = "drift", "health"
SECONDS_PER_DAY = 86_400


@dataclass(frozen=True)
class Plan:
    budget: str
    epsilon_day: float
    rounds_per_day: int  # the day's rounds of this budget a device can be in: what the noise is calibrated for
    group_size: int
    delta: float


def of_budget(s: Setting, budget: str, windows: int, group_size: int) -> Plan:
    """The calibration target of ``budget``'s rounds under ``s`` (whatever window they run in)."""
    if budget == DRIFT:
        return Plan(DRIFT, s.epsilon_drift_day, min(s.drift_rounds_per_day, windows), group_size, s.delta)
    if budget == HEALTH:
        return Plan(HEALTH, s.epsilon_health_day, min(s.health_rounds_total, windows), group_size, s.delta)
    raise ValueError(f"unknown budget {budget!r}")


def windows_per_day(window_s: int) -> int:
    if window_s < 1:
        raise ValueError("the window must be at least one second")
    return max(SECONDS_PER_DAY // window_s, 1)


def runs_in(index: int, per_day: int, windows: int) -> bool:
    """Whether window ``index`` (0-based within the day) is one of ``per_day`` evenly spread windows:
    exactly ``min(per_day, windows)`` of the day's ``windows`` answer yes, the first one included."""
    if per_day <= 0 or not 0 <= index < windows:
        return False
    # window i runs when ⌊i·p/W⌋ steps up (floor division of −p puts the first window in; p ≥ W steps every time)
    return (index * per_day) // windows != ((index - 1) * per_day) // windows


def canary_group_size(devices: int, canary_groups: int, floor: int = MIN_GROUP) -> int:
    """Groups for a version in a campaign: its devices in ``canary_groups`` groups, none below ``floor``."""
    return max(math.ceil(devices / max(canary_groups, 1)), floor)


def plan(
    s: Setting,
    seconds_into_day: int,
    window_s: int,
    devices: int,
    in_campaign: bool,
    canary_groups: int = 1,
    floor: int = MIN_GROUP,
) -> list[Plan]:
    """The rounds a version with ``devices`` devices runs in the window starting ``seconds_into_day``
    after midnight UTC (an empty list: none this window)."""
    windows = windows_per_day(window_s)
    index = (seconds_into_day % SECONDS_PER_DAY) // window_s
    group = max(min(s.group_size, max(devices, 1)), floor)
    out = []
    if runs_in(index, s.drift_rounds_per_day, windows):
        out.append(of_budget(s, DRIFT, windows, group))
    if in_campaign and s.health_rounds_total > 0:
        out.append(of_budget(s, HEALTH, windows, canary_group_size(devices, canary_groups, floor)))
    elif runs_in(index, s.health_rounds_per_day, windows):
        out.append(of_budget(s, HEALTH, windows, group))
    return out
