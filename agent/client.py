"""HTTP side of device protocol v1: enroll, manifest (ETag, X-Agent-State), Range downloads, events, telemetry.

Failures are sorted into two kinds the agent treats differently: ``ServerAway`` (network error,
429/503 or any 5xx: try again later, keep everything) and ``Rejected`` (a 4xx the server means:
do not send the same thing again).
"""

from __future__ import annotations

import json
import os
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import requests

from agent import __version__

CHUNK = 64 * 1024


class ServerAway(Exception):
    """The server could not be reached or asked us to come back later."""

    def __init__(self, message: str, retry_after: float | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.status = status


class Rejected(Exception):
    """The server answered with a 4xx: the request itself is wrong and must not be repeated as is."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(f"{status} {code}: {message}" + (f" ({field})" if field else ""))
        self.status = status
        self.code = code
        self.field = field


class DownloadIncomplete(Exception):
    """The download stopped early; the partial file is kept so the next attempt resumes it."""


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        from datetime import UTC, datetime

        return max(0.0, (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds())
    except (TypeError, ValueError):
        return None


class Client:
    def __init__(
        self,
        server: str,
        token: str | None = None,
        timeout: float = 15.0,
        session: requests.Session | None = None,
    ) -> None:
        self.server = server.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.http = session or requests.Session()
        self.http.headers["User-Agent"] = f"edgefleet-agent/{__version__}"
        # The last manifest poll's X-Rounds header (None: the server gave none, or the poll failed).
        self.rounds_hint: str | None = None

    # -- plumbing ---------------------------------------------------------------------------------
    def _url(self, path: str) -> str:
        return path if path.startswith(("http://", "https://")) else f"{self.server}{path}"

    def _request(self, method: str, path: str, **kw: Any) -> requests.Response:
        headers = kw.pop("headers", {})
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            resp = self.http.request(method, self._url(path), headers=headers, timeout=self.timeout, **kw)
        except requests.RequestException as e:
            raise ServerAway(f"{method} {path}: {type(e).__name__}: {e}") from e
        self._raise_for(resp, f"{method} {path}")
        return resp

    @staticmethod
    def _raise_for(resp: requests.Response, what: str) -> None:
        status = resp.status_code
        if status in (429, 503) or status >= 500:
            retry_after = parse_retry_after(resp.headers.get("Retry-After"))
            resp.close()
            raise ServerAway(f"{what}: {status}", retry_after=retry_after, status=status)
        if status >= 400:
            code, message, field = "http_error", resp.reason or "", None
            try:
                err = resp.json()["error"]
                code, message, field = err.get("code", code), err.get("message", message), err.get("field")
            except (ValueError, KeyError, TypeError, AttributeError):
                pass
            raise Rejected(status, code, message, field)

    # -- calls --------------------------------------------------------------------------------------
    def enroll(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._request("POST", "/api/v1/enroll", json=body).json()

    def signing_key(self) -> dict[str, Any]:
        return self._request("GET", "/api/v1/signing-key").json()

    def manifest(self, etag: str | None, state: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
        """``(document, etag)``; ``(None, etag)`` when the server says 304 Not Modified."""
        headers = {"X-Agent-State": json.dumps(state, separators=(",", ":"))}
        if etag:
            headers["If-None-Match"] = etag
        self.rounds_hint = None  # until this poll's answer says otherwise: ask (agent/rounds.py)
        resp = self._request("GET", "/api/v1/manifest", headers=headers)
        self.rounds_hint = resp.headers.get("X-Rounds")
        if resp.status_code == 304:
            return None, etag
        return resp.json(), resp.headers.get("ETag")

    def post_events(self, events: list[dict[str, Any]]) -> dict[str, Any]:
        return self._post_json("/api/v1/events", {"events": events})

    def post_telemetry(self, reports: list[dict[str, Any]]) -> dict[str, Any]:
        return self._post_json("/api/v1/telemetry", {"reports": reports})

    def get_json(self, path: str) -> Any:
        return self._request("GET", path).json()

    def post_json(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._post_json(path, body)

    def _post_json(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST strict JSON. A body that is no JSON at all (NaN, Infinity) is refused here as the
        server would refuse it (400), not mistaken for a network failure and retried forever."""
        try:
            data = json.dumps(body, allow_nan=False, separators=(",", ":")).encode("utf-8")
        except (ValueError, TypeError) as e:
            raise Rejected(400, "not_json", f"the body cannot be sent as JSON: {e}") from None
        headers = {"Content-Type": "application/json"}
        return self._request("POST", path, data=data, headers=headers).json()

    def download(self, url: str, part: Path, size: int) -> Path:
        """Fetch ``url`` into ``part``, resuming from what is there with ``Range``; fsync when whole.

        Raises ``DownloadIncomplete`` when the stream ends early (the part file is kept for resume).
        """
        have = part.stat().st_size if part.exists() else 0
        if have > size:
            part.unlink()
            have = 0
        if have == size:
            return part
        headers = {"Range": f"bytes={have}-"} if have else {}
        try:
            resp = self._request("GET", url, headers=headers, stream=True)
        except Rejected as e:
            if e.status == 416:  # our partial file does not fit the artifact; start over next time
                part.unlink(missing_ok=True)
                raise DownloadIncomplete("range not satisfiable; restarting") from e
            raise
        with resp:
            mode = "ab" if resp.status_code == 206 else "wb"
            with open(part, mode) as f:
                try:
                    self._copy(resp, f)
                except (requests.RequestException, OSError) as e:
                    f.flush()
                    os.fsync(f.fileno())
                    raise DownloadIncomplete(f"download interrupted at {f.tell()} bytes: {e}") from e
                f.flush()
                os.fsync(f.fileno())
        got = part.stat().st_size
        if got != size:
            if got > size:
                part.unlink()
            raise DownloadIncomplete(f"got {got} of {size} bytes")
        return part

    def _copy(self, resp: requests.Response, f: Any) -> None:
        """Stream the body into ``f``; a subclass may interrupt it (the simulator's crash scenario).

        ``read1`` hands over whatever has arrived, so bytes received before a cut are kept for resume.
        """
        raw = resp.raw
        while True:
            try:
                chunk = raw.read1(CHUNK)
            except Exception as e:  # urllib3 raises its own types for a cut connection
                raise requests.ConnectionError(str(e)) from e
            if not chunk:
                return
            f.write(chunk)
