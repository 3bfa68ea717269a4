"""Edges of what validating one upload may cost (ota/limits.py), pure: no database, no sandbox.

The defaults are policy (a change silently admits bigger models or refuses ordinary ones), every
message names the setting an admin would raise, sizes read at unit boundaries, and no server path
survives the scrub (docs/mutation.md).
"""

from __future__ import annotations

import pytest

from ota import limits
from ota.limits import Limits

MiB = 1024 * 1024


def test_default_limits_are_pinned() -> None:
    assert Limits().as_json() == {
        "memory_bytes": 2048 * MiB,
        "cpu_seconds": 600,
        "wall_seconds": 300,
        "max_input_elements": 1 << 24,
        "max_tensor_elements": 1 << 26,
        "reference_max_bytes": 256 * MiB,
        "threads": 1,
    }
    assert limits.MiB == 1048576


def test_limits_round_trip_through_json_as_integers_and_ignore_unknown_keys() -> None:
    custom = Limits(memory_bytes=5, cpu_seconds=6, wall_seconds=7, threads=2)
    assert Limits.from_json(custom.as_json()) == custom
    assert Limits.from_json({"cpu_seconds": "9", "wall_seconds": 12.0, "shell": "rm -rf"}) == Limits(
        cpu_seconds=9, wall_seconds=12
    )
    assert type(Limits.from_json({"cpu_seconds": "9"}).cpu_seconds) is int
    assert Limits.from_json({}) == Limits()


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1 KiB"),
        (1536, "1.5 KiB"),
        (1024 * 1024 - 1, "1024.0 KiB"),
        (MiB, "1 MiB"),
        (2048 * MiB, "2 GiB"),
        (1024**4, "1 TiB"),
        (5 * 1024**5, "5120 TiB"),
        (1.5 * 1024**4, "1.5 TiB"),
        (10.25, "10 B"),  # bytes are whole: never "10.2 B"
    ],
)
def test_human_bytes_at_unit_boundaries(n: float, text: str) -> None:
    assert limits.human_bytes(n) == text


def test_elements_are_exact_for_shapes_beyond_64_bits() -> None:
    assert limits.elements([]) == 1
    assert limits.elements([3, "4", 5.0]) == 60  # type: ignore[list-item]
    assert limits.elements([10**10, 10**10]) == 10**20
    assert limits.elements([7, 0]) == 0


def test_doing_names_the_step_and_a_default() -> None:
    assert limits.doing("smoke") == "running the model on a sample input"
    assert limits.doing(None) == "starting the validation"
    assert limits.doing("") == "starting the validation"
    assert limits.doing("unknown") == "validating the model"


def test_memory_message_names_the_setting_the_subject_and_the_step() -> None:
    lim = Limits(memory_bytes=512 * MiB)
    assert limits.memory_message("session", lim) == (
        "The model needs more than 512 MiB of memory to load into onnxruntime (EDGEFLEET_VALIDATION_MEMORY_MB). "
        "Make it smaller (smaller tensors, a symbolic batch dimension, fewer reference rows), "
        "or ask an admin to raise the limit."
    )
    assert limits.memory_message("reference_profile_build", lim).startswith(
        "The reference set needs more than 512 MiB of memory to run over the reference set ("
    )
    plain = "The model needs more than 512 MiB of memory to validate ("
    assert limits.memory_message(None, lim).startswith(plain)
    assert limits.memory_message("contract", lim).startswith(plain)


