"""Run a job on uploaded bytes in a limited child process, and turn whatever happens into a sentence.

The worker (or the web process, for the quick reference-set check) never parses or runs an upload
itself: onnx, onnxruntime and numpy's readers run in ``python -m ota.sandbox_child``, a fresh
interpreter with an address-space limit, a CPU-time limit, a file-size limit, no core dumps, a clean
environment (no database URL, no secrets) and the kernel's promise to kill it with its parent. This
module keeps the wall clock and reads the outcome. Stdlib only: importing it loads no onnxruntime.

Protocol, all inside a private job directory (``mkdtemp``, removed afterwards):

- ``job.json`` (worker → child): ``kind`` (``validate`` | ``reference``), ``model``/``reference``
  paths, ``previous_contract``, ``latency_runs``, ``variants`` (kinds) and ``variant_dir``, ``limits``,
  ``parent_pid``, ``max_file_bytes``.
- ``steps`` (child → worker): one step name per line, appended as each step starts.
- ``result.json`` (child → worker, replaced atomically): ``{"ok", "report", "error", "step",
  "profile", "variants": {kind: {"metrics"}}, "variants_pending": kind}``; read only when at most
  ``MAX_RESULT_BYTES``.
- ``out/<kind>.onnx``: the variant builds; the worker takes them only from those fixed paths, for the
  known kinds, as regular files.
- ``child.log``: the child's stdout and stderr, for the worker log only.

A child that dies (memory, CPU, wall clock, a signal) leaves no result: the worker names the step
from ``steps`` and the cause from the exit status. Messages never carry a server path
(``ota.limits.scrub``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ota.limits import (
    Limits,
    cpu_message,
    crash_message,
    doing,
    memory_message,
    scrub,
    scrub_report,
    timeout_message,
)

log = logging.getLogger(__name__)

BASE_DIR = Path(__file__).resolve().parent.parent
EXIT_MEMORY = 3  # ota.sandbox_child.EXIT_MEMORY
MAX_RESULT_BYTES = 64 * 1024 * 1024
LOG_TAIL = 4000


@dataclass
class Outcome:
    """What a job came to. ``error`` is for a person; ``report`` is what was learnt before it."""

    ok: bool
    report: dict = field(default_factory=dict)
    error: str = ""
    step: str | None = None
    profile: dict | None = None
    variants: dict[str, tuple[Path, dict]] = field(default_factory=dict)  # kind -> (file, metrics)
    exit_status: int | None = None

    @property
    def variant_path(self) -> Path | None:
        return self.variants["int8"][0] if "int8" in self.variants else None

    @property
    def variant_metrics(self) -> dict | None:
        return self.variants["int8"][1] if "int8" in self.variants else None


def child_env(jobdir: Path, limits: Limits) -> dict[str, str]:
    """Only what the child needs: nothing of the worker's environment (secrets, URLs) leaks in."""
    threads = str(max(1, limits.threads))
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "HOME": str(jobdir),
        "TMPDIR": str(jobdir / "tmp"),
        "ORT_NUM_THREADS": threads,
        "OMP_NUM_THREADS": threads,
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "MALLOC_ARENA_MAX": "2",  # glibc reserves 64 MiB of address space per arena otherwise
    }


def _kill(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    proc.wait()


def _steps(jobdir: Path) -> list[str]:
    try:
        text = (jobdir / "steps").read_text(errors="replace")[-65536:]
    except OSError:
        return []
    return [s for s in text.splitlines() if s and s != "start"]


def _result(jobdir: Path) -> dict | None:
    path = jobdir / "result.json"
    try:
        st = path.lstat()
        if not path.is_file() or path.is_symlink() or st.st_size > MAX_RESULT_BYTES:
            return None
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _log_tail(jobdir: Path) -> str:
    try:
        with (jobdir / "child.log").open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - LOG_TAIL))
            return fh.read().decode(errors="replace")
    except OSError:
        return ""


VARIANT_KINDS = ("int8", "int8_static", "fp16", "optimized")  # ota.quantize.KINDS (not imported: no onnx here)
PENDING = ("variants_pending", "int8_pending")


def _variant_file(jobdir: Path, kind: str) -> Path | None:
    """A variant build, only from its fixed place and only as a regular file (never a link elsewhere)."""
    if kind not in VARIANT_KINDS:
        return None
    path = jobdir / "out" / f"{kind}.onnx"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        import stat

        return path if stat.S_ISREG(os.fstat(fd).st_mode) else None
    finally:
        os.close(fd)


def _signal_name(status: int) -> str:
    try:
        return signal.Signals(-status).name
    except ValueError:
        return f"signal {-status}"


def failure_message(status: int | None, timed_out: bool, step: str | None, limits: Limits) -> str:
    if timed_out:
        return timeout_message(step, limits)
    if status == EXIT_MEMORY:
        return memory_message(step, limits)
    if status == -signal.SIGXCPU:
        return cpu_message(step, limits)
    if status is not None and status < 0:
        return crash_message(step, _signal_name(status), limits)
    return (
        f"Validation failed unexpectedly while {doing(step)} (the validation process exited with status "
        f"{status}). Ask an admin to look at the worker log."
    )


