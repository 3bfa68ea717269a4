"""Pytest settings for runs under mutmut (loaded with ``-p mutation.pytest_plugin`` from pyproject).

Each mutant reruns the tests that call its function, with ``-x``. Two things make that fast and
repeatable: the tests that failed fastest come first (mutmut hands them over in set order, which
changes with the hash seed), and Hypothesis draws a fixed, smaller set of examples so a survivor is
the same survivor on every run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

STATS = Path("mutmut-stats.json")  # mutmut runs pytest inside mutants/, where it keeps this file


def _under_mutmut() -> bool:
    return "MUTANT_UNDER_TEST" in os.environ  # set (possibly empty) for every pytest run mutmut starts


def pytest_configure(config: pytest.Config) -> None:
    if not _under_mutmut():
        return
    from hypothesis import HealthCheck, settings

    settings.register_profile(
        "mutation",
        max_examples=30,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    settings.load_profile("mutation")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if not _under_mutmut() or not STATS.exists():
        return
    try:
        durations = json.loads(STATS.read_text()).get("duration_by_test", {})
    except (OSError, ValueError):
        return
    items.sort(key=lambda item: durations.get(item.nodeid, 0.0))