def test_time_and_crash_messages_name_their_settings() -> None:
    lim = Limits(wall_seconds=30, cpu_seconds=40, memory_bytes=MiB)
    assert limits.timeout_message("latency", lim) == (
        "Validation took longer than 30 s (EDGEFLEET_VALIDATION_TIMEOUT) while measuring the model's latency "
        "on a sample input. Check how long one inference takes on your machine; a model this slow cannot be "
        "validated here unless an admin raises the limit."
    )
    assert limits.cpu_message(None, lim) == (
        "Validation used more than 40 s of CPU time (EDGEFLEET_VALIDATION_CPU_SECONDS) while starting the "
        "validation. The model is too expensive to check here unless an admin raises the limit."
    )
    assert "while running the model on a sample input." in limits.cpu_message("smoke", lim)
    assert "while loading the model into onnxruntime." in limits.timeout_message("session", lim)
    crash = limits.crash_message("reference_check", "SIGKILL", lim)
    assert "crashed (SIGKILL) while reading the reference set." in crash
    assert limits.crash_message("checker", "SIGSEGV", lim) == (
        "The validation process crashed (SIGSEGV) while checking the model with onnx.checker. The model may be "
        "malformed, or need more than the 1 MiB of memory validation allows; check it locally with "
        "onnx.checker.check_model(model, full_check=True) and an onnxruntime session."
    )


def test_element_and_reference_messages_give_the_numbers() -> None:
    lim = Limits(max_input_elements=1000, max_tensor_elements=2000, reference_max_bytes=MiB)
    assert limits.input_elements_message("x", [1, 5000], 5000, lim) == (
        "Input 'x' is declared as [1, 5000] (5,000 elements); a sample input may have at most 1,000 elements "
        "in all (EDGEFLEET_VALIDATION_MAX_INPUT_ELEMENTS). Export the model with a symbolic batch dimension or "
        "smaller fixed dimensions."
    )
    assert limits.tensor_elements_message("t", "output", [4096], 4096, 4, lim) == (
        "Tensor 't' (output) would hold 4,096 elements (shape [4096], 16 KiB), more than the 2,000 allowed "
        "(EDGEFLEET_VALIDATION_MAX_TENSOR_ELEMENTS). A model that builds tensors this large cannot run on an "
        "edge device."
    )
    assert limits.reference_size_message(3 * MiB, 1024, lim) == (
        "The reference set unpacks to 3 MiB from a 1 KiB file, more than the 1 MiB limit "
        "(EDGEFLEET_REFERENCE_MAX_BYTES). A sample of a few thousand rows is enough for a reference profile."
    )


@pytest.mark.parametrize(
    ("text", "scrubbed"),
    [
        ("failed to open /srv/edgefleet/var/uploads/abc/model.onnx", "failed to open model.onnx"),
        ("in /usr/lib/python3/x.py line 3", "in x.py line 3"),
        ("dir /tmp/sandbox-1/ gone", "dir … gone"),
        ("a single /root part stays", "a single /root part stays"),
        ("https://onnx.ai/docs/ok and a.b/c/d", "https://onnx.ai/docs/ok and a.b/c/d"),
        ("C:/x/y and ./rel/path/z", "C:/x/y and ./rel/path/z"),
        ("(/opt/ort/build/core.cc:12)", "(core.cc:12)"),
    ],
)
def test_scrub_replaces_absolute_paths_by_their_last_part(text: str, scrubbed: str) -> None:
    assert limits.scrub(text) == scrubbed


def test_scrub_names_known_files_longest_path_first() -> None:
    names = {"/data/up/123": "the upload", "/data/up/123/ref.npz": "the reference set", "": "nothing"}
    assert limits.scrub("read /data/up/123/ref.npz after /data/up/123", names) == (
        "read the reference set after the upload"
    )


def test_scrub_report_scrubs_every_step_error_and_the_int8_error_only() -> None:
    report = {
        "steps": [
            {"step": "load", "error": "no /a/b/c.onnx"},
            {"step": "smoke", "error": None},
            "not a step",
            {"step": "x", "error": 7},
        ],
        "int8_error": "quantize /q/r/s.onnx from /a/b/c.onnx failed",
        "title": "/keep/this/path",
    }
    out = limits.scrub_report(report, {"/a/b/c.onnx": "model.onnx"})
    assert out is report
    assert out["steps"] == [
        {"step": "load", "error": "no model.onnx"},
        {"step": "smoke", "error": None},
        "not a step",
        {"step": "x", "error": 7},
    ]
    assert out["int8_error"] == "quantize s.onnx from model.onnx failed"  # known files by their name here too
    assert out["title"] == "/keep/this/path"
    assert limits.scrub_report({"steps": None, "int8_error": None}) == {"steps": None, "int8_error": None}
