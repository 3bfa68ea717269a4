"""The child process that parses and runs an upload: ``python -m ota.sandbox_child <job dir>``.

Started by ``ota.sandbox`` with a clean environment (no database URL, no secrets). In order, it:

1. reads ``job.json`` (what to do, the limits) and asks the kernel to kill it if the worker dies;
2. sets its own limits: CPU time (``RLIMIT_CPU``), file size (``RLIMIT_FSIZE``), no core dumps;
3. imports numpy/onnx/onnxruntime, then limits its address space (``RLIMIT_AS``) to what those
   take plus the memory budget, so the budget is the model's, whatever the libraries map;
4. runs ``ota.pipeline``, appending each step's name to ``steps`` as it starts (so the worker can say
   what a crash interrupted) and writing ``result.json`` atomically.

Exit status: 0 = ``result.json`` written; 3 = out of memory outside any step; anything else (a
signal, a timeout kill) is read by the worker from the status. Tracebacks go to ``child.log`` for
admins, never to the person who uploaded.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import signal
import sys
from pathlib import Path

EXIT_MEMORY = 3
PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> None:
    """The kernel kills this process if the worker that started it dies (no orphan keeps running)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the worker's wall clock still applies
        pass
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def set_limit(which: int, value: int) -> None:
    _, hard = resource.getrlimit(which)
    if hard != resource.RLIM_INFINITY:
        value = min(value, hard)
    resource.setrlimit(which, (value, value if hard == resource.RLIM_INFINITY else hard))


def address_space() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def write_result(jobdir: Path, result: dict) -> None:
    tmp = jobdir / "result.json.tmp"
    tmp.write_text(json.dumps(result))
    os.replace(tmp, jobdir / "result.json")


def main(jobdir: Path) -> int:
    from ota.limits import Limits

    job = json.loads((jobdir / "job.json").read_text())
    die_with_parent(int(job["parent_pid"]))
    limits = Limits.from_json(job["limits"])
    set_limit(resource.RLIMIT_CORE, 0)
    # Soft limit: SIGXCPU ends the process (the worker names it); the hard one follows 5 s later.
    soft_cpu = max(1, limits.cpu_seconds)
    resource.setrlimit(resource.RLIMIT_CPU, (soft_cpu, soft_cpu + 5))
    set_limit(resource.RLIMIT_FSIZE, int(job["max_file_bytes"]))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an over-long write fails with EFBIG instead of killing
    os.dup2(2, 1)  # libraries that print write to the log, never into the protocol

    steps = (jobdir / "steps").open("a", buffering=1)

    def on_step(name: str) -> None:
        steps.write(name + "\n")

    on_step("start")
    import numpy  # noqa: F401  (imported before the address-space limit: the budget is the model's)

    from ota import pipeline, profiles  # noqa: F401

    if job["kind"] == "validate":
        import onnx  # noqa: F401
        import onnxruntime

        from ota import opsets

        opsets.max_supported_opset()  # probe onnxruntime once, outside the model's budget
        opsets.max_supported_ml_opset()
        if job.get("variants"):
            import onnxconverter_common.float16  # noqa: F401
            import onnxruntime.quantization  # noqa: F401
    set_limit(resource.RLIMIT_AS, address_space() + limits.memory_bytes)
    try:
        result = pipeline.run(job, limits, on_step, lambda partial: write_result(jobdir, partial))
        write_result(jobdir, result)
    except MemoryError:  # outside any step's own handling, or too little left to write the result
        return EXIT_MEMORY
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
