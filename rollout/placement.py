"""Where a device stands in a campaign, and whether it can run the version at all (pure, no Django).

Everything here is a function of plain values so the manifest resolver, the dry run, the gate job
and the tests all compute the same answer without touching the database:

- ``bucket(device_id, campaign_id)``: a stable number in ``[0, 10000)``: the device's own key (a hash
  of its id alone, ``device_key``) turned by the campaign's offset (a hash of the campaign id), so the
  same devices are not always the first guinea pigs, and the devices a bucket range reaches are a key
  range: counts kept per key (``fleet.kept``) answer any campaign's waves without reading devices.
  Campaigns made before that use ``legacy_bucket`` (a hash of device and campaign together).
- ``coverage(waves, k)``: wave ``k`` covers every bucket below ``percent * 100``. Percentages only
  grow, so waves only ever add devices and no device flips back and forth while a campaign runs.
- ``incompatibility(hardware, requirements)``: why a device cannot run a version (or ``None``).
  Unknown hardware counts as incompatible: a version is never pushed to a device we cannot vouch for.
- ``choose_variant``: the int8 build for small devices when the version has one.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rollout import variant_rule

BUCKETS = 10_000

# onnxruntime release -> highest ONNX opset it implements (onnxruntime "compatibility" table).
# A version between two rows gets the earlier row's opset, one newer than the last row at least the last
# row's: never more than it is known to run. The server's own runtime must be a row (a device on the same
# runtime runs every model the server validates): tests/test_edges_placement.py checks that row against
# what the installed onnxruntime loads (ota.opsets.max_supported_opset).
ORT_MAX_OPSET: list[tuple[tuple[int, int], int]] = [
    ((1, 0), 10),
    ((1, 1), 11),
    ((1, 3), 12),
    ((1, 6), 13),
    ((1, 8), 14),
    ((1, 9), 15),
    ((1, 11), 16),
    ((1, 12), 17),
    ((1, 14), 18),
    ((1, 15), 19),
    ((1, 17), 20),
    ((1, 18), 21),
    ((1, 20), 21),
    ((1, 21), 22),
    ((1, 22), 23),
    ((1, 32), 28),
]

# Resident memory of a session is roughly the weights times this, plus the runtime itself.
RAM_FACTOR = 3.0
RUNTIME_RAM_MB = 64.0
# Devices below this much RAM get the int8 build whenever the version has one.
SMALL_DEVICE_RAM_MB = 1024
# The agent keeps the previous artifact next to the new one: the download needs this much headroom.
STORAGE_FACTOR = 1.2

MIB = 1024 * 1024


KEYED = "key"  # bucket = (device_key + campaign_offset) mod BUCKETS
LEGACY = "sha256"  # bucket = sha256("device:campaign"): campaigns made before kept counts


def _hash(text: str) -> int:
    """sha256 of the text, first 8 bytes as an unsigned integer, mod BUCKETS (SQL: ``fleet_device_key``)."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") % BUCKETS


def device_key(device_id: object) -> int:
    """The device's own key in ``[0, 10000)``: a hash of its id, the same for every campaign."""
    return _hash(str(device_id))


def campaign_offset(campaign_id: object) -> int:
    """How far a campaign turns every device's key: a hash of the campaign id."""
    return _hash(f"campaign:{campaign_id}")


def bucket(device_id: object, campaign_id: object) -> int:
    """Stable bucket of a device in a campaign: its key turned by the campaign's offset, mod 10000."""
    return (device_key(device_id) + campaign_offset(campaign_id)) % BUCKETS


def legacy_bucket(device_id: object, campaign_id: object) -> int:
    """The bucket of campaigns made before kept counts: sha256 of "device:campaign", mod 10000."""
    return _hash(f"{device_id}:{campaign_id}")


def bucket_for(device_id: object, campaign_id: object, scheme: str = KEYED) -> int:
    """The bucket under the campaign's scheme (``Campaign.bucketing``)."""
    return legacy_bucket(device_id, campaign_id) if scheme == LEGACY else bucket(device_id, campaign_id)


def key_ranges(offset: int, lo: int, hi: int) -> list[tuple[int, int]]:
    """The device keys whose bucket is in ``[lo, hi)`` under ``offset``: one or two ranges ``[a, b)``.

    bucket = (key + offset) mod N, so key = (bucket - offset) mod N: a range of buckets is a range
    of keys, cut in two where it wraps past N.
    """
    if hi <= lo:
        return []
    a = (lo - offset) % BUCKETS
    b = a + (hi - lo)
    if b <= BUCKETS:
        return [(a, b)]
    return [(a, BUCKETS), (0, b - BUCKETS)]


def percent_to_buckets(percent: float) -> int:
    """How many buckets a percentage covers (0..10000), rounded so 100% is every bucket."""
    return max(0, min(BUCKETS, round(float(percent) * BUCKETS / 100)))


def coverage(waves: Sequence[Mapping[str, Any]], wave_index: int) -> int:
    """Buckets covered once wave ``wave_index`` has started (0 before the first wave).

    Uses the largest percentage seen up to that wave, so even a badly ordered list never shrinks.
    """
    if wave_index < 0 or not waves:
        return 0
    upto = waves[: min(wave_index, len(waves) - 1) + 1]
    return max(percent_to_buckets(w.get("percent", 0)) for w in upto)


