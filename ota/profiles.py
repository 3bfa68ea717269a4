"""A version's reference profile from an uploaded reference data set (numpy only; no Django).

The profile is what drift detection compares fleet telemetry against, so its shape is a contract
read by the manifest and telemetry code::

    {"source": "reference_set", "n": N,
     "features": [{"name": "input[0]", "edges": [...], "counts": [...], "mean": m, "std": s}, ...],
     "output": {"kind": "classes", "n": C, "counts": [...]}
            or {"kind": "bins", "edges": [...], "counts": [...]}}

Features are the columns of 1-D ([N]) and 2-D ([N, F]) inputs, named ``<input>[<j>]`` (a 1-D input is
``<input>[0]``). Running the model is the caller's business: ``build_profile`` takes a function.

Reading a reference set parses uploaded bytes, so the server does it only inside the sandbox child
(``ota.sandbox_child``). Sizes are checked from the zip and ``.npy`` headers before any array is
unpacked: a 1 MB ``.npz`` that unpacks to 1 GiB is refused by its headers, not by running out of memory.
"""

from __future__ import annotations

import csv
import re
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ota.limits import Limits, MiB, elements, reference_size_message
from telemetry.binning import MAX_CLASSES, histogram, quantile_edges

BINS = 20
MAX_ROWS = 1_000_000
MAX_COLUMNS = 10_000
MAX_MEMBERS = 1_000
MAX_HEADER_LINE = 1 * MiB
DEFAULT_MAX_BYTES = Limits().reference_max_bytes
COLUMN = re.compile(r"^(?P<name>.+)\[(?P<j>\d+)\]$")


class ReferenceSetError(ValueError):
    """The reference set cannot be used; the message says what to change."""


def npz_unpacked_bytes(path: str | Path, max_bytes: int = DEFAULT_MAX_BYTES) -> int:
    """What an .npz unpacks to, from its zip and .npy headers alone; refuses a bomb before unpacking it.

    Both the zip's declared sizes and each array's header (shape x itemsize) count: numpy allocates by
    the header, whatever the zip says.
    """
    path = Path(path)
    size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as zf:
            members = zf.infolist()
            if len(members) > MAX_MEMBERS:
                raise ReferenceSetError(f"The reference .npz holds {len(members)} files; at most {MAX_MEMBERS}.")
            declared = sum(m.file_size for m in members)
            if declared > max_bytes:
                raise ReferenceSetError(reference_size_message(declared, size, Limits(reference_max_bytes=max_bytes)))
            from_headers = 0
            for m in members:
                if not m.filename.endswith(".npy"):
                    continue
                with zf.open(m) as fh:
                    shape, dtype = _npy_header(fh)
                n = elements(shape) * max(1, dtype.itemsize)
                if n > m.file_size:
                    raise ReferenceSetError(
                        f"Reference array '{m.filename[:-4]}' declares shape {list(shape)} but its file holds only "
                        f"{m.file_size} bytes: the .npz is damaged or crafted."
                    )
                from_headers += n
            unpacked = max(declared, from_headers)
    except ReferenceSetError:
        raise
    except Exception as exc:
        raise ReferenceSetError(f"The reference set is not a readable .npz file ({_short(exc)}).") from exc
    if unpacked > max_bytes:
        raise ReferenceSetError(reference_size_message(unpacked, size, Limits(reference_max_bytes=max_bytes)))
    return unpacked


def _npy_header(fh: object) -> tuple[tuple[int, ...], np.dtype]:
    version = np.lib.format.read_magic(fh)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(fh, max_header_size=10_000)
    elif version == (2, 0):
        shape, _, dtype = np.lib.format.read_array_header_2_0(fh, max_header_size=10_000)
    else:
        raise ReferenceSetError(f"An array in the .npz uses .npy format {version}; save it with numpy.savez.")
    return tuple(int(d) for d in shape), dtype


def _short(exc: BaseException, limit: int = 200) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def load(path: str | Path, kind: str, max_bytes: int = DEFAULT_MAX_BYTES) -> dict[str, np.ndarray]:
    """Raw arrays from an .npz (one per key) or .csv (one per column, in header order).

    ``max_bytes`` caps what the set may unpack to (checked from headers first, for .npz).
    """
    path = Path(path)
    if kind == "npz":
        npz_unpacked_bytes(path, max_bytes)
        try:
            with np.load(path, allow_pickle=False) as z:
                data = {k: np.asarray(z[k]) for k in z.files}
        except MemoryError:
            raise
        except Exception as exc:
            raise ReferenceSetError(f"The reference set is not a readable .npz file ({_short(exc)}).") from exc
        if not data:
            raise ReferenceSetError("The reference .npz holds no arrays: save one array per model input.")
        for key, arr in data.items():
            if arr.dtype.kind not in "biuf":
                raise ReferenceSetError(f"Reference array '{key}' is {arr.dtype}, not numeric.")
            if arr.ndim not in (1, 2) or arr.shape[0] == 0:
                raise ReferenceSetError(
                    f"Reference array '{key}' has shape {list(arr.shape)}: use [N] or [N, F] with N > 0 rows."
                )
        return data
    if kind == "csv":
        return _load_csv(path, max_bytes)
    raise ReferenceSetError("The reference set must be an .npz or .csv file.")


