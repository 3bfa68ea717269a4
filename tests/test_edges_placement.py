"""Edges of placement: bucket/wave boundaries, equal wave percentages, devices exactly at a limit, and
the onnxruntime → opset table against the installed runtime's own answer.

Written from mutation testing (`make mutation`): each test pins a behaviour a one-token change to
``rollout/placement.py`` would otherwise alter silently.
"""

import onnxruntime
import pytest

from ota.opsets import max_supported_opset
from rollout import placement
from rollout.placement import Requirements

MIB = 1024 * 1024
HW = {
    "ram_mb": 4096,
    "ort_version": "1.20.0",
    "providers": ["CPUExecutionProvider"],
    "storage_free_mb": 2048,
}


def test_policy_constants() -> None:
    """Changing one of these moves devices between waves or variants: a change must be deliberate."""
    assert placement.BUCKETS == 10_000
    assert placement.RAM_FACTOR == 3.0
    assert placement.RUNTIME_RAM_MB == 64.0
    assert placement.SMALL_DEVICE_RAM_MB == 1024
    assert placement.STORAGE_FACTOR == 1.2
    assert placement.MIB == MIB


# --- opset table -------------------------------------------------------------------------------


def test_opset_table_agrees_with_the_installed_onnxruntime() -> None:
    """A device on the server's own onnxruntime must be able to run every model the server validates."""
    assert placement.max_opset(onnxruntime.__version__) == max_supported_opset(), (
        f"add onnxruntime {onnxruntime.__version__} -> opset {max_supported_opset()} to ORT_MAX_OPSET"
    )


def test_opset_table_is_ordered_and_never_goes_down() -> None:
    versions = [v for v, _ in placement.ORT_MAX_OPSET]
    opsets = [o for _, o in placement.ORT_MAX_OPSET]
    assert versions == sorted(versions) and len(set(versions)) == len(versions)
    assert opsets == sorted(opsets)


@pytest.mark.parametrize(("since", "opset"), placement.ORT_MAX_OPSET)
def test_each_row_applies_from_its_own_release(since: tuple[int, int], opset: int) -> None:
    assert placement.max_opset(f"{since[0]}.{since[1]}.0") == opset
    assert placement.max_opset(f"{since[0]}.{since[1]}") == opset
    earlier = [o for v, o in placement.ORT_MAX_OPSET if v < since]
    before = f"{since[0]}.{since[1] - 1}.9" if since[1] else f"{since[0] - 1}.99.0"
    assert placement.max_opset(before) == (earlier[-1] if earlier else None)


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("1.20.1", (1, 20)),
        ("v1.9", (1, 9)),
        ("  1.3.0", (1, 3)),
        ("10.02", (10, 2)),
        ("1", None),
        ("1.x", None),
        ("", None),
        (None, None),
        ("V1.9", None),
        ("x1.9", None),
    ],
)
def test_parse_version(text: object, parsed: tuple[int, int] | None) -> None:
    assert placement.parse_version(text) == parsed


# --- buckets and waves -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("percent", "buckets"),
    [(0, 0), (-5, 0), (0.01, 1), (33.33, 3333), (99.99, 9999), (100, 10_000), (250, 10_000), ("50", 5000)],
)
def test_percent_to_buckets(percent: object, buckets: int) -> None:
    assert placement.percent_to_buckets(percent) == buckets


def test_targeted_exactly_below_the_covered_buckets() -> None:
    device, campaign = "dev-1", 9
    b = placement.bucket(device, campaign)
    assert placement.is_targeted(device, campaign, b) is False
    assert placement.is_targeted(device, campaign, b + 1) is True


def test_a_wave_without_a_percentage_covers_nothing() -> None:
    assert placement.coverage([{}], 0) == 0
    assert placement.coverage([{"percent": 0}], 0) == 0
    assert placement.coverage([{}, {"percent": 10}], 0) == 0
    assert placement.coverage([{}, {"percent": 10}], 1) == 1000


def test_equal_consecutive_percentages() -> None:
    """An old plan with a repeated percentage: the repeat adds nobody, the plan is refused for new ones."""
    waves = [{"percent": 10}, {"percent": 10}, {"percent": 100}]
    assert [placement.coverage(waves, k) for k in range(3)] == [1000, 1000, 10_000]
    assert placement.wave_of(999, waves) == 0
    assert placement.wave_of(1000, waves) == 2
    assert placement.validate_waves(waves) == ["Wave 2: percent must be larger than the wave before (10%)."]


