"""The device API's one strict parse: request bytes become plain JSON values, or a 4xx naming what is wrong.

Every device body (enroll, events, telemetry) and every structured header (``X-Agent-State``) passes
here before anything else looks at it. Python's ``json.loads`` alone accepts what PostgreSQL or a
later job cannot take, and each of these was a 500 or a poisoned row: ``NaN``/``Infinity`` (and
``1e400``, which parses as ``inf``), integers of any length, duplicate keys (the last silently
wins), ``\\u0000`` and lone surrogates (PostgreSQL refuses both in ``text`` and ``jsonb``), and
nesting until ``RecursionError``. So the parse here refuses them all, with the JSON path of the
first offence as the error's ``field``:

- the body must be ``application/json`` (charset, if given, UTF-8) → else 415;
- at most ``DATA_UPLOAD_MAX_MEMORY_SIZE`` bytes → else 413;
- strict UTF-8, no BOM; JSON per RFC 8259, no ``NaN``/``Infinity``, no duplicate keys;
- nesting at most :data:`MAX_DEPTH`; keys at most :data:`MAX_KEY_CHARS` characters; numbers finite,
  integers within signed 64 bits, number literals at most :data:`MAX_NUMBER_CHARS` characters;
- no NUL or unpaired surrogate in any string or key.

Types for the schemas: :data:`UtcDatetime` (an ISO 8601 / RFC 3339 string with an offset within
±14:00, normalised to UTC; never a number) and :data:`Details` (a bounded free-form object).
"""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from django.conf import settings
from django.http import HttpRequest
from pydantic import AfterValidator, BeforeValidator, WithJsonSchema

from fleet.errors import ProtocolError

MAX_DEPTH = 16
MAX_KEY_CHARS = 256
MAX_NUMBER_CHARS = 64
INT_MIN, INT_MAX = -(2**63), 2**63 - 1
MAX_OFFSET = timedelta(hours=14)  # the widest real-world UTC offsets are -12:00 and +14:00
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)

# Free-form ``details`` of an event: what a person reads on the device page, not a data channel.
DETAILS_MAX_KEYS = 32
DETAILS_MAX_NODES = 256
DETAILS_MAX_DEPTH = 4
DETAILS_MAX_STRING = 2048
DETAILS_MAX_BYTES = 8192

_BAD_CHARS = re.compile("[\x00\ud800-\udfff]")
_DATE = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:[Zz]|[+-]\d{2}:\d{2})",
    re.ASCII,
)


class _Bad:
    """What a parse hook returns in place of a refused value, so the walk can name its path."""

    __slots__ = ("code", "message")

    def __init__(self, code: str, message: str) -> None:
        self.code, self.message = code, message


class _DupDict(dict):
    """An object that had a key twice (``json`` keeps the last; we refuse it)."""

    duplicate: str = ""


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    d = dict(pairs)
    if len(d) == len(pairs):
        return d
    seen: set[str] = set()
    out = _DupDict(d)
    for k, _ in pairs:
        if k in seen:
            out.duplicate = k
            break
        seen.add(k)
    return out


def _constant(name: str) -> _Bad:
    return _Bad("invalid_number", f"{name} is not a JSON number")


def _float(text: str) -> float | _Bad:
    if len(text) > MAX_NUMBER_CHARS:
        return _Bad("invalid_number", f"a number of at most {MAX_NUMBER_CHARS} characters")
    value = float(text)
    if not math.isfinite(value):
        return _Bad("invalid_number", f"{text} is out of range")
    return value


def _int(text: str) -> int | _Bad:
    if len(text) > 20:
        return _Bad("invalid_number", "an integer within signed 64 bits")
    value = int(text)
    if not INT_MIN <= value <= INT_MAX:
        return _Bad("invalid_number", "an integer within signed 64 bits")
    return value


def _join(path: tuple[str | int, ...]) -> str | None:
    return ".".join(str(p) for p in path) or None


