"""Peak memory of the web process while a model is uploaded: it should not grow with file size.

Starts gunicorn (1 sync worker) on 127.0.0.1 with embedded defaults in a temp data dir, streams
multipart uploads of valid ONNX models (a large initializer) to ``POST /api/v1/models/<name>/versions``
and reads the worker's peak RSS (``VmHWM``) before and after. A fresh server per size, so peaks do not
carry over. Prints a table.

    .venv/bin/python bench/upload_memory.py            # 50 MB and 500 MB
    .venv/bin/python bench/upload_memory.py --sizes 50  # just one size
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BOUNDARY = "edgefleet-bench-boundary"


def build_model(path: Path, mb: int) -> None:
    from tests.onnx_models import large_mlp, save

    save(large_mlp(mb * 1_000_000), path)


def kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def worker_pid(master: int) -> int:
    deadline = time.time() + 30
    while time.time() < deadline:
        kids = Path(f"/proc/{master}/task/{master}/children").read_text().split()
        if kids:
            return int(kids[0])
        time.sleep(0.2)
    raise RuntimeError("gunicorn worker did not start")


def upload(port: int, token: str, name: str, label: str, path: Path) -> tuple[int, dict, float]:
    """Stream a multipart body from disk (the client does not hold the file either)."""
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="label"\r\n\r\n{label}\r\n'
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{path.name}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    tail = f"\r\n--{BOUNDARY}--\r\n".encode()
    length = len(head) + path.stat().st_size + len(tail)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    t0 = time.perf_counter()
    conn.putrequest("POST", f"/api/v1/models/{name}/versions")
    conn.putheader("Authorization", f"Bearer {token}")
    conn.putheader("Content-Type", f"multipart/form-data; boundary={BOUNDARY}")
    conn.putheader("Content-Length", str(length))
    conn.endheaders()
    conn.send(head)
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1024 * 1024), b""):
            conn.send(chunk)
    conn.send(tail)
    resp = conn.getresponse()
    body = json.loads(resp.read() or b"{}")
    conn.close()
    return resp.status, body, time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[50, 500], help="model sizes in MB")
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="edgefleet-bench-upload-"))
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL"}} | {
        "EDGEFLEET_DATA_DIR": str(work / "data"),
        "DJANGO_SETTINGS_MODULE": "edgefleet.settings",
    }
    py = sys.executable
    subprocess.run([py, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT, env=env, check=True)
    token = (
        subprocess.run(
            [
                py,
                "manage.py",
                "shell",
                "-c",
                "from django.contrib.auth.models import Group, User\n"
                "from accounts.models import ApiToken\n"
                "u = User.objects.create_user('bench')\n"
                "u.groups.add(Group.objects.get(name='operator'))\n"
                "print(ApiToken.issue(u, 'bench')[1])",
            ],
            cwd=ROOT,
            env=env,
            check=True,
            capture_output=True,
            text=True,
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    small = work / "warmup.onnx"
    build_model(small, 1)

    rows = []
    for mb in args.sizes:
        path = work / f"model-{mb}mb.onnx"
        build_model(path, mb)
        server = subprocess.Popen(
            [py, "-m", "gunicorn", "edgefleet.wsgi", "-w", "1", "-b", f"127.0.0.1:{args.port}", "--timeout", "900"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            pid = worker_pid(server.pid)
            for _ in range(100):
                try:
                    status, _, _ = upload(args.port, token, f"warm{mb}", "v1", small)
                    break
                except ConnectionRefusedError:
                    time.sleep(0.2)
            before = kib(pid, "VmHWM")
            status, body, seconds = upload(args.port, token, f"big{mb}", "v1", path)
            after = kib(pid, "VmHWM")
            rows.append((mb, path.stat().st_size, status, before, after, seconds, body.get("status")))
        finally:
            server.terminate()
            server.wait(30)
            path.unlink()

    print(f"\nweb process: gunicorn 1 sync worker, chunk 1 MiB, {os.cpu_count()} CPUs")
    print(f"{'file':>8} {'bytes':>12} {'HTTP':>5} {'peak RSS pre':>16} {'peak RSS post':>15} {'growth':>9} {'MB/s':>7}")
    for mb, size, status, before, after, seconds, _ in rows:
        print(
            f"{mb:>6}MB {size:>12,} {status:>5} {before / 1024:>13.1f} MB {after / 1024:>12.1f} MB "
            f"{(after - before) / 1024:>6.1f} MB {size / seconds / 1e6:>7.1f}"
        )


if __name__ == "__main__":
    main()
