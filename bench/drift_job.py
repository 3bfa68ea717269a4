"""Drift: false-alarm and detection rates at the default epsilon, and the job's time on 1,000,000 reports.

    .venv/bin/python bench/drift_job.py [--reports 1000000] [--devices 1000] [--trials 200]

Part 1 simulates fleet windows of N devices (300 inferences each, 4 features, Laplace at ε=1 with the
agent's sensitivity) against an N(0,1) reference and prints how often the noise-aware PSI check fires
with no drift, and with a 0.5σ shift of one feature. Part 2 COPYs the reports into a fresh
PostgreSQL database (bench_telemetry_drift) and times the rollup job and the drift job.
"""

import argparse
import io
import json
import time
import uuid
from datetime import UTC, datetime, timedelta

import numpy as np
from _telemetry_setup import fresh_database, released_version


def alarm_rates(trials: int) -> None:
    from telemetry import drift, privacy
    from telemetry.binning import DEFAULT_FEATURE_EDGES, histogram

    rng = np.random.default_rng(0)
    edges, per_device, nf = DEFAULT_FEATURE_EDGES, 300, 4
    ref_sample = rng.normal(size=100_000)
    ref = histogram(ref_sample, edges)
    layout = {"features": [f"input[{j}]" for j in range(nf)]}
    scale = privacy.laplace_scale(1.0, privacy.l1_sensitivity(layout))
    var = privacy.noise_variance("laplace", 1.0, layout)
    print(f"noise-aware PSI check, ε=1 Laplace (scale {scale:g} per count), {trials} fleet-windows per cell")
    print(f"{'devices':>8} {'false alarms (no drift)':>24} {'detected (0.5σ shift)':>22} {'mean level':>11}")
    for n in (20, 100, 1000, 10_000, 100_000):
        fa = det = 0
        levels = []
        for _ in range(trials):
            level = drift.psi_threshold(ref, n * per_device, n * var, reference_mass=len(ref_sample))
            levels.append(level)
            for shift in (0.0, 0.5):
                x = rng.normal(loc=shift, size=n * per_device) if n * per_device <= 3_000_000 else None
                if x is None:  # large fleets: multinomial draw of the same distribution
                    p = histogram(rng.normal(loc=shift, size=1_000_000), edges) / 1_000_000
                    counts = rng.multinomial(n * per_device, p).astype(float)
                else:
                    counts = histogram(x, edges)
                counts += rng.normal(0, np.sqrt(n * var), size=counts.shape)  # sum of n Laplace noises
                hit = drift.psi(ref, counts) > level
                if shift == 0.0:
                    fa += hit
                else:
                    det += hit
        print(f"{n:>8} {fa / trials:>24.3f} {det / trials:>22.3f} {np.mean(levels):>11.3f}")


def copy_reports(version, devices: list, total: int) -> float:
    """COPY ``total`` reports (N(0,1) features, ε=1 noise) spread over hourly windows; returns seconds."""
    from django.db import connection

    from telemetry import privacy
    from telemetry.binning import DEFAULT_FEATURE_EDGES, histogram
    from telemetry.profiles import expected_bins

    rng = np.random.default_rng(1)
    bins = expected_bins(version)
    names = [f["name"] for f in bins["features"]]
    scale = privacy.laplace_scale(1.0, privacy.l1_sensitivity(bins))
    base = {n: histogram(rng.normal(size=300), DEFAULT_FEATURE_EDGES) for n in names}
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(days=20)
    per_window = len(devices)
    received = datetime.now(UTC) - timedelta(minutes=5)
    t0 = time.perf_counter()
    cols = ("id, device_id, version_id, window_start, window_end, inference_count, error_count, latency, outputs, "
            "features, mechanism, epsilon, received_at")  # fmt: skip
    done = 0
    with connection.cursor() as cur:
        while done < total:
            buf = io.StringIO()
            for _ in range(min(50_000, total - done)):
                w = done // per_window
                ws = start + timedelta(minutes=5 * w)
                noise = np.round(rng.laplace(0, scale, size=(len(names), 16)), 1)
                feats = {n: (base[n] + noise[i]).tolist() for i, n in enumerate(names)}
                row = (
                    uuid.uuid4(), devices[done % per_window], version.id, ws.isoformat(),
                    (ws + timedelta(minutes=5)).isoformat(), 300.0, 3.0,
                    json.dumps([0, 10, 60, 150, 70, 10, 0, 0, 0, 0, 0, 0]), json.dumps([100, 100, 100]),
                    json.dumps(feats), "laplace", 1.0, received.isoformat(),
                )  # fmt: skip
                buf.write("\t".join(str(x) for x in row) + "\n")
                done += 1
            buf.seek(0)
            cur.copy_expert(f"COPY telemetry_report ({cols}) FROM STDIN", buf)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reports", type=int, default=1_000_000)
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--trials", type=int, default=200)
    args = ap.parse_args()
    fresh_database("bench_telemetry_drift")
    alarm_rates(args.trials)

    from fleet.models import Device
    from telemetry import services
    from telemetry.models import DriftResult, Rollup

    version = released_version()
    Device.objects.bulk_create(
        [Device(name=f"b{i}", token_hash=uuid.uuid4().hex + uuid.uuid4().hex, labels={"region": "eu"}) for i in
         range(args.devices)]
    )  # fmt: skip
    devices = list(Device.objects.values_list("id", flat=True))
    secs = copy_reports(version, devices, args.reports)
    print(f"\nCOPY {args.reports:,} reports: {secs:.1f} s ({args.reports / secs:,.0f} rows/s)")
    t0 = time.perf_counter()
    rolled = services.update_rollups()
    t1 = time.perf_counter()
    drifted = services.compute_drift()
    t2 = time.perf_counter()
    print(f"rollup job: {t1 - t0:.1f} s for {rolled['reports']:,} reports -> {Rollup.objects.count()} rollups")
    print(f"drift job:  {t2 - t1:.1f} s for {drifted['rollups']} rollups -> {DriftResult.objects.count()} results")
    t3 = time.perf_counter()
    again = services.update_rollups()
    again_d = services.compute_drift()
    print(f"incremental re-run with nothing new: {time.perf_counter() - t3:.2f} s ({again}, {again_d})")


if __name__ == "__main__":
    main()