def is_targeted(device_id: object, campaign_id: object, covered_buckets: int) -> bool:
    return bucket(device_id, campaign_id) < covered_buckets


def wave_of(bucket_value: int, waves: Sequence[Mapping[str, Any]]) -> int | None:
    """The first wave that reaches a bucket, or None if no wave does."""
    for i in range(len(waves)):
        if bucket_value < coverage(waves, i):
            return i
    return None


def validate_waves(waves: Sequence[Mapping[str, Any]]) -> list[str]:
    """Problems with a wave plan, for a person. Empty means the plan is sound.

    Rules: at least one wave; percentages strictly increase within (0, 100] and the last is 100 (a
    completed campaign becomes a release for the whole cohort, so the plan must end there); soak
    minutes and device counts are non-negative numbers.
    """
    errors: list[str] = []
    if not waves:
        return ["Give at least one wave."]
    previous = 0.0
    for i, w in enumerate(waves, start=1):
        try:
            p = float(w.get("percent"))
        except (TypeError, ValueError):
            errors.append(f"Wave {i}: percent must be a number.")
            continue
        if not 0 < p <= 100:
            errors.append(f"Wave {i}: percent must be above 0 and at most 100.")
        elif p <= previous:
            errors.append(f"Wave {i}: percent must be larger than the wave before ({previous:g}%).")
        previous = max(previous, p)
        for key in ("min_soak_minutes", "min_devices"):
            try:
                if float(w.get(key, 0)) < 0:
                    errors.append(f"Wave {i}: {key} cannot be negative.")
            except (TypeError, ValueError):
                errors.append(f"Wave {i}: {key} must be a number.")
    if not errors and previous != 100:
        errors.append("The last wave must reach 100% of the cohort.")
    return errors


def parse_version(text: object) -> tuple[int, int] | None:
    """'1.20.1' -> (1, 20); anything unreadable -> None."""
    m = re.match(r"^\s*v?(\d+)\.(\d+)", str(text or ""))
    return (int(m.group(1)), int(m.group(2))) if m else None


def max_opset(ort_version: object) -> int | None:
    """Highest opset an onnxruntime version runs, from ``ORT_MAX_OPSET``; None if unreadable."""
    v = parse_version(ort_version)
    if v is None:
        return None
    best: int | None = None
    for since, opset in ORT_MAX_OPSET:
        if v >= since:
            best = opset
    return best


@dataclass(frozen=True)
class Requirements:
    """What a version needs from a device; built from the registry's report and the campaign."""

    opset: int | None = None
    size_bytes: int = 0
    int8_size_bytes: int | None = None
    provider: str | None = None
    min_storage_mb: float = 0.0
    builds: tuple[tuple[str, variant_rule.Figures], ...] = ()  # fp32 and variants, measured (variant_rule)


def _ram_needed_mb(size_bytes: int) -> float:
    return RUNTIME_RAM_MB + RAM_FACTOR * size_bytes / MIB


def _number(value: object) -> float | None:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def choose_variant(hardware: Mapping[str, Any], req: Requirements) -> str:
    """A small device (or one that fp32 would not fit) gets a smaller build when the version has one.

    With measured ``builds`` the smallest eligible one (``rollout.variant_rule``); without, the int8 build.
    """
    if req.int8_size_bytes is None and len(req.builds) < 2:
        return "fp32"
    ram = _number(hardware.get("ram_mb"))
    if ram is None:
        return "fp32"
    if ram < SMALL_DEVICE_RAM_MB or ram < _ram_needed_mb(req.size_bytes):
        if len(req.builds) >= 2:
            return variant_rule.choose(hardware, dict(req.builds), fp32_fits=False)[0]
        return "int8"
    return "fp32"


def build_size(req: Requirements, kind: str) -> int:
    """The download size of the build ``choose_variant`` picked."""
    sizes = {k: f.size for k, f in req.builds}
    if kind in sizes:
        return sizes[kind]
    return (req.int8_size_bytes if kind == "int8" else req.size_bytes) or 0


def incompatibility(hardware: Mapping[str, Any], req: Requirements) -> str | None:
    """Why this device cannot run the version, as a short stable reason (a dry-run row), or None.

    Reasons: ``ram`` (not enough memory even for the variant it would get), ``ort_version`` (its
    onnxruntime is too old for the model's opset, or unknown), ``provider`` (lacks a required
    execution provider), ``storage`` (no room for the download next to the previous version).
    """
    hardware = hardware or {}
    size = build_size(req, choose_variant(hardware, req))
    ram = _number(hardware.get("ram_mb"))
    if ram is None or ram < _ram_needed_mb(size):
        return "ram"
    if req.opset is not None:
        top = max_opset(hardware.get("ort_version"))
        if top is None or top < req.opset:
            return "ort_version"
    if req.provider:
        providers = hardware.get("providers") or []
        if not isinstance(providers, (list, tuple)) or req.provider not in providers:
            return "provider"
    free = _number(hardware.get("storage_free_mb"))
    if free is None or free < max(req.min_storage_mb, STORAGE_FACTOR * size / MIB):
        return "storage"
    return None


REASON_TEXT: dict[str, str] = {
    "ram": "not enough RAM for the model",
    "ort_version": "onnxruntime too old for the model's opset (or unknown)",
    "provider": "missing the required execution provider",
    "storage": "not enough free storage for the download",
}
