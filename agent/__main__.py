"""Command line: ``python -m agent run …`` and ``python -m agent status --data-dir …``."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from pathlib import Path

from agent.config import AgentConfig, load_config


def _labels(pairs: list[str]) -> dict[str, str]:
    out = {}
    for p in pairs:
        k, sep, v = p.partition("=")
        if not sep or not k:
            raise SystemExit(f"--label wants key=value, got {p!r}")
        out[k] = v
    return out


def _config(args: argparse.Namespace) -> AgentConfig:
    labels = _labels(args.label) or None
    if args.config:
        return load_config(
            args.config,
            server=args.server,
            enrollment_key=args.enrollment_key,
            data_dir=args.data_dir,
            name=args.name,
            labels=labels,
        )
    missing = [f for f in ("server", "enrollment_key", "data_dir") if not getattr(args, f)]
    if missing:
        flags = ", ".join("--" + m.replace("_", "-") for m in missing)
        raise SystemExit(f"without --config, these are needed: {flags}")
    return AgentConfig(
        server=args.server,
        enrollment_key=args.enrollment_key,
        data_dir=Path(args.data_dir),
        name=args.name or "",
        labels=labels or {},
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m agent", description="EdgeFleet device agent")
    sub = ap.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="enroll if needed, then poll, update and report until stopped")
    run.add_argument("--config", help="a .toml or .json file; flags override it")
    run.add_argument("--server")
    run.add_argument("--enrollment-key")
    run.add_argument("--data-dir")
    run.add_argument("--name")
    run.add_argument("--label", action="append", default=[], metavar="K=V")
    run.add_argument("-v", "--verbose", action="store_true")
    st = sub.add_parser("status", help="what is installed and waiting in the spool (no network)")
    st.add_argument("--data-dir", required=True)
    args = ap.parse_args(argv)

    if args.cmd == "status":
        from agent.spool import Spool
        from agent.store import ModelStore

        data = Path(args.data_dir)
        if not data.is_dir():
            raise SystemExit(f"{data} is not an agent data directory")
        identity = json.loads((data / "identity.json").read_text()) if (data / "identity.json").exists() else {}
        store = ModelStore(data)
        spool = Spool(data / "spool.sqlite3")
        print(
            json.dumps(
                {
                    "device_id": identity.get("device_id"),
                    "server": identity.get("server"),
                    "models": store.state,
                    "spool": {"events": spool.count("event"), "reports": spool.count("report")},
                    "spool_counters": spool.counters(),
                },
                indent=2,
            )
        )
        return 0

    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(message)s")
    from agent.agent import Agent

    agent = Agent(_config(args))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    agent.run(stop)
    agent.shutdown()  # windows that are over go to the spool; the open one is resumed at the next start
    return 0


if __name__ == "__main__":
    sys.exit(main())
