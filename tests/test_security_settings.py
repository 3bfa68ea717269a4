"""Transport and browser hardening: off for ``make run`` on http://localhost where it would get in the
way (secure cookies, HSTS, HTTPS redirect), on with ``EDGEFLEET_HTTPS=1``; always on where it costs
nothing (CSP, nosniff, referrer policy, frame denial, HttpOnly/SameSite cookies). ``check --deploy`` is
clean with the production environment the README documents.

Settings are read once at start-up, so each case runs in a fresh process with its own environment."""

import json
import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def clean_env(tmp_path: Path, **over: str) -> dict:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DATABASE_URL", "REDIS_URL", "CELERY_", "EDGEFLEET_", "DJANGO_", "SECRET_KEY", "DEBUG"))
        and k not in {"ALLOWED_HOSTS", "CSRF_TRUSTED_ORIGINS"}
    }
    env.update({"DJANGO_SETTINGS_MODULE": "edgefleet.settings", "EDGEFLEET_DATA_DIR": str(tmp_path), **over})
    return env


def fetch(tmp_path: Path, env_over: dict, *, secure: bool, host: str = "localhost", headers: dict | None = None):
    """GET /login/ through the whole middleware stack in a fresh process: status and headers."""
    code = f"""
import json, django
django.setup()
from django.test import Client
r = Client().get("/login/", secure={secure!r}, HTTP_HOST={host!r}, headers={headers or {}!r})
print(json.dumps({{"status": r.status_code, "headers": dict(r.headers),
                  "cookies": {{k: {{a: str(m[a]) for a in ("secure", "httponly", "samesite")}}
                              for k, m in r.cookies.items()}}}}))
"""
    done = subprocess.run(
        [sys.executable, "-c", code], env=clean_env(tmp_path, **env_over), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def production_env() -> dict:
    """The production environment as README.md documents it, with a real random secret."""
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- production-env -->\s*```sh\n(.*?)```", readme, re.S)
    assert block, "README.md documents the production environment in a block marked <!-- production-env -->"
    env = {}
    for line in block.group(1).splitlines():
        line = line.strip().rstrip("\\").strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            env[key] = value
    assert env["SECRET_KEY"].startswith("<")  # a placeholder, filled here as a person would
    env["SECRET_KEY"] = secrets.token_urlsafe(50)
    return env


def test_the_documented_production_environment_is_the_short_one() -> None:
    env = production_env()
    assert env["DEBUG"] == "0" and env["EDGEFLEET_HTTPS"] == "1" and env["ALLOWED_HOSTS"]


def test_defaults_serve_plain_http_on_localhost(tmp_path: Path) -> None:
    r = fetch(tmp_path, {}, secure=False)
    assert r["status"] == 200  # no redirect to https
    h = r["headers"]
    assert "Strict-Transport-Security" not in h
    assert r["cookies"]["csrftoken"]["secure"] == ""
    # Browser hardening that costs nothing on http is on anyway.
    assert h["X-Frame-Options"] == "DENY"
    assert h["X-Content-Type-Options"] == "nosniff"
    assert h["Referrer-Policy"] == "same-origin"
    assert "Content-Security-Policy" in h


def test_https_switch_redirects_plain_http(tmp_path: Path) -> None:
    r = fetch(tmp_path, {"EDGEFLEET_HTTPS": "1"}, secure=False)
    assert r["status"] == 301 and r["headers"]["Location"] == "https://localhost/login/"


def test_https_switch_turns_on_secure_cookies_and_hsts(tmp_path: Path) -> None:
    r = fetch(tmp_path, {"EDGEFLEET_HTTPS": "1"}, secure=True)
    assert r["status"] == 200
    assert r["headers"]["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains; preload"
    csrf = r["cookies"]["csrftoken"]
    assert csrf["secure"] is not None and csrf["secure"] != "" and csrf["samesite"] == "Lax"


def test_the_session_cookie_is_secure_httponly_and_samesite_under_https(tmp_path: Path) -> None:
    code = """
import json, django
django.setup()
from django.conf import settings as s
print(json.dumps([s.SESSION_COOKIE_SECURE, s.SESSION_COOKIE_HTTPONLY, s.SESSION_COOKIE_SAMESITE,
                  s.CSRF_COOKIE_SECURE, s.SECURE_SSL_REDIRECT, s.SECURE_PROXY_SSL_HEADER]))
"""
    for over, want in [
        ({}, [False, True, "Lax", False, False, None]),
        ({"EDGEFLEET_HTTPS": "1"}, [True, True, "Lax", True, True, None]),
    ]:
        done = subprocess.run(
            [sys.executable, "-c", code], env=clean_env(tmp_path, **over), capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout.strip().splitlines()[-1]) == want, over


def test_each_knob_overrides_the_switch(tmp_path: Path) -> None:
    over = {
        "EDGEFLEET_HTTPS": "1",
        "EDGEFLEET_HSTS_SECONDS": "3600",
        "EDGEFLEET_HSTS_INCLUDE_SUBDOMAINS": "0",
        "EDGEFLEET_HSTS_PRELOAD": "0",
        "EDGEFLEET_SSL_REDIRECT": "0",
    }
    r = fetch(tmp_path, over, secure=True)
    assert r["headers"]["Strict-Transport-Security"] == "max-age=3600"
    assert fetch(tmp_path, over, secure=False)["status"] == 200  # the proxy redirects, not us


def test_x_forwarded_proto_is_trusted_only_when_asked(tmp_path: Path) -> None:
    """Behind a TLS-terminating proxy the app sees http; it believes the proxy's header only when told
    the proxy sets it (otherwise any client could claim https)."""
    proxied = {"X-Forwarded-Proto": "https"}
    assert fetch(tmp_path, {"EDGEFLEET_HTTPS": "1"}, secure=False, headers=proxied)["status"] == 301
    trusted = {"EDGEFLEET_HTTPS": "1", "EDGEFLEET_TRUST_X_FORWARDED_PROTO": "1"}
    r = fetch(tmp_path, trusted, secure=False, headers=proxied)
    assert r["status"] == 200 and "Strict-Transport-Security" in r["headers"]
    assert fetch(tmp_path, trusted, secure=False)["status"] == 301  # a request the proxy says is http


def run_check_deploy(tmp_path: Path, env_over: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=clean_env(tmp_path, **env_over),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_check_deploy_is_clean_with_the_documented_production_environment(tmp_path: Path) -> None:
    done = run_check_deploy(tmp_path, production_env())
    assert done.returncode == 0, done.stdout + done.stderr
    assert "System check identified no issues" in done.stdout, done.stdout + done.stderr


def test_check_deploy_is_not_clean_without_https(tmp_path: Path) -> None:
    """The clean result above means something: the same check flags a deployment left on http."""
    env = production_env()
    del env["EDGEFLEET_HTTPS"]
    done = run_check_deploy(tmp_path, env)
    assert done.returncode != 0
    for warning in ("security.W004", "security.W008", "security.W012", "security.W016"):
        assert warning in done.stderr + done.stdout


@pytest.mark.parametrize("bad", ["change-me", "django-insecure-" + "a1" * 30])
def test_check_deploy_flags_a_weak_secret(tmp_path: Path, bad: str) -> None:
    done = run_check_deploy(tmp_path, {**production_env(), "SECRET_KEY": bad})
    assert done.returncode != 0 and "security.W009" in done.stderr + done.stdout


def directive_set(header: str) -> set[str]:
    return {part.strip() for part in header.split(";")}  # django-csp's order varies between processes


def test_the_policy_is_the_same_with_and_without_https(tmp_path: Path) -> None:
    """The browser tests (on http) therefore run under exactly the production policy."""
    plain = fetch(tmp_path, {}, secure=False)["headers"]["Content-Security-Policy"]
    production = fetch(tmp_path, {"EDGEFLEET_HTTPS": "1"}, secure=True)["headers"]["Content-Security-Policy"]
    assert directive_set(plain) == directive_set(production) and "default-src 'self'" in production


def test_the_policy_can_report_instead_of_block(tmp_path: Path) -> None:
    h = fetch(tmp_path, {"EDGEFLEET_CSP": "report-only"}, secure=False)["headers"]
    assert "Content-Security-Policy" not in h and "default-src 'self'" in h["Content-Security-Policy-Report-Only"]
