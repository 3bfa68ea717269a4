"""Real Celery worker processes for tests that kill them or look at their memory (Linux /proc only)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent


def worker_env(settings: object, **extra: str) -> dict[str, str]:
    """The environment of a worker process on the test database, Redis db and data directory."""
    from django.db import connection

    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "edgefleet.settings",
        "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{connection.settings_dict['NAME']}",
        "REDIS_URL": settings.REDIS_URL,
        "EDGEFLEET_DATA_DIR": str(settings.DATA_DIR),
        "ORT_NUM_THREADS": "1",
        **extra,
    }


@contextmanager
def worker(
    env: dict[str, str], queues: str, pool: str = "solo", name: str = "w", log: Path | None = None
) -> Iterator[subprocess.Popen]:
    """``celery -A edgefleet worker -Q <queues>`` as a subprocess, SIGKILLed (with its children) at the end."""
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115
    cmd = [sys.executable, "-m", "celery", "-A", "edgefleet", "worker", "-Q", queues, "-n", f"{name}@%h"]
    cmd += ["--pool", pool, "--concurrency", "1", "-l", "info", "--without-heartbeat", "--without-mingle"]
    proc = subprocess.Popen(cmd, env=env, cwd=BASE_DIR, stdout=out, stderr=out, start_new_session=True)
    try:
        yield proc
    finally:
        for pid in [*descendants(proc.pid), proc.pid]:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=30)
        if log:
            out.close()


def _stat(pid: int) -> tuple[int, str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    return int(fields[1]), fields[0]  # ppid, state


def children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _stat(int(entry))
            if st and st[0] == pid and st[1] != "Z":
                out.append(int(entry))
    return out


def descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        for c in children(todo.pop()):
            found.append(c)
            todo.append(c)
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def sandbox_children() -> list[int]:
    """Every live sandbox child on the machine started from this checkout's tests (by command line)."""
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and "ota.sandbox_child" in cmdline(int(p))]


def peak_rss_mb(pid: int) -> float:
    """The process's high-water resident memory (VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmHWM for {pid}")


def alive(pid: int) -> bool:
    st = _stat(pid)
    return st is not None and st[1] != "Z"


def wait_until(cond: Callable[[], object], timeout: float, what: str, interval: float = 0.1) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
