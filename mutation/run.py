"""Run mutmut over the modules that decide and print the table (what `make mutation` calls).

    python -m mutation.run [MODULE.py ...] [--changed [REF]] [--check] [--jobs N]

Every run starts from an empty mutants/ so no result is carried over from older code or tests.
mutmut first runs the configured test files once, instrumented, to learn which tests call which
function; each mutant then reruns only those tests. No database is used: pyproject deselects the
``django_db`` and ``slow`` tests, and conftest leaves Redis alone under mutmut.

``--changed`` restricts the run to configured modules that differ from REF (default: the merge base
with main on a branch, the first parent on main, so CI checks what the last merge brought in).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from mutation.report import ROOT, configured_modules, dotted, report


def _git(*args: str) -> str | None:
    proc = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
    return proc.stdout.strip() if proc.returncode == 0 else None


def default_base() -> str | None:
    """The merge base with main; on main itself (or level with it), the first parent of HEAD."""
    head = _git("rev-parse", "HEAD")
    if _git("rev-parse", "--verify", "--quiet", "main"):
        base = _git("merge-base", "HEAD", "main")
        if base and base != head:
            return base
    return _git("rev-parse", "--verify", "--quiet", "HEAD^1")


def changed_modules(base: str | None) -> list[str] | None:
    """Configured modules touched since ``base`` (committed or not); None when git cannot tell."""
    if not base:
        return None
    names = _git("diff", "--name-only", base, "--")
    if names is None:
        return None
    touched = set(names.splitlines())
    return [m for m in configured_modules() if m in touched]


def run_mutmut(modules: Sequence[str], jobs: int) -> int:
    shutil.rmtree(ROOT / "mutants", ignore_errors=True)
    (ROOT / "mutants").mkdir()
    log = ROOT / "mutants" / "run.log"
    mutmut = Path(sys.executable).with_name("mutmut")
    cmd = [str(mutmut), "run", "--max-children", str(jobs), *(dotted(m) + ".x*" for m in modules)]
    print(f"mutmut on {len(modules)} module(s), {jobs} worker(s); log in {log.relative_to(ROOT)}", flush=True)
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    with log.open("w") as out:
        # mutmut's spinner writes its progress to the log; only the table goes to the terminal.
        code = subprocess.run(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env, check=False).returncode
    if code != 0:
        tail = log.read_text(errors="replace").replace("\r", "\n").splitlines()[-40:]
        print("\n".join(tail), file=sys.stderr)
        print(f"mutmut failed (exit {code}); see {log}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("modules", nargs="*", help="module paths, e.g. telemetry/drift.py (default: all configured)")
    parser.add_argument("--changed", nargs="?", const="", metavar="REF", help="only modules that differ from REF")
    parser.add_argument("--check", action="store_true", help="exit 1 below 90 %% or on an unexplained survivor")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args(argv)

    configured = configured_modules()
    modules = list(args.modules) or configured
    unknown = [m for m in modules if m not in configured]
    if unknown:
        print(f"not configured in pyproject [tool.mutmut] only_mutate: {', '.join(unknown)}", file=sys.stderr)
        return 2
    if args.changed is not None:
        base = args.changed or default_base()
        touched = changed_modules(base)
        if touched is None:
            print(f"cannot diff against {base or 'a base'}: checking every module")
        else:
            modules = [m for m in modules if m in touched]
            print(f"modules that decide changed since {base[:12]}: {', '.join(modules) or 'none'}")
            if not modules:
                return 0
    started = time.monotonic()
    code = run_mutmut(modules, args.jobs)
    if code != 0:
        return code
    result = report(modules, check=args.check)
    print(f"mutation run took {time.monotonic() - started:.0f} s")
    return result


if __name__ == "__main__":
    sys.exit(main())
