"""Edges of the agent's local fallback guard (agent/guard.py), pure.

A spike must be larger than both the ratio and the margin; a value equal to either limit is no
spike; nothing is judged before ``min_samples`` inferences; the public part of a verdict carries the
rule and its limits, never an observation (docs/mutation.md, docs/privacy.md).
"""

from __future__ import annotations

import pytest

from agent.guard import Guard, GuardPolicy, Stats, Verdict

POLICY = GuardPolicy(min_samples=10, window=20, error_margin=0.1, latency_margin_ms=20.0)


def test_default_policy_is_pinned() -> None:
    """A change here makes every device fall back sooner or later than docs/agent.md says."""
    p = GuardPolicy()
    assert (p.min_samples, p.window, p.error_ratio, p.error_margin) == (50, 500, 3.0, 0.05)
    assert (p.max_error_rate, p.latency_ratio, p.latency_margin_ms) == (0.5, 3.0, 20.0)


def test_stats_keep_the_last_window_and_latency_of_successes_only() -> None:
    s = Stats(4)
    assert (len(s), s.error_rate(), s.p90()) == (0, 0.0, None)
    for ok, ms in [(True, 1.0), (False, 99.0), (True, 3.0), (True, 5.0), (False, 7.0)]:
        s.add(ok, ms)
    assert len(s) == 4 and list(s.ok) == [False, True, True, False]
    assert s.error_rate() == 0.5
    assert list(s.latency) == [1.0, 3.0, 5.0]
    assert s.p90() == pytest.approx(4.6)  # numpy's linear interpolation over [1, 3, 5]
    assert type(s.p90()) is float


def feed(g: Guard, n: int, errors: int = 0, ms: float = 10.0) -> Verdict:
    v = Verdict(False)
    for i in range(n):  # the failures come last
        v = g.observe(i < n - errors, ms)
    return v


def baseline_guard(errors: int = 0, ms: float = 10.0, n: int = 10) -> Guard:
    g = Guard(POLICY)
    feed(g, n, errors, ms)
    g.switched()
    return g


def test_nothing_is_judged_before_min_samples() -> None:
    g = Guard(POLICY)
    assert feed(g, 9, errors=9) == Verdict(False)
    v = g.observe(False, 1.0)
    assert v.fall_back and v.rule == "error_rate"


def test_without_a_baseline_an_error_rate_equal_to_the_maximum_is_no_failure() -> None:
    g = Guard(POLICY)
    v = feed(g, 10, errors=5)  # 0.5 = max_error_rate
    assert not v.fall_back
    assert v.numbers == {
        "samples": 10,
        "error_rate": 0.5,
        "baseline_error_rate": None,
        "p90_ms": 10.0,
        "baseline_p90_ms": None,
    }
    g = Guard(POLICY)
    v = feed(g, 10, errors=6)
    assert (v.fall_back, v.rule, v.limits) == (True, "error_rate", {"threshold": 0.5})
    assert v.reason == "error rate 60% with no baseline"
    assert v.numbers == {"samples": 10, "error_rate": 0.6, "baseline_error_rate": None}
    assert v.public() == {"rule": "error_rate", "threshold": 0.5}


def test_a_guard_without_enough_baseline_samples_keeps_no_baseline() -> None:
    g = baseline_guard(n=9)
    assert g.baseline is None
    g = baseline_guard(n=10)
    assert g.baseline is not None and len(g.baseline) == 10 and len(g.current) == 0


def test_an_error_rate_at_the_margin_over_a_zero_baseline_is_no_spike() -> None:
    g = baseline_guard(errors=0)
    assert not feed(g, 10, errors=1).fall_back  # 0.1 = 0 + margin
    g = baseline_guard(errors=0)
    v = feed(g, 10, errors=2)
    assert (v.fall_back, v.rule) == (True, "error_rate_vs_previous")
    assert v.limits == {"ratio": 3.0, "margin": 0.1}
    assert v.reason == "error rate 20.0% vs baseline 0.0%"
    assert v.numbers == {"samples": 10, "error_rate": 0.2, "baseline_error_rate": 0.0}


def test_an_error_rate_at_the_ratio_over_a_high_baseline_is_no_spike() -> None:
    g = baseline_guard(errors=5, n=20)  # 0.25; limit max(0.75, 0.35) = 0.75 (exact in binary)
    assert not feed(g, 20, errors=15).fall_back
    g = baseline_guard(errors=5, n=20)
    assert feed(g, 20, errors=16).rule == "error_rate_vs_previous"


def test_with_a_baseline_the_absolute_maximum_does_not_apply() -> None:
    g = baseline_guard(errors=5)  # baseline 0.5: 0.6 is the margin, not a spike though above 0.5
    assert not feed(g, 10, errors=6).fall_back


