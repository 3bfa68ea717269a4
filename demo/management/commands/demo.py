"""Run the demo: a simulated fleet of a few hundred devices and the story of a rollout that fails."""

import os
import threading
import time
from pathlib import Path

import requests
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from demo import story


class Command(BaseCommand):
    help = "Start the demo fleet and its story against a running server (what `make run` starts)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--server", default=os.environ.get("EDGEFLEET_URL", "http://127.0.0.1:8000"))
        parser.add_argument("--devices", type=int, default=int(os.environ.get("EDGEFLEET_DEMO_DEVICES", 300)))
        parser.add_argument("--restart", action="store_true", help="ask a running demo to replay its story")

    def handle(self, server: str, devices: int, restart: bool, **options: object) -> None:
        if restart:
            story.request_restart()
            self.stdout.write("Asked the running demo to replay its story.")
            return
        from agent.simulate import SimOptions, run_simulation

        self.wait_for_server(server)
        data_dir = Path(settings.DATA_DIR) / "demo"
        director = story.Director(server, data_dir, devices, knobs={})
        key, pipeline = director.setup()
        self.stdout.write(
            self.style.SUCCESS(
                f"\n  EdgeFleet demo: open {server}/ and log in as '{story.USERNAME}' / '{story.PASSWORD}'\n"
            )
        )
        poll = float(settings.EDGEFLEET_POLL_INTERVAL)
        window = float(settings.EDGEFLEET_TELEMETRY_WINDOW)
        common = dict(
            server=server,
            enrollment_key=key,
            duration=10 * 365 * 86400,
            poll_interval=poll,
            window_seconds=window,
            summary_every=60,
            rows_per_step=64,  # enough inferences per window that latency stands clear of the DP noise
            workers=4,
            quiet=True,
        )
        apac = max(25, devices // 5)
        # Most of the fleet: v2 misbehaves on it once the director says so.
        main = SimOptions(
            devices=devices - apac,
            scenario="regression",
            regress_version=None,
            mix="region=eu:0.6,us:0.4;hw=rpi4:0.5,jetson:0.2,x86:0.3",
            data_dir=str(data_dir / "devices-main"),
            seed=1,
            **common,
        )
        # The apac cohort: its inputs drift once the director says so.
        drift = SimOptions(
            devices=apac,
            scenario="drift",
            fraction=1.0,
            drift_features=[0],
            drift_shift=0.0,
            mix="region=apac:1;hw=rpi4:0.5,jetson:0.2,x86:0.3",
            data_dir=str(data_dir / "devices-apac"),
            seed=2,
            **common,
        )

        def calm() -> None:
            main.regress_version, drift.drift_shift = None, 0.0

        def trouble() -> None:
            main.regress_version, drift.drift_shift = "v2", 1.5

        director.knobs.update(calm=calm, trouble=trouble)
        for opts in (main, drift):
            threading.Thread(target=run_simulation, args=(opts,), daemon=True).start()
        try:
            director.run(pipeline)
        except KeyboardInterrupt:
            director.stop.set()

    def wait_for_server(self, server: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{server}/healthz", timeout=2).ok:
                    return
            except requests.RequestException:
                pass
            time.sleep(1)
        raise CommandError(f"no server answered at {server} within {timeout:.0f} s")
