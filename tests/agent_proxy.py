"""A fault-injecting HTTP proxy in front of a real server, for agent and simulator tests.

It is real HTTP on 127.0.0.1: the agent talks to it exactly as to the server. Faults: the server
is down (connection closed with no answer), 503 with Retry-After, a manifest changed in transit,
artifact bytes flipped in transit, an artifact cut half-way, "the server did it but the answer
was lost" (forward, then close), which is what makes exactly-once delivery worth testing, and a
replay: every manifest the server sends is captured per device token (``captured``), and
``replay(body)`` answers manifest polls with a captured body instead of asking the server, as an
attacker on the path would. Uploads alone (POST) can fail: ``500_uploads`` answers them 500,
``slow_uploads`` holds them ``delay`` seconds before forwarding (past the agent's timeout).
"""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import requests

HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding", "server", "date"}


class Proxy:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.mode: set[str] = set()
        self.delay = 2.0
        self.log: list[tuple[str, str, int]] = []  # (method, path + range, status or 0 for dropped)
        self.captured: dict[str, list[bytes]] = {}  # device token -> manifest bodies (200) seen, in order
        self.replayed: bytes | None = None
        self.lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a: object) -> None:
                pass

            def do_GET(self) -> None:
                proxy.handle(self)

            def do_POST(self) -> None:
                proxy.handle(self)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.http = requests.Session()

    def start(self) -> Proxy:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def replay(self, body: bytes | None) -> None:
        """Answer every manifest poll with ``body`` (a captured manifest), or stop (None)."""
        self.replayed = body
        self.mode.discard("replay_manifest")
        if body is not None:
            self.mode.add("replay_manifest")

    def hits(self, fragment: str) -> list[tuple[str, str, int]]:
        with self.lock:
            return [h for h in self.log if fragment in h[1]]

    def _record(self, h: http.server.BaseHTTPRequestHandler, status: int) -> None:
        with self.lock:
            self.log.append((h.command, f"{h.path} {h.headers.get('Range') or ''}".strip(), status))

    @staticmethod
    def _drop(h: http.server.BaseHTTPRequestHandler) -> None:
        h.close_connection = True
        h.connection.shutdown(2)

    def handle(self, h: http.server.BaseHTTPRequestHandler) -> None:
        body = h.rfile.read(int(h.headers.get("Content-Length") or 0)) if h.command == "POST" else None
        mode = set(self.mode)
        if "down" in mode:
            self._record(h, 0)
            return self._drop(h)
        if "503" in mode:
            self._record(h, 503)
            h.send_response(503)
            h.send_header("Retry-After", "2")
            h.send_header("Content-Length", "0")
            h.end_headers()
            return None
        is_manifest = h.path.startswith("/api/v1/manifest")
        if "replay_manifest" in mode and is_manifest and self.replayed is not None:
            self._record(h, 200)
            h.send_response(200)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(self.replayed)))
            h.end_headers()
            h.wfile.write(self.replayed)
            return None
        if "500_uploads" in mode and h.command == "POST":
            self._record(h, 500)
            h.send_response(500)
            h.send_header("Content-Length", "0")
            h.end_headers()
            return None
        if "slow_uploads" in mode and h.command == "POST":
            time.sleep(self.delay)
        headers = {k: v for k, v in h.headers.items() if k.lower() not in ("host", "content-length", "connection")}
        up = self.http.request(h.command, self.upstream + h.path, headers=headers, data=body, timeout=30)
        data = up.content
        if "lose_answer" in mode and h.command == "POST":
            self._record(h, 0)  # the server did it; the device never hears so
            return self._drop(h)
        if is_manifest and up.status_code == 200:
            token = (h.headers.get("Authorization") or "").removeprefix("Bearer ").strip()
            with self.lock:
                self.captured.setdefault(token, []).append(data)
        if "tamper_manifest" in mode and is_manifest and up.status_code == 200:
            doc = json.loads(data)
            doc["manifest"]["poll_interval"] = 1  # a small change an attacker might want
            data = json.dumps(doc).encode()
        is_artifact = h.path.startswith("/api/v1/artifacts/") and up.status_code in (200, 206)
        if "flip_artifact" in mode and is_artifact:
            data = bytes(b ^ 0xFF if i % 97 == 0 else b for i, b in enumerate(data))
        cut = is_artifact and "cut_artifact" in mode
        self._record(h, up.status_code)
        h.send_response(up.status_code)
        for k, v in up.headers.items():
            if k.lower() not in HOP:
                h.send_header(k, v)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        if cut:
            self.mode.discard("cut_artifact")  # once: the next attempt goes through
            h.wfile.write(data[: len(data) // 2])
            h.wfile.flush()
            return self._drop(h)
        h.wfile.write(data)
        return None


@contextmanager
def proxy_to(upstream: str) -> Iterator[Proxy]:
    p = Proxy(upstream).start()
    try:
        yield p
    finally:
        p.stop()