def _refuse(code: str, message: str, path: tuple[str | int, ...]) -> ProtocolError:
    field = _join(path)
    return ProtocolError(400, code, f"{field}: {message}" if field else message, field)


def check(value: Any, path: tuple[str | int, ...] = ()) -> None:
    """Walk a parsed value (iteratively: the depth is what we check) and raise the first offence."""
    stack: list[tuple[Any, tuple[str | int, ...], int]] = [(value, path, 1)]
    while stack:
        node, where, depth = stack.pop()
        kind = type(node)
        if kind is dict or kind is _DupDict:
            if depth > MAX_DEPTH:
                raise _refuse("too_deep", f"nested deeper than {MAX_DEPTH} levels", where)
            if kind is _DupDict:
                raise _refuse("duplicate_key", f"the key {node.duplicate[:40]!r} appears twice", where)
            for k, v in node.items():
                if len(k) > MAX_KEY_CHARS:
                    raise _refuse("key_too_long", f"a key longer than {MAX_KEY_CHARS} characters", where)
                if _BAD_CHARS.search(k):
                    raise _refuse("invalid_string", "a key holds NUL or an unpaired surrogate", where)
                stack.append((v, (*where, k), depth + 1))
        elif kind is list:
            if depth > MAX_DEPTH:
                raise _refuse("too_deep", f"nested deeper than {MAX_DEPTH} levels", where)
            for i, v in enumerate(node):
                t = type(v)
                if t is int or t is float or t is bool or v is None:
                    continue
                stack.append((v, (*where, i), depth + 1))
        elif kind is str:
            if _BAD_CHARS.search(node):
                raise _refuse("invalid_string", "a string holds NUL or an unpaired surrogate", where)
        elif kind is _Bad:
            raise _refuse(node.code, node.message, where)


def loads(raw: bytes | str, path: tuple[str | int, ...] = ()) -> Any:
    """Strictly parse JSON text; ProtocolError 400 (``field`` = the JSON path) on any offence."""
    if isinstance(raw, bytes | bytearray):
        try:
            text = bytes(raw).decode("utf-8")
        except UnicodeDecodeError as e:
            raise _refuse("not_utf8", f"the bytes are not UTF-8 (at byte {e.start})", path) from None
    else:
        text = raw
    try:
        value = json.loads(text, object_pairs_hook=_pairs, parse_constant=_constant, parse_float=_float, parse_int=_int)
    except RecursionError:
        raise _refuse("too_deep", f"nested deeper than {MAX_DEPTH} levels", path) from None
    except ValueError as e:
        raise _refuse("malformed_json", f"not JSON: {e}", path) from None
    check(value, path)
    return value


def body_limit() -> int:
    return int(getattr(settings, "DATA_UPLOAD_MAX_MEMORY_SIZE", None) or 1024 * 1024)


def check_content_type(request: HttpRequest) -> None:
    """415 unless the body is declared ``application/json`` (UTF-8, if a charset is named)."""
    declared = (request.META.get("CONTENT_TYPE") or "").strip()
    media, _, params = declared.partition(";")
    charset = ""
    for p in params.split(";"):
        k, _, v = p.strip().partition("=")
        if k.strip().lower() == "charset":
            charset = v.strip().strip('"').lower()
    if media.strip().lower() != "application/json" or charset not in ("", "utf-8", "utf8"):
        raise ProtocolError(
            415,
            "unsupported_media_type",
            "Send the body as Content-Type: application/json (UTF-8).",
            "Content-Type",
        )


def read_json(request: HttpRequest) -> Any:
    """The request body, strictly parsed: 415 for another content type, 413 when too large, else 400s."""
    check_content_type(request)
    limit = body_limit()
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        declared = 0
    if declared > limit:
        raise ProtocolError(413, "too_large", f"The body is larger than {limit} bytes.")
    raw = request.body
    if len(raw) > limit:
        raise ProtocolError(413, "too_large", f"The body is larger than {limit} bytes.")
    return loads(raw)


