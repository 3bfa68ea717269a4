"""Which build of a version a device gets, from its hardware and the builds' measured figures (pure).

The rule, in the order it is applied (``RULE`` is the same in words, shown in the campaign dry run):

1. A build is *eligible* when it is fp32, or it is released and agrees with fp32 on at least
   ``MIN_AGREEMENT`` of the compared rows (its worst output). fp16 is eligible only on a float
   accelerator (on a CPU it runs slower than fp32). A build without a measured agreement (made
   before agreement was measured) counts as eligible; when no variant has figures, a small device
   gets the int8 build, as it did then.
2. A device is *small* when it has less than ``SMALL_RAM_MB`` of RAM, no float accelerator, or not
   enough RAM for the fp32 build (the caller says).
3. A small device gets the smallest eligible build (ties: the lower server latency p50); any other
   device gets fp32.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

MIN_AGREEMENT = 0.99
SMALL_RAM_MB = 1024
FLOAT_ACCELERATORS = frozenset({"gpu", "cuda", "tensorrt", "jetson", "rocm", "directml", "coreml", "openvino-gpu"})
RULE = (
    f"Small devices (under {SMALL_RAM_MB} MiB RAM, no float accelerator, or too little RAM for fp32) get the "
    f"smallest released build that agrees with fp32 on at least {MIN_AGREEMENT:.0%} of the reference rows "
    "(ties: the faster on the server); fp16 only on a float accelerator; every other device gets fp32."
)


@dataclass(frozen=True)
class Figures:
    """What the rule knows of one build: its size, server latency p50 and agreement with fp32."""

    size: int
    p50: float | None = None
    agreement: float | None = None
    released: bool = True


def accelerator(hardware: Mapping[str, Any]) -> str:
    return str(hardware.get("accelerator") or "none").lower()


def is_small(hardware: Mapping[str, Any], fp32_fits: bool = True) -> bool:
    ram = hardware.get("ram_mb")
    small_ram = isinstance(ram, int | float) and not isinstance(ram, bool) and ram < SMALL_RAM_MB
    return small_ram or accelerator(hardware) not in FLOAT_ACCELERATORS or not fp32_fits


def eligible(kind: str, f: Figures, hardware: Mapping[str, Any]) -> bool:
    if kind == "fp32":
        return True
    if not f.released or (f.agreement is not None and f.agreement < MIN_AGREEMENT):
        return False
    return kind != "fp16" or accelerator(hardware) in FLOAT_ACCELERATORS


def choose(hardware: Mapping[str, Any], builds: Mapping[str, Figures], fp32_fits: bool = True) -> tuple[str, str]:
    """(build kind, why) for one device; ``builds`` holds fp32 and the version's variants."""
    if not builds:
        raise ValueError("a version has at least its fp32 build")
    if not is_small(hardware, fp32_fits):
        if "fp32" in builds:
            return "fp32", "not a small device: fp32"
        return sorted(builds)[0], "not a small device, no fp32 build: the first build"
    ok = {k: f for k, f in builds.items() if eligible(k, f, hardware)}
    if not ok:
        return sorted(builds)[0], "small device, no eligible build: the first build"
    if "int8" in ok and all(f.agreement is None for k, f in ok.items() if k != "fp32"):
        return "int8", "small device, no measured figures: the int8 build (the rule before figures)"
    kind = min(ok, key=lambda k: (ok[k].size, ok[k].p50 if ok[k].p50 is not None else float("inf"), k))
    return kind, f"small device: the smallest eligible build ({ok[kind].size:,} bytes)"