def test_last_bucket_and_single_wave() -> None:
    assert placement.wave_of(9999, [{"percent": 100}]) == 0
    assert placement.wave_of(0, [{"percent": 0.01}, {"percent": 100}]) == 0
    assert placement.wave_of(1, [{"percent": 0.01}, {"percent": 100}]) == 1
    assert placement.wave_of(5000, [{"percent": 50}]) is None


# --- wave plans --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "waves",
    [
        [{"percent": 100}],
        [{"percent": 0.5}, {"percent": 100}],
        [{"percent": "5"}, {"percent": 100.0}],
        [{"percent": 1, "min_soak_minutes": 0, "min_devices": 0}, {"percent": 100}],
    ],
)
def test_sound_plans_at_the_limits(waves: list) -> None:
    assert placement.validate_waves(waves) == []


@pytest.mark.parametrize(
    ("waves", "errors"),
    [
        ([], ["Give at least one wave."]),
        ([{"percent": 0}, {"percent": 100}], ["Wave 1: percent must be above 0 and at most 100."]),
        ([{"percent": 100.001}], ["Wave 1: percent must be above 0 and at most 100."]),
        ([{"percent": None}], ["Wave 1: percent must be a number."]),
        ([{"percent": 10}, {"percent": 50}], ["The last wave must reach 100% of the cohort."]),
        ([{"percent": 100, "min_soak_minutes": -1}], ["Wave 1: min_soak_minutes cannot be negative."]),
        ([{"percent": 100, "min_devices": -0.5}], ["Wave 1: min_devices cannot be negative."]),
        ([{"percent": 100, "min_devices": "many"}], ["Wave 1: min_devices must be a number."]),
        ([{"percent": 100, "min_soak_minutes": [1]}], ["Wave 1: min_soak_minutes must be a number."]),
        (
            [{"percent": 60}, {"percent": 20}, {"percent": 100}],
            ["Wave 2: percent must be larger than the wave before (60%)."],
        ),
    ],
)
def test_every_problem_is_named_exactly(waves: list, errors: list[str]) -> None:
    assert placement.validate_waves(waves) == errors


def test_checking_goes_on_past_a_bad_wave() -> None:
    waves = [{"percent": "x"}, {"percent": 100, "min_soak_minutes": -1}, {"percent": 50}]
    assert placement.validate_waves(waves) == [
        "Wave 1: percent must be a number.",
        "Wave 2: min_soak_minutes cannot be negative.",
        "Wave 3: percent must be larger than the wave before (100%).",
    ]


def test_a_refused_percentage_still_raises_the_bar() -> None:
    """A wave over 100 is refused and the next one is compared with what was asked, not with 0."""
    assert placement.validate_waves([{"percent": 30}, {"percent": 20}]) == [
        "Wave 2: percent must be larger than the wave before (30%).",
    ]


# --- compatibility at the limits ---------------------------------------------------------------


def test_ram_exactly_enough_is_enough() -> None:
    req = Requirements(size_bytes=100 * MIB)  # 64 MB runtime + 3 x 100 MB weights
    assert placement.incompatibility({**HW, "ram_mb": 364}, req) is None
    assert placement.incompatibility({**HW, "ram_mb": 363.99}, req) == "ram"


def test_the_smallest_device_for_an_empty_model() -> None:
    req = Requirements()
    assert placement.incompatibility({**HW, "ram_mb": 64, "storage_free_mb": 0}, req) is None
    assert placement.incompatibility({**HW, "ram_mb": 63.9, "storage_free_mb": 0}, req) == "ram"


def test_no_hardware_report_at_all_is_ram() -> None:
    assert placement.incompatibility(None, Requirements()) == "ram"  # type: ignore[arg-type]
    assert placement.incompatibility({**HW, "ram_mb": "lots"}, Requirements()) == "ram"


def test_runtime_max_opset_equal_to_the_models_is_enough() -> None:
    hw = {**HW, "ort_version": "1.14.0"}  # opset 18
    assert placement.incompatibility(hw, Requirements(opset=18)) is None
    assert placement.incompatibility(hw, Requirements(opset=19)) == "ort_version"
    assert placement.incompatibility({**HW, "ort_version": None}, Requirements(opset=7)) == "ort_version"
    # without an opset requirement the runtime version is not looked at
    assert placement.incompatibility({**HW, "ort_version": "banana"}, Requirements()) is None


