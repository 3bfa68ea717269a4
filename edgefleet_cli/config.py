"""Where the CLI finds the server and its token: flags, then the environment, then a config file.

``EDGEFLEET_URL`` / ``EDGEFLEET_TOKEN``, or ``~/.config/edgefleet/config.toml`` (``$XDG_CONFIG_HOME``
honoured; ``EDGEFLEET_CONFIG`` names another file)::

    url = "https://fleet.example.com"
    token = "efa_..."
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path


class ConfigError(Exception):
    pass


@dataclass
class Config:
    url: str
    token: str


def config_path() -> Path:
    if os.environ.get("EDGEFLEET_CONFIG"):
        return Path(os.environ["EDGEFLEET_CONFIG"])
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "edgefleet" / "config.toml"


def load(url: str | None = None, token: str | None = None) -> Config:
    file: dict = {}
    path = config_path()
    if path.exists():
        try:
            file = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read {path}: {exc}") from None
    url = url or os.environ.get("EDGEFLEET_URL") or file.get("url") or ""
    token = token or os.environ.get("EDGEFLEET_TOKEN") or file.get("token") or ""
    if not url:
        raise ConfigError(f"no server: set EDGEFLEET_URL or url in {path}")
    if not token:
        raise ConfigError(f"no API token: set EDGEFLEET_TOKEN or token in {path} (make one on /accounts/tokens/)")
    return Config(url.rstrip("/"), token)
