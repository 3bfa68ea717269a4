"""Start the whole system in one terminal: web, Celery workers and beat (and the demo, when there is one).

A small supervisor instead of honcho/supervisord: it needs no extra install, stops every child on
Ctrl-C, and stops them all when one dies so a half-running system never looks healthy.
"""

import os
import signal
import subprocess
import sys
import time

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandParser

from edgefleet import queues

DEMO_ENV = {
    "EDGEFLEET_POLL_INTERVAL": "5",
    "EDGEFLEET_TELEMETRY_WINDOW": "15",
    "EDGEFLEET_GATE_INTERVAL": "15",
    "EDGEFLEET_DP_DAILY_BUDGET": "8000",
    "EDGEFLEET_ROLLUP_SECONDS": "60",
}


def celery_worker(py: str, name: str, consumes: list[str], concurrency: int) -> list[str]:
    queue_args = ["-Q", ",".join(consumes), "-n", f"{name}@%h", "--concurrency", str(concurrency)]
    return [py, "-m", "celery", "-A", "edgefleet", "worker", "-l", "info", *queue_args]


def processes(py: str, host: str, port: int) -> dict[str, list[str]]:
    """Web, beat and two workers: one for the fleet's control jobs, one for validation and the rest.

    Separate workers, so a long validation or a backlog of uploads never delays a gate or a rollback
    (queues in edgefleet/queues.py).
    """
    return {
        "web": [
            py,
            "-m",
            "gunicorn",
            # Threads (and so the device API's load-shedding slots) from one place, and the
            # Prometheus multiprocess hooks: /metrics sums every worker.
            "-c",
            str(settings.BASE_DIR / "docker" / "gunicorn.conf.py"),
            "-b",
            f"{host}:{port}",
            "-w",
            "2",
            # No gunicorn access log: with the demo's 300 devices polling every 5 s it printed 60
            # lines a second and buried the story. EDGEFLEET_ACCESS_LOG=1 logs each request instead.
        ],
        "worker-control": celery_worker(py, "control", [queues.CONTROL], 2),
        "worker": celery_worker(py, "validation", [queues.VALIDATION, queues.DEFAULT], 1),
        "beat": [py, "-m", "celery", "-A", "edgefleet", "beat", "-l", "info"],
    }


class Command(BaseCommand):
    help = "Run web, workers and beat together (what `make run` calls)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", 8000)))
        parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
        parser.add_argument("--no-demo", action="store_true", help="do not create or start the demo fleet")

    def handle(self, port: int, host: str, no_demo: bool, **options: object) -> None:
        if not no_demo:
            # The demo compresses time so its story plays out in minutes: devices poll every 5 s and
            # report 15 s windows. The daily privacy budget is scaled by the same factor (20x).
            for name, value in DEMO_ENV.items():
                os.environ.setdefault(name, value)
        call_command("collectstatic", "--noinput", verbosity=0)
        py = sys.executable
        procs = processes(py, host, port)
        if not no_demo:
            demo = self.demo_command(py, f"http://{host}:{port}")
            if demo:
                procs["demo"] = demo
        os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", str(settings.DATA_DIR / "prometheus"))
        running = {name: subprocess.Popen(cmd) for name, cmd in procs.items()}
        db = settings.DATABASES["default"]["ENGINE"].rsplit(".", 1)[-1]
        self.stdout.write(
            self.style.SUCCESS(
                f"\nEdgeFleet is starting on http://{host}:{port}/  (database: {db}, "
                f"broker: {settings.CELERY_BROKER_URL.split('://')[0]})\n"
            )
        )
        stopping = False

        def stop(*_: object) -> None:
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        try:
            while not stopping:
                for name, proc in running.items():
                    if proc.poll() is not None:
                        self.stderr.write(f"{name} exited with {proc.returncode}; stopping the rest")
                        stopping = True
                time.sleep(0.5)
        finally:
            for proc in running.values():
                if proc.poll() is None:
                    proc.terminate()
            for proc in running.values():
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()

    def demo_command(self, py: str, url: str) -> list[str] | None:
        return [py, "manage.py", "demo", "--server", url]
