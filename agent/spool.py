"""Bounded on-disk spool (sqlite3) of events and reports waiting for the server's acknowledgement.

Items leave only when the server acknowledges their id (accepted or duplicate) or refuses them as
bad input; so a day-long outage or a restart loses nothing, and a replay after a lost answer is
harmless because the ids are the item's own. When full, the oldest items go first. Both losses are
counted (``dropped``, ``rejected``) and kept pending until the agent reports them in a
``spool_dropped`` event. A connection is opened per
operation: a simulator with thousands of devices holds no file handles between calls.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  kind TEXT NOT NULL,
  id TEXT NOT NULL UNIQUE,
  body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class Spool:
    def __init__(self, path: Path, max_items: int = 10_000) -> None:
        self.path = Path(path)
        self.max_items = max_items
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=30)
        try:
            db.executescript(_SCHEMA)
        finally:
            db.close()

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            db.execute("PRAGMA synchronous=FULL")
            db.execute("BEGIN IMMEDIATE")
            yield db
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        finally:
            db.close()

    @staticmethod
    def _bump(db: sqlite3.Connection, name: str, by: int) -> None:
        db.execute(
            "INSERT INTO counters(name, value) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = value + ?",
            (name, by, by),
        )

    def put(self, kind: str, item: dict[str, Any]) -> int:
        """Keep ``item`` (it must have an ``id``) until acknowledged; returns how many old items were dropped."""
        with self._lock, self._db() as db:
            db.execute(
                "INSERT OR IGNORE INTO items(kind, id, body) VALUES (?, ?, ?)", (kind, item["id"], json.dumps(item))
            )
            (n,) = db.execute("SELECT COUNT(*) FROM items").fetchone()
            excess = n - self.max_items
            if excess > 0:
                db.execute("DELETE FROM items WHERE seq IN (SELECT seq FROM items ORDER BY seq LIMIT ?)", (excess,))
                self._bump(db, "dropped", excess)
                self._bump(db, "dropped_pending", excess)
            return max(excess, 0)

    def peek(self, kind: str, limit: int) -> list[dict[str, Any]]:
        """The oldest ``limit`` items of ``kind``, still kept until ``ack``."""
        with self._lock, self._db() as db:
            rows = db.execute("SELECT body FROM items WHERE kind = ? ORDER BY seq LIMIT ?", (kind, limit)).fetchall()
        return [json.loads(b) for (b,) in rows]

    def ack(self, ids: list[str]) -> None:
        if not ids:
            return
        with self._lock, self._db() as db:
            db.executemany("DELETE FROM items WHERE id = ?", [(i,) for i in ids])

    def reject(self, ids: list[str]) -> None:
        """The server refused these for good: drop them and count it."""
        if not ids:
            return
        with self._lock, self._db() as db:
            n = 0
            for i in ids:
                n += db.execute("DELETE FROM items WHERE id = ?", (i,)).rowcount
            self._bump(db, "rejected", n)
            self._bump(db, "rejected_pending", n)

    def _take(self, name: str) -> int:
        with self._lock, self._db() as db:
            row = db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
            db.execute("UPDATE counters SET value = 0 WHERE name = ?", (name,))
        return int(row[0]) if row else 0

    def take_dropped(self) -> int:
        """Drops of a full spool not yet reported; resets the pending count (the caller reports them)."""
        return self._take("dropped_pending")

    def take_rejected(self) -> int:
        """Items the server refused, not yet reported; resets the pending count."""
        return self._take("rejected_pending")

    def counters(self) -> dict[str, int]:
        with self._lock, self._db() as db:
            rows = db.execute("SELECT name, value FROM counters").fetchall()
        return {k: int(v) for k, v in rows}

    def __len__(self) -> int:
        with self._lock, self._db() as db:
            return int(db.execute("SELECT COUNT(*) FROM items").fetchone()[0])

    def count(self, kind: str) -> int:
        with self._lock, self._db() as db:
            return int(db.execute("SELECT COUNT(*) FROM items WHERE kind = ?", (kind,)).fetchone()[0])
