"""Model files on disk: atomic install, current + previous kept, a state file that names the active one;
and the mark of the last manifest the agent accepted (its sequence: the floor for the next one).

Every change is "write a temp file, fsync it, rename it over, fsync the directory", so a crash or a
power cut at any moment leaves either the old state or the new one, never half of either. On start,
an active file that is missing or does not hash to what the state says is replaced by the previous
version, so the device always has a loadable model if it ever had one.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.verify import Accepted, sha256_file

log = logging.getLogger(__name__)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so readers see the old bytes or the new, never a mix."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


@dataclass(frozen=True)
class Installed:
    version: str
    sha256: str
    version_id: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "sha256": self.sha256, "version_id": self.version_id}

    @classmethod
    def from_json(cls, d: dict[str, Any] | None) -> Installed | None:
        return cls(d["version"], d["sha256"], d.get("version_id")) if d else None


class ModelStore:
    """``<data>/models/<sha256>.onnx`` files and ``<data>/state.json`` saying which is active."""

    def __init__(self, data_dir: Path) -> None:
        self.root = Path(data_dir)
        self.models_dir = self.root / "models"
        self.downloads_dir = self.root / "downloads"
        self.state_path = self.root / "state.json"
        for d in (self.models_dir, self.downloads_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.state: dict[str, dict[str, Any]] = self._load_state()

    # -- state ----------------------------------------------------------------------------------
    def _load_state(self) -> dict[str, dict[str, Any]]:
        for leftover in self.root.glob(".*.tmp"):
            leftover.unlink(missing_ok=True)  # a write that never reached its rename
        try:
            raw = json.loads(self.state_path.read_bytes())
            return dict(raw.get("models", {}))
        except FileNotFoundError:
            return {}
        except (ValueError, AttributeError) as e:
            log.error("state file unreadable (%s); starting from the files on disk", e)
            return {}

    def _save_state(self) -> None:
        atomic_write(self.state_path, json.dumps({"models": self.state}, sort_keys=True, indent=1).encode())

    def active(self, model: str) -> Installed | None:
        return Installed.from_json(self.state.get(model, {}).get("active"))

    def previous(self, model: str) -> Installed | None:
        return Installed.from_json(self.state.get(model, {}).get("previous"))

    def blocked(self, model: str) -> dict[str, str]:
        """sha256 -> why this device refuses to (re)install it (failed install, guard fallback)."""
        return dict(self.state.get(model, {}).get("blocked", {}))

    def block(self, model: str, sha256: str, reason: str) -> None:
        entry = self.state.setdefault(model, {})
        entry.setdefault("blocked", {})[sha256] = reason
        self._save_state()

    def path_for(self, sha256: str) -> Path:
        return self.models_dir / f"{sha256}.onnx"

    def part_for(self, sha256: str) -> Path:
        return self.downloads_dir / f"{sha256}.part"

    def has(self, sha256: str) -> bool:
        return self.path_for(sha256).exists()

    # -- install / activate ---------------------------------------------------------------------
    def install(self, verified_part: Path, sha256: str) -> Path:
        """Move a verified, fsynced download into place (rename + directory fsync)."""
        final = self.path_for(sha256)
        os.replace(verified_part, final)
        fsync_dir(self.models_dir)
        return final

    def activate(self, model: str, new: Installed) -> None:
        """Make ``new`` active; what was active becomes previous; files of neither are deleted after."""
        entry = self.state.setdefault(model, {})
        cur = self.active(model)
        if cur and cur.sha256 != new.sha256:
            entry["previous"] = cur.to_json()
        entry["active"] = new.to_json()
        if entry.get("previous", {}).get("sha256") == new.sha256:
            entry.pop("previous", None)
        self._save_state()
        self._collect()

    def _collect(self) -> None:
        keep = set()
        for entry in self.state.values():
            for role in ("active", "previous"):
                if entry.get(role):
                    keep.add(entry[role]["sha256"])
        for f in self.models_dir.glob("*.onnx"):
            if f.stem not in keep:
                f.unlink(missing_ok=True)

    def recover(self, check_hash: bool = True) -> list[str]:
        """Repair the state after a crash: an active file missing or corrupt falls back to previous.

        Returns a note per repair, for the agent to report as events.
        """
        notes = []
        changed = False
        for model, entry in self.state.items():
            act = Installed.from_json(entry.get("active"))
            if act and self._ok(act, check_hash):
                continue
            prev = Installed.from_json(entry.get("previous"))
            if prev and self._ok(prev, check_hash):
                notes.append(f"{model}: active {act.version if act else None} unusable, back on {prev.version}")
                if act:
                    entry.setdefault("blocked", {})[act.sha256] = "file missing or corrupt at start"
                entry["active"] = prev.to_json()
                entry.pop("previous", None)
            else:
                notes.append(f"{model}: no loadable version on disk")
                entry.pop("active", None)
                entry.pop("previous", None)
            changed = True
        if changed:
            self._save_state()
        return notes

    def _ok(self, inst: Installed, check_hash: bool) -> bool:
        p = self.path_for(inst.sha256)
        if not p.exists():
            return False
        return not check_hash or sha256_file(p) == inst.sha256


class ManifestMark:
    """``<data>/accepted.json``: the last accepted manifest's device id, sequence, digest and times.

    Written (atomically) before the agent acts on a manifest, so after a crash or restart an older
    manifest is still refused. A mark that cannot be read is reported and treated as absent: the
    agent then takes the sequence of its saved manifest, if that still verifies, as the floor.
    """

    def __init__(self, data_dir: Path) -> None:
        self.path = Path(data_dir) / "accepted.json"
        self.unreadable = False

    def load(self) -> Accepted | None:
        try:
            return Accepted.from_json(json.loads(self.path.read_bytes()))
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            log.error("accepted-manifest mark unreadable (%s); falling back to the saved manifest", e)
            self.unreadable = True
            return None

    def save(self, mark: Accepted) -> None:
        atomic_write(self.path, json.dumps(mark.to_json(), sort_keys=True).encode())
