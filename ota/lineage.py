"""A version's lineage: free-form metadata and links a training pipeline sets at upload (pure; no Django).

Shape, stored on ``ModelVersion.lineage``::

    {"meta": {"git_commit": "abc123", "dataset_hash": "sha256:…", "metrics": {"auc": 0.93}},
     "links": {"run": "https://mlflow.example/runs/17"}}

The text comes from whoever holds an upload token and is shown to every viewer, so it is bounded
strictly and read as hostile: keys are short identifiers, values are JSON scalars or small nested
objects/lists (depth ``MAX_DEPTH``), strings carry no control characters, links are absolute
``http``/``https`` URLs without credentials, and the whole document is at most ``MAX_BYTES`` as
JSON. Pages print values as plain text and links through ``safe_links`` only.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any
from urllib.parse import urlsplit

MAX_BYTES = 16 * 1024
MAX_KEYS = 50
MAX_LINKS = 20
MAX_DEPTH = 3
MAX_ITEMS = 100
MAX_STRING = 1000
MAX_URL = 2000
KEY_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
SCHEMES = ("http", "https")
KEY_HELP = "1-64 letters, digits, '_', '.' or '-', starting with a letter"


class LineageError(ValueError):
    """Refused lineage, with the offending path (e.g. ``meta.metrics.auc``) for the error's field."""

    def __init__(self, message: str, path: str = "lineage") -> None:
        super().__init__(message)
        self.path = path


def _reject_constant(name: str) -> float:
    raise LineageError(f"{name} is not a number JSON allows; send a finite number or a string.")


def loads(text: str | bytes) -> Any:
    """Parse a lineage JSON text (NaN and Infinity refused, size checked before parsing)."""
    if len(text) > MAX_BYTES:
        raise LineageError(f"Lineage is limited to {MAX_BYTES // 1024} KiB of JSON.")
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        if isinstance(exc, LineageError):
            raise
        raise LineageError(f"Lineage is not valid JSON: {str(exc)[:120]}") from None


def _key(key: Any, path: str) -> str:
    if not isinstance(key, str) or not KEY_RE.match(key):
        raise LineageError(f"{path}: the key {str(key)[:70]!r} is not a name ({KEY_HELP}).", path)
    return key


def _string(value: str, path: str, limit: int = MAX_STRING) -> str:
    if len(value) > limit:
        raise LineageError(f"{path}: at most {limit} characters.", path)
    if CONTROL.search(value):
        raise LineageError(f"{path}: control or direction characters are not allowed.", path)
    return value


def _value(value: Any, path: str, depth: int) -> Any:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        if abs(value) > 2**53:
            raise LineageError(f"{path}: integers are limited to ±2^53; send larger ones as text.", path)
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise LineageError(f"{path}: only finite numbers.", path)
        return value
    if isinstance(value, str):
        return _string(value, path)
    if depth >= MAX_DEPTH:
        raise LineageError(f"{path}: nested deeper than {MAX_DEPTH} levels.", path)
    if isinstance(value, dict):
        if len(value) > MAX_ITEMS:
            raise LineageError(f"{path}: at most {MAX_ITEMS} entries.", path)
        return {_key(k, f"{path}.{k}"): _value(v, f"{path}.{k}", depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        if len(value) > MAX_ITEMS:
            raise LineageError(f"{path}: at most {MAX_ITEMS} items.", path)
        return [_value(v, f"{path}[{i}]", depth + 1) for i, v in enumerate(value)]
    raise LineageError(f"{path}: unsupported value.", path)


def check_url(url: Any, path: str = "links") -> str:
    """An absolute http(s) URL with a host and no credentials, or LineageError."""
    if not isinstance(url, str) or not url:
        raise LineageError(f"{path}: a link is a URL string.", path)
    _string(url, path, MAX_URL)
    if any(c.isspace() for c in url) or "\\" in url:
        raise LineageError(f"{path}: a URL has no spaces or backslashes.", path)
    try:
        parts = urlsplit(url)
        port = parts.port  # raises on a bad port
    except ValueError:
        raise LineageError(f"{path}: not a URL.", path) from None
    del port
    if parts.scheme.lower() not in SCHEMES or not parts.hostname:
        raise LineageError(f"{path}: links must be absolute http:// or https:// URLs.", path)
    if parts.username is not None or parts.password is not None:
        raise LineageError(f"{path}: a link must not carry a user name or password.", path)
    return url


def clean(data: Any) -> dict[str, Any]:
    """The stored form of submitted lineage (``{"meta": {}, "links": {}}``), or LineageError."""
    if data is None or data == "":
        return {}
    if isinstance(data, str | bytes):
        data = loads(data)
    if not isinstance(data, dict):
        raise LineageError('Lineage is a JSON object: {"meta": {...}, "links": {...}}.')
    unknown = sorted(set(data) - {"meta", "links"})
    if unknown:
        raise LineageError(f"Unknown lineage field {unknown[0][:40]!r}: use 'meta' and 'links'.", "lineage")
    meta, links = data.get("meta"), data.get("links")
    meta, links = {} if meta is None else meta, {} if links is None else links
    if not isinstance(meta, dict):
        raise LineageError("meta is a JSON object of name -> value.", "meta")
    if not isinstance(links, dict):
        raise LineageError("links is a JSON object of name -> URL.", "links")
    if len(meta) > MAX_KEYS:
        raise LineageError(f"meta: at most {MAX_KEYS} keys.", "meta")
    if len(links) > MAX_LINKS:
        raise LineageError(f"links: at most {MAX_LINKS} links.", "links")
    out: dict[str, Any] = {}
    if meta:
        out["meta"] = {_key(k, f"meta.{k}"): _value(v, f"meta.{k}", 1) for k, v in meta.items()}
    if links:
        out["links"] = {_key(k, f"links.{k}"): check_url(v, f"links.{k}") for k, v in links.items()}
    if len(json.dumps(out, separators=(",", ":"))) > MAX_BYTES:
        raise LineageError(f"Lineage is limited to {MAX_BYTES // 1024} KiB of JSON.")
    return out


def pairs(text_pairs: list[str], what: str) -> dict[str, str]:
    """``["git_commit=abc", …]`` (the CLI's ``--meta``/``--link``) as a dict; LineageError on a bad pair."""
    out: dict[str, str] = {}
    for item in text_pairs:
        key, sep, value = item.partition("=")
        if not sep:
            raise LineageError(f"{what} {item[:60]!r} is not name=value.", what)
        out[key.strip()] = value.strip()
    return out


def _flat(value: Any, prefix: str) -> list[str]:
    if isinstance(value, dict):
        return [line for k, v in value.items() for line in _flat(v, f"{prefix}.{k}")]
    if isinstance(value, list):
        return [line for v in value for line in _flat(v, prefix)]
    return [f"{prefix}={'' if value is None else value}"]


def search_text(lineage: dict[str, Any] | None) -> str:
    """One line per leaf (``git_commit=abc``, ``metrics.auc=0.93``, ``run=https://…``), for substring search."""
    lineage = lineage or {}
    lines = [line for k, v in (lineage.get("meta") or {}).items() for line in _flat(v, k)]
    lines += [f"{k}={v}" for k, v in (lineage.get("links") or {}).items()]
    return "\n".join(lines)


def safe_links(lineage: dict[str, Any] | None) -> list[tuple[str, str]]:
    """``(name, url)`` of the links that still pass ``check_url`` (rows edited by hand are dropped)."""
    out = []
    for name, url in ((lineage or {}).get("links") or {}).items():
        try:
            out.append((str(name), check_url(url)))
        except LineageError:
            continue
    return out
