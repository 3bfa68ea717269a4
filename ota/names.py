"""People's names for a version's features and output classes, from the model's own metadata (pure).

Telemetry keys features by tensor column (``input[0]``): that is the protocol and stays. Pages show
the names the model was exported with instead, when its ONNX metadata has them:

- ``features``: comma-separated names of the first input's columns, in order (``rms,peak,kurtosis``);
- ``classes``: comma-separated names of the output classes (``normal,imbalance,bearing_fault``).

A model without ``features`` metadata gets its names from the reference .csv's headers when they named
a single 2-D input's columns (``reference_columns`` in the validation report).

The metadata comes from whoever uploaded the model, so names pass ``edgefleet.display.safe_label``
(no markup reaches a chart) and a list of the wrong length is ignored rather than misnaming columns.
"""

from __future__ import annotations

import re
from typing import Any

from edgefleet.display import safe_label

COLUMN = re.compile(r"^(?P<name>.+)\[(?P<j>\d+)\]$")
MAX_NAMES = 10_000


def _names(text: Any) -> list[str]:
    if not isinstance(text, str) or len(text) > 200_000:
        return []
    return [safe_label(part) for part in text.split(",")[:MAX_NAMES]]


def feature_names(report: dict | None) -> dict[str, str]:
    """``{"input[0]": "rms", …}`` for the first input's columns: from the model's metadata, else from the
    reference .csv's column headers (``reference_columns``, kept by validation); {} when neither names them."""
    report = report or {}
    meta = report.get("metadata") if isinstance(report.get("metadata"), dict) else {}
    inputs = report.get("inputs") if isinstance(report.get("inputs"), list) else []
    names = _names(meta.get("features"))
    if not names:
        return _reference_columns(report.get("reference_columns"))
    if not inputs or not isinstance(inputs[0], dict):
        return {}
    first = str(inputs[0].get("name", "input"))
    shape = inputs[0].get("shape")
    columns = shape[-1] if isinstance(shape, list) and shape and isinstance(shape[-1], int) else None
    if columns is not None and columns != len(names):
        return {}
    return {f"{first}[{j}]": name for j, name in enumerate(names) if name}


def _reference_columns(columns: Any) -> dict[str, str]:
    if not isinstance(columns, dict) or len(columns) > MAX_NAMES:
        return {}
    out = {str(k): safe_label(v) for k, v in columns.items() if isinstance(k, str) and COLUMN.match(k)}
    return {k: v for k, v in out.items() if v}


def class_names(report: dict | None) -> list[str]:
    """The output classes' names in order, or [] when the model names none."""
    meta = (report or {}).get("metadata")
    return _names(meta.get("classes")) if isinstance(meta, dict) else []


def label(key: str, names: dict[str, str]) -> str:
    """How a telemetry key reads on a page: ``rms (input[0])`` when named, else the key itself."""
    name = names.get(key)
    return f"{name} ({key})" if name else key