def header_json(value: str, name: str) -> Any:
    """A JSON header (its latin-1 WSGI string back to bytes, then UTF-8), strictly parsed; field = ``name``."""
    try:
        raw = value.encode("latin-1")
    except UnicodeEncodeError:
        raw = value.encode("utf-8", "surrogatepass")
    try:
        return loads(raw)
    except ProtocolError as e:
        raise ProtocolError(400, e.code, f"{name}: {e.message}", name) from None


# ---------------------------------------------------------------- schema types


def _utc(value: Any) -> datetime:
    if not isinstance(value, str) or not _DATE.fullmatch(value):
        raise ValueError("a date is an ISO 8601 string with a UTC offset, e.g. 2026-11-25T10:00:00Z")
    try:
        parsed = datetime.fromisoformat(value.upper())  # digits past microseconds are cut
    except ValueError as e:
        raise ValueError(f"not a valid date: {e}") from None
    offset = parsed.utcoffset()
    if offset is None or abs(offset) > MAX_OFFSET:
        raise ValueError("the UTC offset must lie within -14:00 and +14:00")
    try:
        utc = parsed.astimezone(UTC)
    except OverflowError:
        raise ValueError("the date is out of range") from None
    if utc < EARLIEST:
        raise ValueError("the date is before 1970")
    return utc


UtcDatetime = Annotated[
    datetime,
    BeforeValidator(_utc),
    WithJsonSchema({"type": "string", "format": "date-time"}),
]


def _bounded(details: dict[str, Any]) -> dict[str, Any]:
    if len(details) > DETAILS_MAX_KEYS:
        raise ValueError(f"at most {DETAILS_MAX_KEYS} keys")
    nodes = 0
    stack: list[tuple[Any, int]] = [(details, 1)]
    while stack:
        node, depth = stack.pop()
        nodes += 1
        if nodes > DETAILS_MAX_NODES:
            raise ValueError(f"at most {DETAILS_MAX_NODES} values in all")
        if isinstance(node, dict | list):
            if depth > DETAILS_MAX_DEPTH:
                raise ValueError(f"nested at most {DETAILS_MAX_DEPTH} levels")
            items = node.values() if isinstance(node, dict) else node
            if isinstance(node, dict) and any(len(k) > 64 for k in node):
                raise ValueError("keys of at most 64 characters")
            stack.extend((v, depth + 1) for v in items)
        elif isinstance(node, str):
            if len(node) > DETAILS_MAX_STRING:
                raise ValueError(f"strings of at most {DETAILS_MAX_STRING} characters")
        elif isinstance(node, float):
            if not math.isfinite(node):
                raise ValueError("numbers must be finite")
        elif isinstance(node, int) and not isinstance(node, bool):
            if not INT_MIN <= node <= INT_MAX:
                raise ValueError("integers within signed 64 bits")
        elif node is not None and not isinstance(node, bool):
            raise ValueError("values are JSON strings, numbers, booleans, null, lists and objects")
    check(details)  # NUL, surrogates, integer range: also when called without the wire parse
    if len(json.dumps(details, separators=(",", ":"))) > DETAILS_MAX_BYTES:
        raise ValueError(f"at most {DETAILS_MAX_BYTES} bytes as JSON")
    return details


Details = Annotated[dict[str, Any], AfterValidator(_bounded)]


def openapi_body(model: type) -> dict[str, Any]:
    """An OpenAPI ``requestBody`` for a body parsed by hand (``read_json`` + ``model``), its schema
    inlined (pydantic's ``#/$defs`` refs do not resolve inside an OpenAPI document)."""
    schema = model.model_json_schema()  # type: ignore[attr-defined]
    defs = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return inline(defs[ref.removeprefix("#/$defs/")])
            return {k: inline(v) for k, v in node.items()}
        if isinstance(node, list):
            return [inline(v) for v in node]
        return node

    return {"required": True, "content": {"application/json": {"schema": inline(schema)}}}
