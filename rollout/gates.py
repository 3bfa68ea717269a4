"""Gate logic between waves (pure, no Django): gate config + canary-vs-control numbers -> a decision.

The statistics live in telemetry (``telemetry.services.canary_vs_control``); this module only
decides what the numbers mean for a campaign, so it can be tested with synthetic comparisons and
so the decision and the numbers behind it are recorded side by side.

A wave is judged in two steps:

1. ``readiness``: has the wave soaked long enough and do enough canary devices report? If not, the
   campaign holds: judging on too little data either lets a regression through or cries wolf.
2. ``evaluate``: each configured gate yields pass / fail / not_enough_data. Any fail fails the wave,
   else any not_enough_data holds it, else it passes. ``action`` turns that into what the job does.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

PASS, FAIL, NOT_ENOUGH = "pass", "fail", "not_enough_data"

# name -> (what the observed value is, default threshold). A gate fails when its observed value is
# above the threshold. These words are the gate's one meaning: the campaign form, the gate table and
# docs/rollout.md say it the same way (tests/test_campaign_story.py holds them together).
GATES: dict[str, tuple[str, float]] = {
    "install_failure_rate": ("share of canary devices whose latest install failed", 0.05),
    "error_rate": ("canary error rate minus control error rate (0.02 = 2 points)", 0.02),
    "latency_p50": ("canary median latency divided by the control's (1.25 = 25% slower), when also 5 ms slower", 1.25),
    "latency_p95": ("canary p95 latency divided by the control's (1.25 = 25% slower), when also 5 ms slower", 1.25),
    "drift": ("canary drift minus control drift (highest PSI of a feature or the output against the reference)", 0.25),
}
DEFAULT_GATES: dict[str, float] = {name: default for name, (_, default) in GATES.items()}

# Gates whose observed value is the canary's own level rather than its difference from control.
# Drift is not one: input drift reaches canary and control alike, so the gate judges (and the table
# shows) the drift the canary sees beyond the control's.
LEVEL_GATES = {"install_failure_rate"}


def meaning(name: str) -> str:
    """What a gate's observed value is, for the form, the gate table and the timeline."""
    return GATES.get(name, (name, 0.0))[0]


def validate_gates(gates: Mapping[str, Any]) -> list[str]:
    """Problems with a gate config, for a person (unknown gate, threshold not a non-negative number)."""
    errors: list[str] = []
    if not isinstance(gates, Mapping):
        return ["Gates must be a mapping of gate name to threshold."]
    for name, threshold in gates.items():
        if name not in GATES:
            errors.append(f"Unknown gate {name!r}; known gates: {', '.join(GATES)}.")
            continue
        try:
            value = float(threshold)
        except (TypeError, ValueError):
            errors.append(f"Gate {name}: the threshold must be a number.")
            continue
        if not math.isfinite(value) or value < 0:
            errors.append(f"Gate {name}: the threshold must be a non-negative number.")
    return errors


@dataclass
class GateRow:
    """One line of the gate table: what was required, what was seen, on how much data, and verdict."""

    name: str
    threshold: float
    observed: float | None
    verdict: str
    canary: float | None = None
    control: float | None = None
    n_canary: int | None = None
    n_control: int | None = None
    p_value: float | None = None
    detail: str = ""
    # judged on secure-aggregation round sums: groups per window on each side ("N devices in G groups")
    groups_canary: int | None = None
    groups_control: int | None = None


@dataclass
class Outcome:
    verdict: str
    rows: list[GateRow] = field(default_factory=list)

    @property
    def failed(self) -> list[str]:
        return [r.name for r in self.rows if r.verdict == FAIL]

    @property
    def waiting(self) -> list[str]:
        return [r.name for r in self.rows if r.verdict == NOT_ENOUGH]

    def as_numbers(self) -> dict[str, Any]:
        """JSON-ready form stored with the campaign decision."""
        return {"verdict": self.verdict, "gates": [asdict(r) for r in self.rows]}


def public_rows(rows: Any, k: int) -> list[dict[str, Any]]:
    """Gate rows as they may be stored and shown: numbers from fewer than ``k`` devices on a side hidden.

    Telemetry already hides them (``telemetry.regression.hide_small``); this also covers comparisons
    from elsewhere and reports stored before numbers were hidden.
    """
    from telemetry.regression import ONE_SIDED, hide_small

    if not isinstance(rows, list):
        return []
    return [
        _observed_as_judged(hide_small(r, k, one_sided=r.get("name") in ONE_SIDED))
        for r in rows
        if isinstance(r, Mapping)
    ]


