"""The presence flush at fleet scale: one COPY + UPDATE per round, no last seen lost under load or overlap."""

import json
import os
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from django.db import OperationalError, connection

from fleet import presence
from fleet.models import Device
from fleet.presence import DIRTY, hash_key, redis_client
from tests import factories

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def unbuffered(settings) -> None:
    """Each poll goes to Redis at once (what the per-process thread does each second)."""
    settings.EDGEFLEET_PRESENCE_BUFFER_SECONDS = 0


@pytest.mark.django_db
def test_a_flush_under_load_loses_no_last_seen(unbuffered: None) -> None:
    """Polls keep landing while rounds of the flush run (small rounds, so many interleave): once the
    polls stop and one more flush runs, every device's last seen is its very last poll."""
    devices = [d for d, _ in (factories.device(name=f"load-{i}") for i in range(200))]
    last: dict[str, datetime] = {}
    stop = threading.Event()

    def poll_forever() -> None:
        step = 0
        while not stop.is_set():
            step += 1
            for i, d in enumerate(devices):
                if (i + step) % 3 == 0:  # a third of the fleet each sweep, a different third each time
                    at = T0 + timedelta(milliseconds=step * 10 + i % 7)
                    presence.touch(d.id, {"fraud": f"v{step}"}, now=at)
                    last[str(d.id)] = at

    poller = threading.Thread(target=poll_forever)
    poller.start()
    rounds, written = 0, 0
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        written += presence.flush(batch=37)
        rounds += 1
    stop.set()
    poller.join()
    presence.drain()
    presence.flush(batch=37)

    assert rounds > 5 and written > len(devices)  # the flush really ran while polls landed
    assert redis_client().scard(DIRTY) == 0
    got = dict(Device.objects.filter(pk__in=[d.id for d in devices]).values_list("id", "last_seen_at"))
    assert {str(k): v for k, v in got.items() if v is not None} == last


@pytest.mark.django_db
@pytest.mark.parametrize("bulk", [True, False], ids=["copy", "row-by-row"])
def test_an_older_entry_never_goes_over_a_newer_one(bulk: bool) -> None:
    """Two flushes that overlap (a slow one and the next beat) may write out of order: the database
    keeps the newest last seen and the state that came with it; an equal time is written again."""
    newer, _ = factories.device(name="newer")
    fresh, _ = factories.device(name="fresh")
    Device.objects.filter(pk=newer.pk).update(last_seen_at=T0, installed={"fraud": "v2"})
    presence.store(
        [
            (newer.id, T0 - timedelta(seconds=5), json.dumps({"fraud": "v1"}), json.dumps({"power": "battery"})),
            (fresh.id, T0, None, None),
        ],
        bulk=bulk,
    )
    newer.refresh_from_db()
    fresh.refresh_from_db()
    assert (newer.last_seen_at, newer.installed, newer.conditions) == (T0, {"fraud": "v2"}, {})
    assert (fresh.last_seen_at, fresh.installed, fresh.conditions) == (T0, {}, {})  # nothing reported: none written

    cond = {"power": "external", "network": "unmetered"}
    presence.store([(newer.id, T0, json.dumps({"fraud": "v3"}), json.dumps(cond))], bulk=bulk)
    newer.refresh_from_db()
    assert (newer.last_seen_at, newer.installed, newer.conditions) == (T0, {"fraud": "v3"}, cond)
    presence.store([(newer.id, T0, None, None)], bulk=bulk)  # a poll that said nothing keeps both
    newer.refresh_from_db()
    assert (newer.installed, newer.conditions) == ({"fraud": "v3"}, cond)


@pytest.mark.django_db
def test_an_empty_dirty_set_writes_nothing() -> None:
    assert presence.flush() == 0


@pytest.mark.django_db
def test_when_the_database_is_away_the_round_goes_back_to_the_dirty_set() -> None:
    d, _ = factories.device(name="kept")
    r = redis_client()
    r.hset(hash_key(str(d.id)), mapping={"seen": T0.timestamp()})
    r.sadd(DIRTY, str(d.id))

    def refuse(execute, sql, params, many, context):  # the database going away mid-flush
        raise OperationalError("server closed the connection unexpectedly")

    with connection.execute_wrapper(refuse), pytest.raises(OperationalError):
        presence.flush()
    assert r.sismember(DIRTY, str(d.id))
    assert presence.flush() == 1
    d.refresh_from_db()
    assert d.last_seen_at == T0


def test_the_embedded_mode_flushes_on_sqlite(tmp_path: Path) -> None:
    """SQLite (``make run``) has no COPY: the same flush writes row by row there, newest wins."""
    from django.conf import settings

    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "EDGEFLEET_", "DJANGO_SETTINGS"))}
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "edgefleet.settings",
            "EDGEFLEET_DATA_DIR": str(tmp_path),
            "REDIS_URL": settings.REDIS_URL,
        }
    )
    migrate = subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert migrate.returncode == 0, migrate.stderr
    code = """
import json, django
django.setup()
from datetime import UTC, datetime
from django.db import connection
from fleet import presence
from fleet.models import Device
assert connection.vendor == "sqlite"
r = presence.redis_client()
r.delete(presence.DIRTY)
old = Device.objects.create(name="old", token_hash="a" * 64, last_seen_at=datetime(2030, 1, 1, tzinfo=UTC))
new = Device.objects.create(name="new", token_hash="b" * 64)
for d in (old, new):
    r.hset(presence.hash_key(str(d.id)), mapping={"seen": 1.8e9, "state": json.dumps({"fraud": "v1"})})
    r.sadd(presence.DIRTY, str(d.id))
n = presence.flush()
old.refresh_from_db(); new.refresh_from_db()
print(json.dumps([n, old.last_seen_at.isoformat(), old.installed, new.last_seen_at.isoformat(), new.installed]))
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    n, old_seen, old_state, new_seen, new_state = json.loads(done.stdout.strip().splitlines()[-1])
    assert n == 2
    assert (old_seen, old_state) == ("2030-01-01T00:00:00+00:00", {})
    assert (new_seen, new_state) == (datetime.fromtimestamp(1.8e9, UTC).isoformat(), {"fraud": "v1"})
