"""Building each compression variant of three models of different shapes: time, peak memory, and results.

For a tabular classifier (skl2onnx MLP with ZipMap, 4 features), a small CNN (torch.onnx.export, 1x32x32
images; the onnx package's squeezenet if torch is missing) and a wide MLP (~8 MB of float32 weights),
builds every variant with ``ota.quantize.build`` (what the sandbox child runs) and prints:

- ``build s``: wall time of the build;
- ``peak MiB``: the peak resident memory of the process that built it, above its start (each build runs
  in a fresh forked process, so one build's allocations do not hide the next's);
- ``size``, server ``p50``/``p95`` latency (batch 1, one thread) and agreement with fp32 on every
  output over 512 reference rows (worst output; max and mean absolute difference).

    .venv/bin/python bench/variants.py
    .venv/bin/python bench/variants.py --rows 256 --runs 50
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _rss_mib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _build(kind: str, src: str, dst: str, calibration: list | None, queue: mp.Queue) -> None:
    from ota import quantize

    start = _rss_mib()
    t0 = time.perf_counter()
    try:
        quantize.build(kind, src, dst, calibration)
        error = ""
    except Exception as exc:  # a bench prints what failed and goes on
        error = f"{type(exc).__name__}: {str(exc)[:80]}"
    elapsed = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put((elapsed, max(0.0, peak - start), error))


def models(tmp: Path) -> list[tuple[str, Path, dict]]:
    import numpy as np
    import onnx

    from tests import export_corpus as corpus
    from tests.onnx_models import large_mlp

    out = []
    x, _ = corpus.iris_like(512, seed=2)
    out.append(("tabular MLP (skl2onnx, ZipMap)", corpus.mlp(zipmap=True), {"input": x}))
    try:
        import torch  # noqa: F401

        cnn = corpus.torch_cnn()
        images = np.random.default_rng(0).normal(size=(512, 1, 16, 16)).astype(np.float32)
        out.append(("small CNN (torch.onnx.export)", cnn, {"image": images}))
    except ImportError:
        path = corpus.backend_model("light/light_squeezenet.onnx")
        model = onnx.load(str(path))
        name = model.graph.input[0].name
        images = np.random.default_rng(0).normal(size=(8, 3, 224, 224)).astype(np.float32)
        out.append(("squeezenet (onnx backend data)", model, {name: images}))
    wide = large_mlp(8 * 1024 * 1024, n_features=16, n_classes=4)
    out.append(
        ("wide MLP (~8 MB)", wide, {"input": np.random.default_rng(1).normal(size=(512, 16)).astype(np.float32)})
    )
    result = []
    for i, (name, model, data) in enumerate(out):
        path = tmp / f"m{i}.onnx"
        onnx.save(model, str(path))
        result.append((name, path, data))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    os.environ.setdefault("ORT_NUM_THREADS", "1")

    from ota import pipeline, quantize, validation
    from ota.limits import Limits

    ctx = mp.get_context("fork")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        print(
            f"{'model':34} {'variant':12} {'build s':>8} {'peak MiB':>9} {'size':>10} {'p50 ms':>8} "
            f"{'p95 ms':>8} {'agree':>7} {'max diff':>9} {'mean diff':>9}"
        )
        for name, path, data in models(tmp):
            report, fp32 = validation.validate(path, latency_runs=args.runs)
            arrays = {k: v[: args.rows] for k, v in data.items()}
            batches = pipeline.comparison_batches(report["inputs"], arrays, Limits(), rows=args.rows)
            lat = report["latency_ms"]
            print(
                f"{name:34} {'fp32':12} {'':>8} {'':>9} {path.stat().st_size:>10,} {lat['p50']:>8.3f} "
                f"{lat['p95']:>8.3f} {'100%':>7} {'':>9} {'':>9}"
            )
            for kind in quantize.KINDS:
                dst = tmp / f"{path.stem}-{kind}.onnx"
                queue: mp.Queue = ctx.Queue()
                proc = ctx.Process(target=_build, args=(kind, str(path), str(dst), batches, queue))
                proc.start()
                elapsed, peak, error = queue.get()
                proc.join()
                if error or not dst.exists():
                    print(f"{'':34} {kind:12} {elapsed:>8.2f} {peak:>9.1f}  not built: {error}")
                    continue
                try:
                    checked, session = validation.validate(dst, latency_runs=args.runs)
                except validation.ValidationFailed as exc:
                    print(
                        f"{'':34} {kind:12} {elapsed:>8.2f} {peak:>9.1f}  fails validation at {exc.step}: "
                        f"{exc.message[:70]}"
                    )
                    continue
                m = quantize.agreement(fp32, session, batches)
                vl = checked["latency_ms"]
                agree = f"{m['agreement']:.1%}" if m["agreement"] is not None else "—"
                print(
                    f"{'':34} {kind:12} {elapsed:>8.2f} {peak:>9.1f} {dst.stat().st_size:>10,} {vl['p50']:>8.3f} "
                    f"{vl['p95']:>8.3f} {agree:>7} {m['max_abs_diff']:>9.4f} {m['mean_abs_diff']:>9.5f}"
                )


if __name__ == "__main__":
    main()