def _observed_as_judged(row: dict[str, Any]) -> dict[str, Any]:
    """A drift row's observed value as its verdict judged it: canary minus control.

    Rows stored before drift's observed value became the difference carry the canary's level
    (``Observed 0.4618 > Threshold 0.25`` beside a "pass"); they read the way they were judged.
    """
    if row.get("name") == "drift":
        canary, control = _num(row.get("canary")), _num(row.get("control"))
        if canary is not None:
            row["observed"] = canary - (control or 0.0)
    return row


def _num(value: object) -> float | None:
    try:
        f = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _row(name: str, threshold: float, result: Mapping[str, Any] | None) -> GateRow:
    if not result:
        return GateRow(name, threshold, None, NOT_ENOUGH, detail="no comparison for this gate")
    canary, control, effect = _num(result.get("canary")), _num(result.get("control")), _num(result.get("effect"))
    observed = (canary if canary is not None else effect) if name in LEVEL_GATES else effect
    if observed is None and name not in LEVEL_GATES and canary is not None and control is not None:
        observed = canary - control
    elif observed is None and name == "drift" and canary is not None:
        observed = canary  # no control drift counts as none (telemetry's effect: canary - (control or 0))
    verdict = result.get("verdict")
    if verdict not in (PASS, FAIL, NOT_ENOUGH):
        # No usable verdict from telemetry: judge the observed value against our own threshold.
        verdict = NOT_ENOUGH if observed is None else (FAIL if observed > threshold else PASS)
    n_canary, n_control = result.get("n_canary"), result.get("n_control")
    return GateRow(
        name=name,
        threshold=threshold,
        observed=observed,
        verdict=verdict,
        canary=canary,
        control=control,
        n_canary=int(n_canary) if _num(n_canary) is not None else None,
        n_control=int(n_control) if _num(n_control) is not None else None,
        p_value=_num(result.get("p_value")),
        detail=str(result.get("detail") or ""),
        groups_canary=_count(result.get("groups_canary")),
        groups_control=_count(result.get("groups_control")),
    )


def _count(value: object) -> int | None:
    f = _num(value)
    return int(f) if f is not None else None


def evaluate(gates: Mapping[str, Any], comparison: Mapping[str, Mapping[str, Any]]) -> Outcome:
    """Apply the campaign's gates to a canary-vs-control comparison.

    Only configured gates count. Telemetry's verdict wins when it gave one (it was asked with our
    thresholds and knows its statistics); without one, the observed value is compared here.
    """
    rows = [_row(name, float(threshold), comparison.get(name)) for name, threshold in gates.items()]
    if any(r.verdict == FAIL for r in rows):
        verdict = FAIL
    elif any(r.verdict == NOT_ENOUGH for r in rows):
        verdict = NOT_ENOUGH
    else:
        verdict = PASS
    return Outcome(verdict, rows)


# Devices per side a comparison needs before it may say "fail". A wave's min_devices is how many must
# report before it may *pass*; a regression seen on fewer devices (the tests fold the DP noise into
# their standard errors) must still stop the campaign rather than hold it forever.
FAIL_FLOOR_DEVICES = 5


def statistical_floor(wave_min_devices: int) -> int:
    """The ``min_devices`` handed to the canary/control comparison for a wave."""
    wave_min = int(wave_min_devices or 0)
    return max(1, min(wave_min, FAIL_FLOOR_DEVICES)) if wave_min > 0 else FAIL_FLOOR_DEVICES


def readiness(elapsed_seconds: float, min_soak_minutes: float, reporting_devices: int, min_devices: int) -> str | None:
    """Why the current wave cannot be judged yet, or None when it can."""
    need = float(min_soak_minutes or 0) * 60
    if elapsed_seconds < need:
        return f"soaking: {elapsed_seconds / 60:.1f} of {need / 60:g} minutes"
    if reporting_devices < int(min_devices or 0):
        return f"waiting for devices: {reporting_devices} of {int(min_devices)} canary devices report"
    return None


def action(verdict: str, on_failure: str, is_last_wave: bool) -> str:
    """What the job does with a verdict: advance, complete, hold, pause or rollback."""
    if verdict == FAIL:
        return "rollback" if on_failure == "rollback" else "pause"
    if verdict == NOT_ENOUGH:
        return "hold"
    return "complete" if is_last_wave else "advance"
