"""Agent configuration from a TOML/JSON file or flags, plus hardware auto-detection.

The hardware profile is sent at enrollment so operators can build cohorts (``hw``, ``ram_mb``);
the simulator overrides it to make a varied fleet on one machine.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class AgentConfig:
    server: str
    enrollment_key: str
    data_dir: Path
    name: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    hardware: dict[str, Any] | None = None  # None: detect
    request_timeout: float = 15.0
    backoff_base: float = 1.0
    backoff_cap: float = 300.0
    spool_max_items: int = 10_000
    # Overrides for tests and the simulator (time compression); None: what the manifest says.
    poll_interval: float | None = None
    window_seconds: float | None = None
    ort_threads: int = 1
    # Seconds the device's clock may run ahead of the server's before a manifest reads as expired.
    clock_skew: float = 3600.0
    # Install conditions the host reports when it cannot say better (agent/conditions.py): e.g.
    # {"power": "external", "network": "unmetered", "idle": true}. None: none reported.
    conditions: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir)
        self.server = self.server.rstrip("/")


_FIELDS = set(AgentConfig.__dataclass_fields__)


def load_config(path: str | Path, **overrides: Any) -> AgentConfig:
    """Read a ``.toml`` or ``.json`` file; keyword overrides (from flags) win when not None."""
    p = Path(path)
    raw = p.read_bytes()
    data: dict[str, Any] = tomllib.loads(raw.decode()) if p.suffix == ".toml" else json.loads(raw)
    unknown = set(data) - _FIELDS
    if unknown:
        raise ValueError(f"unknown config keys: {sorted(unknown)}")
    data.update({k: v for k, v in overrides.items() if v is not None})
    return AgentConfig(**data)


def _ram_mb() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    except OSError:
        pass
    return 0


def detect_hardware(data_dir: Path) -> dict[str, Any]:
    """What this board is: arch, cores, RAM, onnxruntime version and providers, free storage."""
    import onnxruntime as ort

    data_dir.mkdir(parents=True, exist_ok=True)
    return {
        "arch": platform.machine() or "unknown",
        "cores": os.cpu_count() or 1,
        "ram_mb": _ram_mb(),
        "accelerator": "none",
        "ort_version": ort.__version__,
        "providers": list(ort.get_available_providers()),
        "storage_free_mb": shutil.disk_usage(data_dir).free // (1024 * 1024),
    }