@contextlib.contextmanager
def run(
    job: dict,
    limits: Limits,
    names: dict[str, str],
    workdir: str | Path | None = None,
    max_file_bytes: int = 1 << 30,
) -> Iterator[Outcome]:
    """Run ``job`` in a child under ``limits``; yield its ``Outcome`` (files valid until the block ends).

    ``names`` maps server paths to what a person may see (``{"/…/artifacts/4b/4b…": "model sha256:4b…"}``).
    """
    jobdir = Path(tempfile.mkdtemp(prefix="sandbox-", dir=workdir))
    names = {**names, str(jobdir): "the validation workspace"}
    proc: subprocess.Popen | None = None
    try:
        (jobdir / "tmp").mkdir()
        (jobdir / "out").mkdir()
        job = {
            **job,
            "limits": limits.as_json(),
            "parent_pid": os.getpid(),
            "max_file_bytes": int(max_file_bytes),
        }
        if job.get("int8") and not job.get("variants"):
            job["variants"] = ["int8"]
        if job.get("variants"):
            job["variant_dir"] = str(jobdir / "out")
        (jobdir / "job.json").write_text(json.dumps(job))
        timed_out = False
        with (jobdir / "child.log").open("wb") as logfile:
            proc = subprocess.Popen(
                [sys.executable, "-E", "-s", "-B", "-m", "ota.sandbox_child", str(jobdir)],
                cwd=BASE_DIR,
                env=child_env(jobdir, limits),
                stdin=subprocess.DEVNULL,
                stdout=logfile,
                stderr=logfile,
                start_new_session=True,
                close_fds=True,
            )
            try:
                status = proc.wait(timeout=limits.wall_seconds)
            except subprocess.TimeoutExpired:
                timed_out = True
                _kill(proc)
                status = proc.returncode
        outcome = _outcome(jobdir, job, status, timed_out, limits, names)
        if not outcome.ok or outcome.exit_status:
            log.log(
                logging.WARNING if (outcome.exit_status or timed_out) else logging.INFO,
                "sandbox %s job ended with status %s (timed out: %s) at step %s: %s\n%s",
                job["kind"],
                status,
                timed_out,
                outcome.step,
                outcome.error or outcome.report.get("variant_errors"),
                scrub(_log_tail(jobdir), names),
            )
        yield outcome
    finally:
        if proc is not None and proc.poll() is None:  # the task itself was interrupted (soft time limit)
            _kill(proc)
        shutil.rmtree(jobdir, ignore_errors=True)


def _outcome(
    jobdir: Path, job: dict, status: int | None, timed_out: bool, limits: Limits, names: dict[str, str]
) -> Outcome:
    steps = _steps(jobdir)
    step = steps[-1] if steps else None
    result = _result(jobdir)
    pending = next((result.get(k) for k in PENDING if result and result.get(k)), None)
    if result is not None and status == 0 and not timed_out and not pending:
        return _from_result(jobdir, result, names, status)
    if result is not None and result.get("ok") and pending:
        # The fp32 checks passed and were saved; only building a variant died: stage without that one.
        kind = pending if isinstance(pending, str) and pending in VARIANT_KINDS else "int8"
        report = result.get("report") if isinstance(result.get("report"), dict) else {}
        reason = failure_message(status, timed_out, f"{kind}_variant", limits)
        label = "int8" if kind == "int8" else kind.replace("_", " ")
        report.setdefault("variant_errors", {})[kind] = f"The {label} variant could not be made: {reason}"
        if kind == "int8":
            report["int8_error"] = report["variant_errors"][kind]
        report.setdefault("steps", []).append({"name": f"{kind}_variant", "ok": False, "error": reason})
        result = {**result, "report": report}
        return _from_result(jobdir, result, names, status)
    message = scrub(failure_message(status, timed_out, step, limits), names)
    report: dict = {"steps": [{"name": s, "ok": True} for s in steps[:-1]]}
    if job.get("model"):
        with contextlib.suppress(OSError):
            report["file_size"] = Path(job["model"]).stat().st_size
    report["steps"].append({"name": step or "start", "ok": False, "error": message})
    return Outcome(ok=False, report=report, error=message, step=step, exit_status=status)


def _from_result(jobdir: Path, result: dict, names: dict[str, str], status: int | None) -> Outcome:
    report = result.get("report") if isinstance(result.get("report"), dict) else {}
    scrub_report(report, names)
    variants: dict[str, tuple[Path, dict]] = {}
    found = result.get("variants") if isinstance(result.get("variants"), dict) else {}
    for kind, entry in found.items():
        metrics = entry.get("metrics") if isinstance(entry, dict) else None
        path = _variant_file(jobdir, kind) if isinstance(metrics, dict) else None
        if path is not None:
            variants[kind] = (path, metrics)
    profile = result.get("profile") if isinstance(result.get("profile"), dict) else None
    return Outcome(
        ok=bool(result.get("ok")),
        report=report,
        error=scrub(str(result.get("error") or ""), names),
        step=result.get("step") if isinstance(result.get("step"), str) else None,
        profile=profile,
        variants=variants,
        exit_status=status,
    )