def test_a_device_with_the_required_provider() -> None:
    req = Requirements(provider="CUDAExecutionProvider")
    both = ["CPUExecutionProvider", "CUDAExecutionProvider"]
    assert placement.incompatibility({**HW, "providers": both}, req) is None
    assert placement.incompatibility({**HW, "providers": ("CUDAExecutionProvider",)}, req) is None
    assert placement.incompatibility({**HW, "providers": None}, req) == "provider"
    # a string is not a list of providers, even when the name is inside it
    assert placement.incompatibility({**HW, "providers": "CUDAExecutionProvider"}, req) == "provider"
    assert placement.incompatibility({**HW, "providers": {"CUDAExecutionProvider": 1}}, req) == "provider"


def test_storage_exactly_enough_is_enough() -> None:
    req = Requirements(size_bytes=100 * MIB)  # 1.2 x 100 MB next to the previous version
    assert placement.incompatibility({**HW, "storage_free_mb": 120}, req) is None
    assert placement.incompatibility({**HW, "storage_free_mb": 119.9}, req) == "storage"
    assert placement.incompatibility({**HW, "storage_free_mb": None}, req) == "storage"
    floor = Requirements(size_bytes=MIB, min_storage_mb=500)
    assert placement.incompatibility({**HW, "storage_free_mb": 500}, floor) is None
    assert placement.incompatibility({**HW, "storage_free_mb": 499.5}, floor) == "storage"


def test_int8_sizes_decide_for_small_devices() -> None:
    req = Requirements(size_bytes=400 * MIB, int8_size_bytes=100 * MIB)
    small = {**HW, "ram_mb": 1000, "storage_free_mb": 120}
    assert placement.choose_variant(small, req) == "int8"
    assert placement.incompatibility(small, req) is None  # 364 MB RAM and 120 MB storage for the int8 build
    assert placement.incompatibility({**small, "ram_mb": 363}, req) == "ram"


@pytest.mark.parametrize(
    ("ram", "variant"),
    [(1023.9, "int8"), (1024, "fp32"), (None, "fp32"), ("much", "fp32")],
)
def test_small_device_boundary(ram: object, variant: str) -> None:
    req = Requirements(size_bytes=MIB, int8_size_bytes=MIB // 4)
    assert placement.choose_variant({**HW, "ram_mb": ram}, req) == variant


def test_int8_when_fp32_does_not_fit_even_on_a_big_device() -> None:
    req = Requirements(size_bytes=1000 * MIB, int8_size_bytes=250 * MIB)  # fp32 needs 3064 MB
    assert placement.choose_variant({**HW, "ram_mb": 3064}, req) == "fp32"
    assert placement.choose_variant({**HW, "ram_mb": 3063}, req) == "int8"
    assert placement.choose_variant({**HW, "ram_mb": 3063}, Requirements(size_bytes=1000 * MIB)) == "fp32"


def test_two_measured_builds_choose_by_the_variant_rule_for_a_device_fp32_does_not_fit() -> None:
    """fp32 and one measured variant, no int8 size: a device short of RAM for fp32 (but not small by
    RAM or accelerator) gets the variant the rule picks for a device fp32 does not fit."""
    from rollout.variant_rule import Figures

    builds = (("fp32", Figures(1000 * MIB, 5.0, 1.0)), ("fp16", Figures(500 * MIB, 4.0, 0.999)))
    req = Requirements(size_bytes=1000 * MIB, builds=builds)
    gpu = {**HW, "ram_mb": 2000, "accelerator": "cuda"}
    assert placement.choose_variant(gpu, req) == "fp16"
    assert placement.choose_variant({**gpu, "ram_mb": 4000}, req) == "fp32"  # fp32 fits: not small


def test_key_ranges_ending_at_the_last_key_are_one_range() -> None:
    assert placement.key_ranges(0, 5000, placement.BUCKETS) == [(5000, placement.BUCKETS)]
    assert placement.key_ranges(1, 5000, placement.BUCKETS) == [(4999, placement.BUCKETS - 1)]
    assert placement.key_ranges(5001, 5000, placement.BUCKETS) == [(9999, placement.BUCKETS), (0, 4999)]
    assert placement.key_ranges(7, 300, 300) == []
