"""Time of each validation step for a ~50 MB model (what a worker spends per upload).

Runs the same code the Celery task runs (``ota.validation.validate``, the reference profile and the
int8 variant) on a valid MLP with a large initializer, without Django or a database. Prints a table.

    .venv/bin/python bench/validation_steps.py            # 50 MB, 1000 reference rows
    .venv/bin/python bench/validation_steps.py --mb 200
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=50)
    parser.add_argument("--rows", type=int, default=1000, help="reference rows for the profile and int8 agreement")
    parser.add_argument("--runs", type=int, default=30, help="latency runs")
    args = parser.parse_args()
    os.environ.setdefault("ORT_NUM_THREADS", "1")

    import numpy as np

    from ota import opsets, profiles, quantize, synthetic, validation
    from tests.onnx_models import large_mlp, save

    work = Path(tempfile.mkdtemp(prefix="edgefleet-bench-validate-"))
    path = save(large_mlp(args.mb * 1_000_000), work / "model.onnx")
    opsets.max_supported_opset()  # probed once per worker process; not part of a validation

    t0 = time.perf_counter()
    report, session = validation.validate(path, latency_runs=args.runs)
    steps = [(s["name"], s["duration_ms"]) for s in report["steps"]]

    inputs = report["inputs"]
    x = np.random.default_rng(0).normal(size=(args.rows, inputs[0]["shape"][1])).astype(np.float32)
    t = time.perf_counter()
    arrays = profiles.match_inputs({"input": x}, inputs, "npz")
    profile = profiles.build_profile(arrays, inputs, lambda f: session.run(None, f)[0])
    steps.append(("reference_profile", (time.perf_counter() - t) * 1000))

    t = time.perf_counter()
    q = quantize.make_int8(path, work / "int8.onnx")
    steps.append(("int8: quantize_dynamic", (time.perf_counter() - t) * 1000))
    t = time.perf_counter()
    q_session = validation.make_session(q)
    feeds = synthetic.synthetic_inputs(inputs)
    q_latency = validation.latency_ms(lambda: q_session.run(None, feeds), runs=args.runs)
    metrics = quantize.agreement(session, q_session, [{"input": x[i : i + 128]} for i in range(0, args.rows, 128)])
    steps.append(("int8: session+latency+agreement", (time.perf_counter() - t) * 1000))
    total = (time.perf_counter() - t0) * 1000

    print(f"\nmodel {path.stat().st_size / 1e6:.1f} MB, {report['parameters']:,} parameters, opset {report['opset']}")
    print(f"ORT_NUM_THREADS={os.environ['ORT_NUM_THREADS']}, {os.cpu_count()} CPUs, {args.runs} latency runs")
    print(f"{'step':<34} {'ms':>10}")
    for name, ms in steps:
        print(f"{name:<34} {ms:>10.1f}")
    print(f"{'total':<34} {total:>10.1f}")
    print(
        f"\nfp32 latency p50/p95 {report['latency_ms']['p50']:.3f}/{report['latency_ms']['p95']:.3f} ms; "
        f"int8 {q_latency['p50']:.3f}/{q_latency['p95']:.3f} ms, {q.stat().st_size / 1e6:.1f} MB, "
        f"agreement {metrics['agreement']:.3f}, max abs diff {metrics['max_abs_diff']:.4f}; "
        f"profile {len(profile['features'])} features, output {profile['output']['kind']}"
    )


if __name__ == "__main__":
    main()
