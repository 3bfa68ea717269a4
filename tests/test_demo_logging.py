"""What a normal start of the demo prints (README, "What the demo prints"), checked on real processes.

The whole ``run_edgefleet`` (gunicorn, two workers, beat, 300 simulated devices) is too heavy for a
test, so its parts are started separately, each as ``run_edgefleet`` starts it, with the embedded
defaults (SQLite and the filesystem broker, no Redis): the control worker's start-up log has no
kombu "No hostname was supplied", and a demo line is printed once by the project's logging setup.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgefleet.settings import BASE_DIR

pytestmark = pytest.mark.slow


def embedded_env(data: Path) -> dict[str, str]:
    """The environment of ``make run`` on a fresh machine: no Redis, no PostgreSQL, no test settings."""
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "CELERY_BROKER_URL", "DATABASE_URL")}
    env.update(DJANGO_SETTINGS_MODULE="edgefleet.settings", EDGEFLEET_DATA_DIR=str(data), PYTHONUNBUFFERED="1")
    return env


def test_the_control_worker_starts_without_a_no_hostname_warning(tmp_path: Path) -> None:
    from fleet.management.commands.run_edgefleet import processes

    cmd = processes(sys.executable, "127.0.0.1", 0)["worker-control"]
    proc = subprocess.Popen(
        cmd,
        cwd=BASE_DIR,
        env=embedded_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    deadline = time.monotonic() + 50
    try:
        assert proc.stdout is not None
        os.set_blocking(proc.stdout.fileno(), False)
        while time.monotonic() < deadline and not any(" ready." in line for line in lines):
            chunk = proc.stdout.readline()
            if chunk:
                lines.append(chunk)
            elif proc.poll() is not None:
                break
            else:
                time.sleep(0.1)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            rest, _ = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            rest, _ = proc.communicate()
        lines += (rest or "").splitlines(keepends=True)
    log = "".join(lines)
    assert any(" ready." in line for line in lines), log[-3000:]
    assert "control@" in log and "filesystem" in log
    assert "No hostname was supplied" not in log, log
    assert "Not Found" not in log


def test_a_demo_line_is_printed_once(tmp_path: Path) -> None:
    code = "from demo import story; story.say('the first wave passed its gates')"
    out = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", code],
        cwd=BASE_DIR,
        env=embedded_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=50,
    )
    printed = out.stdout + out.stderr
    assert out.returncode == 0, printed
    assert printed.count("the first wave passed its gates") == 1, printed
    assert "[demo] the first wave passed its gates" in printed
