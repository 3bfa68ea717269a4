"""Each device's manifest sequence and validity, held in the database (docs/protocol.md, "Freshness").

The sequence is a hybrid logical value kept per device in ``IssuedManifest``:
``sequence = max(previous + 1, server time in ms)``. The ``+ 1`` makes it strictly increase for the
device whatever the clocks do; the time floor keeps it increasing even if the row is lost (a
database restored from an older backup), as long as the server's clock has not gone back.

A new sequence is claimed only when a manifest has to be signed anew: what it says changed, it is
within ``EDGEFLEET_MANIFEST_REFRESH`` of expiry, or the device has no row. The claim is one upsert
and deterministic: any process that builds the same content for the device meanwhile gets the same
``(sequence, issued_at, expires_at)``, so the same bytes and (Ed25519 being deterministic) the same
signature and ETag: two web processes, a restart or a flushed Redis never hand a device two
different manifests for one state, and a rebuild after a flush still answers ``304``.

Older data cannot overwrite newer: every claim carries the number of the generation its resolution
data was loaded at (``ManifestGeneration``, bumped with every change and read before the data), and
a row built from a newer generation is not replaced by a claim from an older one; the caller then
reloads its data and builds again. So a process that has not yet heard of a rollback cannot hand a
device a higher-numbered manifest for the state before it.

The poll path (fleet/manifests.py) consults this only when it must sign: a ready manifest is served
from memory or Redis with no query.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from django.conf import settings
from django.db import IntegrityError, connection, transaction

EPOCH = "1970-01-01T00:00:00Z"


@dataclass(frozen=True, slots=True)
class Fresh:
    """A manifest's place in its device's order: sequence, validity (Unix seconds), content digest."""

    sequence: int
    issued_at: int
    expires_at: int
    digest: str
    generation: int

    @property
    def refresh_at(self) -> int:
        """From this time on the manifest is re-signed instead of served (a margin before expiry)."""
        return self.expires_at - refresh_margin()


def ttl() -> int:
    return max(60, int(settings.EDGEFLEET_MANIFEST_TTL))


def refresh_margin() -> int:
    """Re-sign this long before expiry; at most half the lifetime, so a manifest is served for a while."""
    return max(0, min(int(settings.EDGEFLEET_MANIFEST_REFRESH), ttl() // 2))


def utc(ts: int) -> str:
    """Unix seconds as the protocol's time form, ``YYYY-MM-DDTHH:MM:SSZ``."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def now() -> float:
    """The server's clock (tests move it)."""
    return time.time()


# ---------------------------------------------------------------- the generation number


def _table(model: type) -> str:
    return connection.ops.quote_name(model._meta.db_table)


def bump_generation_number() -> int:
    """Count one more change to what devices are told (with every generation bump)."""
    from rollout.models import ManifestGeneration

    with connection.cursor() as cur:
        cur.execute(
            f"INSERT INTO {_table(ManifestGeneration)} AS g (id, number) VALUES (1, 1) "
            "ON CONFLICT (id) DO UPDATE SET number = g.number + 1 RETURNING number"
        )
        return int(cur.fetchone()[0])


def generation_number() -> int:
    """The current count; read before the resolution data it stands for."""
    from rollout.models import ManifestGeneration

    return ManifestGeneration.objects.filter(pk=1).values_list("number", flat=True).first() or 0


# ---------------------------------------------------------------- claiming a sequence

_CLAIM = """
INSERT INTO {table} AS t (device_id, sequence, digest, generation, issued_at, expires_at)
SELECT %s, %s, %s, %s, %s, %s WHERE EXISTS (SELECT 1 FROM {devices} WHERE id = %s)
ON CONFLICT (device_id) DO UPDATE SET
  sequence = CASE WHEN {renew} THEN {greatest}(t.sequence + 1, excluded.sequence) ELSE t.sequence END,
  digest = CASE WHEN {renew} THEN excluded.digest ELSE t.digest END,
  generation = CASE WHEN {renew} THEN excluded.generation ELSE t.generation END,
  issued_at = CASE WHEN {renew} THEN excluded.issued_at ELSE t.issued_at END,
  expires_at = CASE WHEN {renew} THEN excluded.expires_at ELSE t.expires_at END
RETURNING sequence, digest, generation, issued_at, expires_at
"""
# Renew the row when the claim is not from older data and the content changed or expiry is near.
_RENEW = "(t.generation <= excluded.generation AND (t.digest <> excluded.digest OR t.expires_at <= {cutoff}))"


def claim(device_id: uuid.UUID, digest: str, generation: int, at: float | None = None) -> Fresh | None:
    """The sequence and validity for a manifest saying ``digest`` (one statement).

    The device's row when it already says ``digest`` and is not near expiry; a renewed row otherwise.
    None when the row was built from a newer generation than ``generation`` and says something else:
    the caller's data is older than what the device was last told (reload and build again).
    Raises LookupError when the device no longer exists (its token may still be cached).
    """
    from rollout.models import IssuedManifest

    t = int(at if at is not None else now())
    margin = refresh_margin()
    from fleet.models import Device

    sql = _CLAIM.format(
        table=_table(IssuedManifest),
        devices=_table(Device),
        renew=_RENEW.format(cutoff=f"excluded.issued_at + {int(margin)}"),
        greatest="GREATEST" if connection.vendor == "postgresql" else "MAX",
    )
    key = IssuedManifest._meta.get_field("device").target_field.get_db_prep_value(device_id, connection)
    floor = int(t * 1000)
    params = [key, floor, digest, int(generation), t, t + ttl(), key]
    try:
        row = _execute(sql, params, floor)
    except IntegrityError as e:  # the device row went while we wrote
        raise LookupError(f"device {device_id} does not exist") from e
    if row is None:  # no device row: nothing inserted
        raise LookupError(f"device {device_id} does not exist")
    fresh = Fresh(int(row[0]), int(row[3]), int(row[4]), str(row[1]), int(row[2]))
    return fresh if fresh.digest == digest else None


def _execute(sql: str, params: list, floor: int) -> tuple | None:
    """Run the claim; on PostgreSQL outside a transaction, commit without waiting for the WAL flush
    when the sequence is the clock's (``floor``).

    Waiting for the flush was most of a claim's time (4-6 ms against 1.5 ms on a busy machine). It
    is safe to skip because of the time floor: a claim lost in a database crash is followed by one
    made later, whose ``server time in ms`` is higher than the lost sequence. A sequence that ran
    ahead of the clock (claims within one millisecond, or the clock went back) is not covered by
    that, so then the commit waits as usual. Inside a caller's transaction the commit is the caller's.
    """
    if connection.in_atomic_block or connection.vendor != "postgresql":
        with transaction.atomic(), connection.cursor() as cur:  # a savepoint: a failure leaves the caller's intact
            cur.execute(sql, params)
            return cur.fetchone()
    with transaction.atomic(), connection.cursor() as cur:
        cur.execute("SET LOCAL synchronous_commit = off;" + sql, params)
        row = cur.fetchone()
        if row is not None and int(row[0]) > floor:
            cur.execute("SET LOCAL synchronous_commit = on")
        return row
