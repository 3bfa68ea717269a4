"""What the validation sandbox costs per validation: the child process against the same work in-process.

For a small MLP and a ~50 MB one, runs the validation job (``ota.pipeline``, what the sandbox child
runs) N times in this process and N times through ``ota.sandbox.run`` (a fresh
``python -m ota.sandbox_child`` with its limits), and prints the medians and their difference: the
interpreter start, the numpy/onnx/onnxruntime imports and the onnxruntime opset probe a worker no
longer pays once per process, plus writing and reading the result.

    .venv/bin/python bench/validation_sandbox.py              # small + 50 MB, 5 runs each
    .venv/bin/python bench/validation_sandbox.py --runs 9 --int8
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--mb", type=int, default=50)
    parser.add_argument("--latency-runs", type=int, default=5, help="latency runs inside each validation")
    parser.add_argument("--int8", action="store_true", help="also make and measure the int8 variant")
    args = parser.parse_args()
    os.environ.setdefault("ORT_NUM_THREADS", "1")

    from ota import opsets, pipeline, sandbox
    from ota.limits import Limits
    from tests.onnx_models import large_mlp, mlp_classifier, save

    work = Path(tempfile.mkdtemp(prefix="edgefleet-bench-sandbox-"))
    models = {
        "small MLP": save(mlp_classifier(), work / "small.onnx"),
        f"{args.mb} MB MLP": save(large_mlp(args.mb * 1_000_000), work / "large.onnx"),
    }
    limits = Limits()
    opsets.max_supported_opset()  # a worker validating in-process probes once per process

    print(f"ORT_NUM_THREADS={os.environ['ORT_NUM_THREADS']}, {os.cpu_count()} CPUs, {args.runs} runs each,")
    print(f"{args.latency_runs} latency runs per validation, int8 {'on' if args.int8 else 'off'}\n")
    head = ("model", "size MB", "in-process ms", "sandbox ms", "overhead ms", "child peak MB")
    print(f"{head[0]:<12} {head[1]:>8} {head[2]:>14} {head[3]:>11} {head[4]:>12} {head[5]:>14}")
    for name, path in models.items():
        job = {"kind": "validate", "model": str(path), "latency_runs": args.latency_runs}
        inproc, boxed = [], []
        for i in range(args.runs):
            out = work / f"int8-{i}.onnx"
            t = time.perf_counter()
            result = pipeline.run(
                {**job, "int8_path": str(out) if args.int8 else None}, limits, lambda _s: None, lambda _r: None
            )
            inproc.append((time.perf_counter() - t) * 1000)
            assert result["ok"], result
            t = time.perf_counter()
            with sandbox.run({**job, "int8": args.int8}, limits, {}, workdir=work) as outcome:
                boxed.append((time.perf_counter() - t) * 1000)
                assert outcome.ok, outcome.error
        a, b = statistics.median(inproc), statistics.median(boxed)
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        print(f"{name:<12} {path.stat().st_size / 1e6:>8.1f} {a:>14.0f} {b:>11.0f} {b - a:>12.0f} {peak:>14.0f}")
    print("\n(child peak MB: the largest resident size any sandbox child reached so far in this run)")


if __name__ == "__main__":
    main()
