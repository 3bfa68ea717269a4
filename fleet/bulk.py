"""Bulk changes to many devices at once (the management API's relabel), one transaction each.

Labels decide cohort membership, so a change must reach every cached device snapshot and the
manifest resolver: each changed device is forgotten (``fleet.auth.forget_device``) and the
generation is bumped ONCE after commit, not once per device as ``services.set_labels`` does for one.
"""

from collections.abc import Iterable
from typing import Any

from django.db import transaction

from fleet.auth import forget_device
from fleet.models import Device
from fleet.services import validate_labels

CHUNK = 1000


class BulkError(ValueError):
    """A refused bulk change; nothing was changed."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message, self.field = message, field


def relabel(
    device_ids: Iterable[Any], set_labels: dict[str, str], remove: Iterable[str], *, dry_run: bool = False
) -> dict[str, Any]:
    """Set and remove labels on every device in ``device_ids``; ``{matched, changed, examples}``."""
    ids = list(device_ids)
    remove = list(remove)
    changed: list[Device] = []
    examples: list[dict[str, Any]] = []
    with transaction.atomic():
        for start in range(0, len(ids), CHUNK):
            rows = Device.objects.select_for_update().filter(pk__in=ids[start : start + CHUNK]).order_by("pk")
            batch: list[Device] = []
            for d in rows.only("id", "name", "labels", "token_hash"):
                new = {**(d.labels or {}), **set_labels}
                for key in remove:
                    new.pop(key, None)
                try:
                    new = validate_labels(new)
                except ValueError as exc:
                    raise BulkError(f"device {d.pk}: {exc}", "set") from None
                if new != (d.labels or {}):
                    if len(examples) < 5:
                        examples.append({"id": str(d.pk), "name": d.name, "before": d.labels, "after": new})
                    d.labels = new
                    batch.append(d)
            if not dry_run and batch:
                Device.objects.bulk_update(batch, ["labels"])
            changed += batch
        if not dry_run and changed:
            from rollout.manifest import bump_generation

            for d in changed:
                forget_device(d.token_hash)
            transaction.on_commit(bump_generation)
    return {"matched": len(ids), "changed": len(changed), "dry_run": dry_run, "examples": examples}
