"""``bench/rollback_time.py --mode rounds-sim``: time to roll back when the gates read round sums,
on a simulated clock (no server: the protocol's timing, the real encoding, noise and gate statistic).

What is simulated, in simulated seconds:

- N devices, each polling every P seconds at its own phase; a campaign starts at a random moment of
  a window; wave 1 (10 %) activates v2 at its first poll after the start (T0 = first activation);
  v2 fails 30 % of its calls and runs 80 ms slower from the first call (the live bench's scenario).
- Rounds as ``telemetry.rounds.form_rounds`` makes them: every ``beat`` seconds, for each version
  with at least k devices running it and no rounds yet for the current window, groups of
  ``group_size_for(n)`` over the devices running it then. A round closes a phase when every member
  has answered, and each member answers at its next poll: advertise, share, then masked at its first
  poll after the window ended, then unmask (no dropouts). So a window's sum is out about two poll
  intervals after the window closes.
- Each member's contribution is its window on that version (inferences at ``rate`` per second from
  the moment it ran the version), encoded by ``agent.encoding`` with its own exact discrete Gaussian
  noise at the σ² the chosen calibration gives; the group sum is the plain sum (the SecAgg+ sum
  equals it exactly: tests/test_canary_sums.py, tests/test_group_sums.py).
- The gate job every G seconds judges the windows finished on both sides with
  ``telemetry.canary_sums`` (what ``telemetry.canary_rounds`` hands it); on a failing gate the
  campaign rolls back and each v2 device is back on v1 at its next poll.

Calibrations: ``policy`` — the privacy page's default (ε_health = 4.9 a day over the soak's three
health rounds, ``EDGEFLEET_PRIVACY_*``); ``rounds`` — what ``telemetry.rounds.noise_for`` uses today
(ε = 4 a day spread over every window of the day), with which sums cannot resolve the canary goal and
the job judges on reports instead.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from agent import dpnoise
from agent.encoding import encode, health_layout, sensitivity
from telemetry import canary_sums, regression
from telemetry.accounting import calibrate
from telemetry.binning import LATENCY_EDGES_MS
from telemetry.detectability import group_size_for
from telemetry.group_sums import GroupSum

K = 20
LAYOUT = health_layout(len(LATENCY_EDGES_MS) - 1)
BASE_LAT = np.array([0, 5, 30, 40, 15, 6, 3, 1, 0, 0, 0, 0], float)  # mostly 2–20 ms
SLOW_LAT = np.array([0, 0, 0, 0, 0, 0, 5, 30, 40, 21, 3, 1], float)  # +80 ms: mostly 50–500 ms
BASE_ERR, BAD_ERR = 0.01, 0.30


@dataclass
class Round:
    version: str
    window: int
    members: np.ndarray  # device indices
    formed: float
    done: float = math.inf
    total: np.ndarray | None = None
    sigma2: float = 0.0


class Sim:
    def __init__(self, n: int, poll: float, gate: float, window: float, beat: float, rate: float,
                 calibration: str, rng: np.random.Generator, canary_groups: int = 0) -> None:  # fmt: skip
        self.n, self.P, self.G, self.W, self.beat, self.rate = n, poll, gate, window, beat, rate
        self.canary_groups = canary_groups  # 0: as form_rounds groups them (group_size_for)
        self.calibration, self.rng = calibration, rng
        self.phase = rng.uniform(0, poll, n)
        self.sigma2_cache: dict[int, Fraction] = {}

    def next_poll(self, d: np.ndarray | int, after: float) -> np.ndarray:
        """Each device's first poll strictly after ``after``."""
        ph = self.phase[d]
        k = np.floor((after - ph) / self.P) + 1
        return ph + np.maximum(k, 0) * self.P

    def sigma2(self, n: int) -> Fraction:
        if n not in self.sigma2_cache:
            survivors = min(n, max(2, math.ceil(0.7 * n)))
            if self.calibration == "policy":
                eps, rounds = 4.9, 3
            else:
                eps, rounds = 4.0, max(1, int(86400 // self.W))
            cal = calibrate(eps, rounds, survivors, sensitivity(LAYOUT).l2, LAYOUT.length)
            self.sigma2_cache[n] = cal.sigma2_device
        return self.sigma2_cache[n]

    def run(self) -> dict[str, float | str]:
        n, W, P = self.n, self.W, self.P
        start = W * 10 + self.rng.uniform(0, W)  # the campaign starts at a random moment of a window
        canary = np.arange(n // 10)
        on_v2_at = np.full(n, math.inf)
        on_v2_at[canary] = self.next_poll(canary, start)  # activation: first poll after the start
        t0 = float(on_v2_at[canary].min())
        beat0, gate0 = self.rng.uniform(0, self.beat), self.rng.uniform(0, self.G)
        rounds: list[Round] = []
        formed: set[tuple[str, int]] = set()
        decision, why = math.inf, "no decision"
        beat_t = beat0 + math.ceil((math.floor(start / W) * W - beat0) / self.beat) * self.beat
        t_gate = gate0 + math.ceil((start - gate0) / self.G) * self.G
        horizon = start + 6 * W + 10 * P
        while t_gate < horizon:
            while beat_t <= t_gate:  # the beat forms rounds for the current window
                self._form(beat_t, on_v2_at, rounds, formed)
                beat_t += self.beat
            for r in rounds:  # a round's timing is fixed once formed: members answer at their polls
                if r.total is None:
                    self._finish(r, on_v2_at)
            verdict = self._gate(t_gate, rounds, start)
            if verdict is not None:
                decision, why = t_gate, verdict
                break
            t_gate += self.G
        if decision == math.inf or why == "unresolved":
            return {"t0": t0, "decision": math.nan, "t95": math.nan, "why": why}
        back = self.next_poll(canary, decision)
        t95 = float(np.sort(back)[math.ceil(0.95 * canary.size) - 1])
        return {"t0": t0, "decision": decision, "t95": t95, "why": why}

    def _form(self, tick: float, on_v2_at: np.ndarray, rounds: list[Round], formed: set) -> None:
        w = int(tick // self.W)
        v2 = np.flatnonzero(on_v2_at <= tick)
        v1 = np.setdiff1d(np.arange(self.n), v2)
        for version, devices in (("v1", v1), ("v2", v2)):
            if devices.size < K or (version, w) in formed:
                continue
            formed.add((version, w))
            devices = self.rng.permutation(devices)
            size = max(group_size_for(devices.size), K)
            count = devices.size // size
            if version == "v2" and self.canary_groups:
                count = max(1, min(self.canary_groups, devices.size // K))
            for g in range(count):
                rounds.append(Round(version, w, devices[g::count], tick))

    def _finish(self, r: Round, on_v2_at) -> None:
        m = r.members
        adv = self.next_poll(m, r.formed).max()
        share = self.next_poll(m, adv).max()
        masked = self.next_poll(m, max(share, (r.window + 1) * self.W)).max()
        r.done = float(self.next_poll(m, masked).max())
        sigma2 = self.sigma2(m.size)
        noise = dpnoise.DeviceNoise.for_group(sigma2, m.size, LAYOUT.length)
        w0, w1 = r.window * self.W, (r.window + 1) * self.W
        total = np.zeros(LAYOUT.length, np.int64)
        for d in m:
            switch = on_v2_at[d]
            lo, hi = (max(w0, switch), w1) if r.version == "v2" else (w0, min(w1, switch))
            rows = int(self.rng.poisson(self.rate * max(hi - lo, 0.0)))
            bad = r.version == "v2"
            errors = int(self.rng.binomial(rows, BAD_ERR if bad else BASE_ERR)) if rows else 0
            lat = self.rng.multinomial(rows, (SLOW_LAT if bad else BASE_LAT) / (SLOW_LAT if bad else BASE_LAT).sum())
            x = encode(LAYOUT, rows > 0, {"latency": lat}, {"error_fraction": (errors, rows)})
            total += x + dpnoise.sample_noise(LAYOUT.length, noise)
        r.total, r.sigma2 = total, float(sigma2)

    def _gate(self, now: float, rounds: list[Round], since: float) -> str | None:
        """The gate job at ``now``: windows ending after ``since`` finished on both sides."""
        by: dict[tuple[str, int], list[Round]] = {}
        for r in rounds:
            if (r.window + 1) * self.W > since:
                by.setdefault((r.version, r.window), []).append(r)
        windows = sorted({w for v, w in by if v == "v2"} & {w for v, w in by if v == "v1"})
        done = [w for w in windows if all(r.done <= now for r in by[("v2", w)] + by[("v1", w)])]
        if not done:
            return None

        def sums(v: str) -> list[list[GroupSum]]:
            return [[GroupSum(LAYOUT, r.total, r.members.size, r.sigma2) for r in by[(v, w)]] for w in done]

        can, con = canary_sums.side(sums("v2")), canary_sums.side(sums("v1"))
        verdicts = {
            "error_rate": canary_sums.error_verdict(can, con, 0.02, K),
            "latency_p95": canary_sums.latency_verdict(LATENCY_EDGES_MS, can, con, 0.95, 1.25, K, 5.0),
        }
        failed = [name for name, v in verdicts.items() if v.verdict == regression.FAIL]
        if failed:
            return f"{', '.join(failed)} failed on {len(done)} window(s): {can.words} vs {con.words}"
        if all(v.detail.startswith(canary_sums.UNRESOLVED) for v in verdicts.values()) and len(done) >= 4:
            return "unresolved"  # the round sums cannot decide: the job judges on reports
        return None


def main(a) -> None:
    rng = np.random.default_rng(a.seed)
    goal = a.window + 3 * a.poll + a.gate
    print(
        f"rounds-sim: {a.devices} devices, wave 1 = {a.devices // 10}; P = {a.poll:g} s, G = {a.gate:g} s, "
        f"W = {a.window:g} s, beat {a.beat:g} s, {a.rate:g} inferences/s per device, calibration {a.calibration}, "
        f"canary groups {a.canary_groups or 'as formed'}; "
        f"goal W + 3P + G = {goal:g} s (simulated seconds)"
    )
    started = time.perf_counter()
    results = []
    for trial in range(a.trials):
        r = Sim(a.devices, a.poll, a.gate, a.window, a.beat, a.rate, a.calibration, rng, a.canary_groups).run()
        results.append(r)
        if a.verbose:
            print(f"  trial {trial + 1}: {r}")
    took = time.perf_counter() - started
    rolled = [r for r in results if math.isfinite(r["t95"])]
    unresolved = sum(r["why"] == "unresolved" for r in results)
    print(f"{len(rolled)} of {len(results)} trials rolled back on round sums ({took:.1f} s of CPU for the runs)")
    if unresolved:
        print(f"{unresolved} trial(s): the round sums never resolved the canary goal (the job judges on reports)")
    if not rolled:
        return
    t95 = np.array([r["t95"] - r["t0"] for r in rolled])
    dec = np.array([r["decision"] - r["t0"] for r in rolled])
    print(
        f"decision at T0 + median {np.median(dec):.0f} s (max {dec.max():.0f}); 95 % of v2 devices back on v1 at "
        f"T0 + median {np.median(t95):.0f} s, 90th pct {np.percentile(t95, 90):.0f} s, max {t95.max():.0f} s"
    )
    print(
        f"  = median {np.median(t95) / goal:.2f}, max {t95.max() / goal:.2f} of the goal ({goal:g} s); "
        f"{int(np.sum(t95 <= goal))} of {len(rolled)} within it"
    )
    print(f"  first failing gate, e.g.: {rolled[0]['why']}")
