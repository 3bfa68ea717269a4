"""A small HTTP client of the management API (requests), turning error bodies into exceptions."""

from __future__ import annotations

from typing import Any

import requests

from edgefleet_cli import __version__

TIMEOUT = 60


class ApiError(Exception):
    """The server refused: ``status``, the protocol's ``code``, ``message`` and ``field``."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field

    def __str__(self) -> str:
        where = f" ({self.field})" if self.field else ""
        return f"{self.message}{where} [{self.status} {self.code}]"


class Unreachable(Exception):
    pass


class Client:
    def __init__(self, url: str, token: str) -> None:
        self.url = url.rstrip("/")
        self.session = requests.Session()
        self.session.headers.update({"Authorization": f"Bearer {token}", "User-Agent": f"edgefleet-cli/{__version__}"})

    def request(self, method: str, path: str, **kw: Any) -> Any:
        url = path if path.startswith("http") else self.url + (path if path.startswith("/api/") else "/api/v1" + path)
        try:
            resp = self.session.request(method, url, timeout=kw.pop("timeout", TIMEOUT), **kw)
        except requests.RequestException as exc:
            raise Unreachable(f"cannot reach {self.url}: {exc}") from None
        if resp.status_code >= 400:
            try:
                err = resp.json()["error"]
                raise ApiError(resp.status_code, err.get("code", ""), err.get("message", ""), err.get("field"))
            except (ValueError, KeyError, TypeError):
                raise ApiError(resp.status_code, f"http_{resp.status_code}", resp.text[:300] or resp.reason) from None
        if resp.status_code == 204 or not resp.content:
            return None
        return resp.json()

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params={k: v for k, v in params.items() if v is not None})

    def post(self, path: str, body: Any = None, **kw: Any) -> Any:
        if "files" in kw:
            return self.request("POST", path, **kw)
        return self.request("POST", path, json=body if body is not None else {})

    def pages(self, path: str, limit: int | None = None, **params: Any) -> Any:
        """Every item of a list, following the cursor (up to ``limit`` items)."""
        cursor, seen = None, 0
        while True:
            page = self.get(path, cursor=cursor, limit=min(200, limit - seen) if limit else 200, **params)
            for item in page["items"]:
                yield item
                seen += 1
                if limit and seen >= limit:
                    return
            cursor = page.get("next_cursor")
            if not cursor:
                return