def test_latency_at_the_ratio_or_the_margin_is_no_spike() -> None:
    g = baseline_guard(ms=10.0)  # limit max(30, 30) = 30 ms
    v = feed(g, 10, ms=30.0)
    assert not v.fall_back and v.numbers["p90_ms"] == 30.0 and v.numbers["baseline_p90_ms"] == 10.0
    g = baseline_guard(ms=10.0)
    v = feed(g, 10, ms=30.5)
    assert (v.fall_back, v.rule) == (True, "latency_p90_vs_previous")
    assert v.limits == {"ratio": 3.0, "margin_ms": 20.0}
    assert v.reason == "p90 latency 30.5 ms vs baseline 10.0 ms"
    assert v.public() == {"rule": "latency_p90_vs_previous", "ratio": 3.0, "margin_ms": 20.0}


def test_latency_on_a_fast_baseline_needs_the_margin_too() -> None:
    g = baseline_guard(ms=1.0)  # limit max(3, 21) = 21 ms
    assert not feed(g, 10, ms=21.0).fall_back
    g = baseline_guard(ms=1.0)
    assert feed(g, 10, ms=21.5).fall_back


def test_latency_is_judged_only_on_min_samples_successes() -> None:
    g = baseline_guard(ms=10.0)
    feed(g, 1, errors=1)  # one failure: its latency is not counted
    v = feed(g, 9, ms=100.0)
    assert len(g.current) == 10 and len(g.current.latency) == 9
    assert not v.fall_back
    assert g.observe(True, 100.0).rule == "latency_p90_vs_previous"


def test_latency_without_a_baseline_is_not_judged() -> None:
    g = Guard(POLICY)
    v = feed(g, 10, ms=10_000.0)
    assert not v.fall_back and v.numbers["baseline_p90_ms"] is None


def test_reset_drops_the_baseline_and_what_was_seen() -> None:
    g = baseline_guard()
    feed(g, 3)
    g.reset()
    assert g.baseline is None and len(g.current) == 0 and g.current.ok.maxlen == POLICY.window


def test_a_verdict_public_part_is_the_rule_and_limits_only() -> None:
    v = Verdict(True, "error rate 90%", {"error_rate": 0.9}, "error_rate", {"threshold": 0.5})
    assert v.public() == {"rule": "error_rate", "threshold": 0.5}
    assert Verdict(False).public() == {"rule": ""}
    assert Verdict(False).limits == {} and Verdict(False).numbers is None


def test_every_version_is_judged_on_its_last_window_only() -> None:
    """Old errors age out: a fresh guard, and the version after a switch, keep ``window`` inferences."""
    policy = GuardPolicy(min_samples=2, window=4, max_error_rate=1.0)
    g = Guard(policy)
    for ok in (False, False, False, False, True, True, True, True):
        v = g.observe(ok, 5.0)
    assert v.numbers is not None and v.numbers["samples"] == 4 and v.numbers["error_rate"] == 0.0
    g.switched()
    assert g.current.ok.maxlen == 4 and g.baseline is not None
    for ok in (False, False, True, True, True, True):
        v = g.observe(ok, 5.0)
    assert not v.fall_back and v.numbers is not None and v.numbers["samples"] == 4


def test_the_local_error_rate_is_rounded_to_four_places() -> None:
    g = Guard(GuardPolicy(min_samples=3, window=3, max_error_rate=1.0))
    for ok in (False, True, True):
        v = g.observe(ok, 5.0)
    assert v.numbers is not None and v.numbers["error_rate"] == 0.3333


def test_latency_keeps_the_last_window_of_successes() -> None:
    s = Stats(2)
    for ms in (1.0, 100.0, 100.0):
        s.add(True, ms)
    assert list(s.latency) == [100.0, 100.0] and s.p90() == 100.0


def test_latency_under_the_ratio_but_over_the_margin_is_no_spike() -> None:
    """On a slow baseline the ratio decides: 100 ms -> 200 ms is twice, under 3x, though +100 ms."""
    g = baseline_guard(ms=100.0)
    v = feed(g, 10, ms=200.0)
    assert v.fall_back is False and v.reason == "" and v.rule == ""
    assert v.numbers == {
        "samples": 10,
        "error_rate": 0.0,
        "baseline_error_rate": 0.0,
        "p90_ms": 200.0,
        "baseline_p90_ms": 100.0,
    }
    g = baseline_guard(ms=100.0)
    v = feed(g, 10, ms=300.5)
    assert v.fall_back and v.numbers is not None and v.numbers["p90_ms"] == 300.5
