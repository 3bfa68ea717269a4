"""The mutation table from mutmut's results in mutants/: module | mutants | killed | survived | score.

A survivor is explained when ``mutation/equivalent.md`` lists it (module, function and the mutated
line, so the entry outlives mutmut's renumbering); every other survivor is printed with its diff.

    python -m mutation.report [--check] [MODULE.py ...]

``--check`` exits 1 when a module scores below ``MIN_SCORE`` or has an unexplained survivor.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EQUIVALENT = ROOT / "mutation" / "equivalent.md"
MIN_SCORE = 90.0

# mutmut's exit codes per mutant (mutmut.stats.status_by_exit_code), folded into what the table says.
KILLED = {1, 3, 36, -24, 24, 152, 255, -11, -9}  # a failing test, or a timeout / crash the mutant caused
SURVIVED = {0}
NO_TESTS = {5, 33}


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def configured_modules() -> list[str]:
    """The modules that decide, as listed in pyproject's [tool.mutmut] only_mutate."""
    return list(_pyproject()["tool"]["mutmut"]["only_mutate"])


def not_gated() -> set[str]:
    """Modules reported but not yet held to the target by --check ([tool.edgefleet-mutation])."""
    return set(_pyproject().get("tool", {}).get("edgefleet-mutation", {}).get("not_gated", []))


def dotted(module: str) -> str:
    return module.removesuffix(".py").replace("/", ".")


def function_of(key: str) -> str:
    """'telemetry.drift.x_psi__mutmut_3' -> 'psi'; 'm.xǁRingǁadd__mutmut_1' -> 'Ring.add'."""
    mangled = key.partition("__mutmut_")[0].rpartition(".")[2]
    if mangled.startswith("xǁ"):
        return ".".join(mangled[2:].split("ǁ"))
    return mangled.removeprefix("x_")


def _norm(line: str) -> str:
    return " ".join(line.split())


@dataclass
class Equivalent:
    module: str
    function: str
    line: str
    why: str
    used: bool = False


def load_equivalents(path: Path = EQUIVALENT) -> list[Equivalent]:
    """Entries ``- `function` `mutated line` — why`` under a ``### module.py`` heading."""
    entries: list[Equivalent] = []
    module = ""
    if not path.exists():
        return entries
    for raw in path.read_text().splitlines():
        if raw.startswith("### "):
            module = raw[4:].strip().strip("`")
            continue
        m = re.match(r"^- `([^`]+)` `(.+)` — (.+)$", raw.strip())
        if m and module:
            entries.append(Equivalent(module, m.group(1), _norm(m.group(2)), m.group(3).strip()))
    return entries


@dataclass
class ModuleResult:
    module: str
    mutants: int = 0
    killed: int = 0
    survived: list[str] = field(default_factory=list)  # keys of survivors and mutants no test reached
    equivalent: list[str] = field(default_factory=list)
    unexplained: list[tuple[str, str]] = field(default_factory=list)  # (key, diff)

    @property
    def score(self) -> float:
        return 100.0 * self.killed / self.mutants if self.mutants else 100.0


def _diff(key: str, module: str) -> str:
    from mutmut.mutation.diff_apply import get_diff_for_mutant

    try:
        return get_diff_for_mutant(key, path=module)
    except Exception as exc:  # a stale index: the table still counts it, unexplained
        return f"(no diff: {exc})"


def added_lines(diff: str) -> str:
    return " / ".join(_norm(x[1:]) for x in diff.splitlines() if x.startswith("+") and not x.startswith("+++"))


def collect(modules: Sequence[str], equivalents: list[Equivalent]) -> list[ModuleResult]:
    results = []
    for module in modules:
        meta = ROOT / "mutants" / (module + ".meta")
        r = ModuleResult(module)
        if not meta.exists():
            results.append(r)
            continue
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        for key, code in sorted(codes.items()):
            r.mutants += 1
            if code in KILLED:
                r.killed += 1
                continue
            r.survived.append(key)
            diff = _diff(key, module)
            line, func = added_lines(diff), function_of(key)
            match = next(
                (e for e in equivalents if e.module == module and e.function == func and e.line == line and code == 0),
                None,
            )
            if match:
                match.used = True
                r.equivalent.append(key)
            else:
                status = "no test reaches it" if code in NO_TESTS else ("survived" if code == 0 else f"exit {code}")
                r.unexplained.append((key, f"# {key}: {status}\n{diff}"))
        results.append(r)
    return results


def _checked(meta: Path) -> bool:
    if not meta.exists():
        return False
    return any(code is not None for code in json.loads(meta.read_text())["exit_code_by_key"].values())


def table(results: Iterable[ModuleResult]) -> str:
    rows = [
        "| module | mutants | killed | survived | equivalent | unexplained | score |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        rows.append(
            f"| `{r.module}` | {r.mutants} | {r.killed} | {len(r.survived)} | {len(r.equivalent)} "
            f"| {len(r.unexplained)} | {r.score:.1f} % |"
        )
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("modules", nargs="*", help="module paths (default: every configured module with results)")
    parser.add_argument("--check", action="store_true", help=f"fail below {MIN_SCORE:g} %% or on a survivor")
    parser.add_argument("--quiet", action="store_true", help="no diffs of unexplained survivors")
    args = parser.parse_args(argv)
    return report(args.modules or None, check=args.check, quiet=args.quiet)


def report(modules: Sequence[str] | None, *, check: bool = False, quiet: bool = False) -> int:
    import os

    os.chdir(ROOT)  # mutmut's helpers read mutants/ relative to the working directory
    sys.path.insert(0, str(ROOT))
    configured = configured_modules()
    if modules is None:  # the modules the last run checked (mutmut generates every module's mutants)
        modules = [m for m in configured if _checked(ROOT / "mutants" / (m + ".meta"))]
    unknown = [m for m in modules if m not in configured]
    if unknown:
        print(f"not configured in pyproject [tool.mutmut] only_mutate: {', '.join(unknown)}", file=sys.stderr)
        return 2
    equivalents = load_equivalents()
    results = collect(modules, equivalents)
    if not quiet:
        for r in results:
            for _, diff in r.unexplained:
                print(diff, end="\n\n")
    stale = [e for e in equivalents if e.module in modules and not e.used]
    for e in stale:
        print(f"note: equivalent.md entry matches no survivor now: {e.module} {e.function}: {e.line}")
    print(table(results))
    total = sum(r.mutants for r in results)
    killed = sum(r.killed for r in results)
    print(f"\n{killed}/{total} killed; equivalents listed in mutation/equivalent.md")
    waived = not_gated()
    failing = [r for r in results if r.mutants == 0 or r.score < MIN_SCORE or r.unexplained]
    for r in failing:
        if r.module in waived:
            print(f"not gated yet (pyproject [tool.edgefleet-mutation] not_gated): {r.module}")
    failing = [r for r in failing if r.module not in waived]
    if check and failing:
        names = ", ".join(r.module for r in failing)
        print(f"FAIL: below {MIN_SCORE:g} % or with unexplained survivors: {names}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