def _load_csv(path: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> dict[str, np.ndarray]:
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            first = fh.readline(MAX_HEADER_LINE + 1)
    except UnicodeDecodeError as exc:
        raise ReferenceSetError("The reference .csv is not UTF-8 text.") from exc
    if len(first) > MAX_HEADER_LINE:
        raise ReferenceSetError("The reference .csv header row is longer than 1 MiB: is this really a CSV file?")
    try:
        header = next(csv.reader([first]), None)
    except csv.Error as exc:
        raise ReferenceSetError(f"The reference .csv header row cannot be read ({_short(exc)}).") from exc
    if not header or not any(h.strip() for h in header):
        raise ReferenceSetError("The reference .csv is empty: it needs a header row and data rows.")
    if len(header) > MAX_COLUMNS:
        raise ReferenceSetError(f"The reference .csv has {len(header)} columns; at most {MAX_COLUMNS:,}.")
    header = [h.strip() for h in header]
    if len(set(header)) != len(header):
        raise ReferenceSetError("The reference .csv has duplicate column names.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "no data" is reported below, in words
            rows = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2, dtype=np.float64, max_rows=MAX_ROWS)
    except ValueError as exc:
        raise ReferenceSetError(f"The reference .csv has a value that is not a number: {exc}") from exc
    if rows.shape[0] == 0:
        raise ReferenceSetError("The reference .csv has a header but no data rows.")
    if rows.nbytes > max_bytes:  # every value is a float64: short text can unpack to more than its size
        raise ReferenceSetError(
            reference_size_message(rows.nbytes, path.stat().st_size, Limits(reference_max_bytes=max_bytes))
        )
    if rows.shape[1] != len(header):
        raise ReferenceSetError(f"The reference .csv has {len(header)} header names but {rows.shape[1]} columns.")
    return {h: rows[:, j] for j, h in enumerate(header)}


def match_inputs(data: dict[str, np.ndarray], inputs: list[dict], kind: str) -> dict[str, np.ndarray]:
    """Arrange raw arrays as one [N, F] (or [N]) array per model input, or say what does not match."""
    if kind == "csv":
        data = _csv_to_inputs(data, inputs)
    names = [i["name"] for i in inputs]
    unknown = sorted(set(data) - set(names))
    missing = [n for n in names if n not in data]
    if unknown or missing:
        parts = []
        if unknown:
            parts.append(f"not model inputs: {', '.join(unknown)}")
        if missing:
            parts.append(f"missing inputs: {', '.join(missing)}")
        raise ReferenceSetError(
            f"The reference set does not match the model inputs ({'; '.join(parts)}). "
            f"The model expects: {', '.join(names)}."
        )
    n_rows = {k: v.shape[0] for k, v in data.items()}
    if len(set(n_rows.values())) > 1:
        raise ReferenceSetError(f"The reference arrays have different numbers of rows: {n_rows}.")
    out: dict[str, np.ndarray] = {}
    for spec in inputs:
        arr, shape = data[spec["name"]], spec["shape"]
        if len(shape) not in (1, 2):
            raise ReferenceSetError(
                f"Input '{spec['name']}' has shape {shape}: reference profiles support [batch] and "
                "[batch, features] inputs only."
            )
        if len(shape) == 1 and arr.ndim != 1:
            raise ReferenceSetError(f"Input '{spec['name']}' is [batch] but its reference array is {list(arr.shape)}.")
        if len(shape) == 2:
            if arr.ndim == 1:
                arr = arr[:, None]
            if isinstance(shape[1], int) and arr.shape[1] != shape[1]:
                raise ReferenceSetError(
                    f"Input '{spec['name']}' has {shape[1]} features but the reference set gives {arr.shape[1]}."
                )
        if not np.all(np.isfinite(arr.astype(np.float64))):
            raise ReferenceSetError(f"The reference data for '{spec['name']}' holds NaN or infinite values.")
        out[spec["name"]] = arr
    return out


def _csv_to_inputs(columns: dict[str, np.ndarray], inputs: list[dict]) -> dict[str, np.ndarray]:
    """CSV columns named ``input[j]`` group per input; plain names fill a single 2-D input in order."""
    parsed = {h: COLUMN.match(h) for h in columns}
    if all(parsed.values()):
        grouped: dict[str, dict[int, np.ndarray]] = {}
        for h, m in parsed.items():
            grouped.setdefault(m["name"], {})[int(m["j"])] = columns[h]
        data = {}
        for name, cols in grouped.items():
            if sorted(cols) != list(range(len(cols))):
                raise ReferenceSetError(
                    f"Columns of '{name}' must be numbered {name}[0] to {name}[{len(cols) - 1}] with no gaps."
                )
            data[name] = np.stack([cols[j] for j in range(len(cols))], axis=1)
        return data
    if len(inputs) == 1 and len(inputs[0]["shape"]) == 2:
        return {inputs[0]["name"]: np.stack(list(columns.values()), axis=1)}
    names = ", ".join(f"{i['name']}[0]" for i in inputs)
    raise ReferenceSetError(
        f"The reference .csv columns ({', '.join(list(columns)[:5])}…) do not name model inputs: "
        f"use headers like {names}."
    )


def column_names(columns: dict[str, np.ndarray], inputs: list[dict], kind: str) -> dict[str, dict[str, str]]:
    """``{"reference_columns": {"input[0]": "rms", …}}`` when a .csv's plain headers name a single 2-D input's
    columns (what ``_csv_to_inputs`` fills in order); {} otherwise. ``ota.names`` shows them on every chart."""
    if kind != "csv" or any(COLUMN.match(h) for h in columns) or len(inputs) != 1 or len(inputs[0]["shape"]) != 2:
        return {}
    name = inputs[0]["name"]
    return {"reference_columns": {f"{name}[{j}]": str(h)[:40] for j, h in enumerate(columns)}}


def feature_profiles(arrays: dict[str, np.ndarray], bins: int = BINS) -> list[dict]:
    features = []
    for name, arr in arrays.items():
        cols = arr[:, None] if arr.ndim == 1 else arr
        for j in range(cols.shape[1]):
            v = cols[:, j].astype(np.float64)
            edges = quantile_edges(v, bins)
            features.append(
                {
                    "name": f"{name}[{j}]",
                    "edges": edges,
                    "counts": [float(c) for c in histogram(v, edges)],
                    "mean": float(v.mean()),
                    "std": float(v.std()),
                }
            )
    return features


def fixed_batch(inputs: list[dict]) -> int | None:
    """The model's fixed batch dim, if its first input dim is a number rather than symbolic."""
    fixed = [s["shape"][0] for s in inputs if s["shape"] and isinstance(s["shape"][0], int)]
    return fixed[0] if fixed else None


def run_batched(
    arrays: dict[str, np.ndarray], inputs: list[dict], run: Callable[[dict], np.ndarray], batch: int = 256
) -> np.ndarray:
    """The first output over the reference rows, concatenated along the batch axis.

    A fixed-batch model sees only whole batches (the ragged tail is left out).
    """
    n = next(iter(arrays.values())).shape[0]
    fixed = fixed_batch(inputs)
    step = fixed or batch
    stop = n - n % step if fixed else n
    outs = []
    for start in range(0, stop, step):
        feeds = {s["name"]: arrays[s["name"]][start : start + step].astype(np.dtype(s["dtype"])) for s in inputs}
        outs.append(np.asarray(run(feeds)))
    return np.concatenate(outs, axis=0) if outs else np.empty((0,))


def output_profile(first_output: np.ndarray, bins: int = BINS) -> dict:
    out = np.asarray(first_output)
    if out.ndim == 2 and 2 <= out.shape[1] <= MAX_CLASSES:
        n = int(out.shape[1])
        counts = np.bincount(out.argmax(axis=1), minlength=n)
        return {"kind": "classes", "n": n, "counts": [float(c) for c in counts]}
    values = out.astype(np.float64).ravel()
    edges = quantile_edges(values, bins)
    return {"kind": "bins", "edges": edges, "counts": [float(c) for c in histogram(values, edges)]}


def build_profile(arrays: dict[str, np.ndarray], inputs: list[dict], run: Callable[[dict], np.ndarray]) -> dict:
    """The reference profile (shape in the module docstring) of matched reference arrays."""
    n = int(next(iter(arrays.values())).shape[0])
    return {
        "source": "reference_set",
        "n": n,
        "features": feature_profiles(arrays),
        "output": output_profile(run_batched(arrays, inputs, run)),
    }
