"""Fixtures shared by the whole suite: real PostgreSQL, Redis, Celery worker and Chromium."""

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

# Files that run a live server, real workers and a simulated fleet and then judge what happened in
# time (gates on latency, rollbacks within a deadline). Under `make test` (`-n 2 --dist loadfile`)
# they are one scope, run one after another on one xdist worker, so two of them never share the two
# cores; every other file is its own scope, as with plain `loadfile`.
LIVE_FILES = {
    "test_e2e_story.py",
    "test_campaign_e2e.py",
    "test_campaign_worker.py",
    "test_rounds_e2e.py",
    "test_faults.py",
    "test_protocol_limits.py",
    "test_simulator.py",
}


@pytest.hookimpl(optionalhook=True)  # an xdist hook: pytest -p no:xdist must still load this file
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object | None:
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class LiveFilesTogether(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return "live" if path.rsplit("/", 1)[-1] in LIVE_FILES else path

    return LiveFilesTogether(config, log)


@pytest.fixture(scope="session", autouse=True)
def _clean_redis() -> None:
    """Start from an empty Redis db, so a queue or cache left by an earlier run cannot leak in.

    Not under mutation testing (mutmut sets MUTANT_UNDER_TEST): that runs only pure tests, hundreds of
    times, and must not need (or wipe) Redis.
    """
    if "MUTANT_UNDER_TEST" in os.environ:
        return
    import redis
    from django.conf import settings

    redis.Redis.from_url(settings.REDIS_URL).flushdb()


@pytest.fixture(autouse=True)
def _fresh_rate_limits() -> None:
    """Every test starts with full device buckets: they live in Redis, which tests do not roll back, and
    all test clients share one IP. Not under mutation testing: its pure tests use no buckets, no Redis."""
    if "MUTANT_UNDER_TEST" in os.environ:
        return
    from fleet import limits

    limits.reset()


@pytest.fixture
def celery_worker(transactional_db: None) -> Iterator[object]:
    """A real Celery worker consuming every queue from Redis, in threads of this process, on the test database.

    Tasks run the same code as in a deployed worker (routes, delivery guard, validation in a sandbox
    child process); time limits need the prefork pool, so tests of those start worker processes
    (``tests/worker_procs.py``).
    """
    from celery.contrib.testing.worker import start_worker

    from edgefleet.celery import app
    from edgefleet.queues import QUEUES

    app.control.purge()
    with start_worker(
        app, pool="threads", concurrency=2, perform_ping_check=False, shutdown_timeout=30, queues=list(QUEUES)
    ) as worker:
        yield worker


@pytest.fixture
def roles() -> None:
    """The role groups a migration made; transactional tests flush them, so they come back here."""
    from django.contrib.auth.models import Group

    for name in ("viewer", "operator", "admin"):
        Group.objects.get_or_create(name=name)


@pytest.fixture
def store(settings: object, tmp_path: Path) -> Path:
    """Artifacts go to a fresh directory per test, so 'nothing stored' can be checked on disk."""
    root = tmp_path / "store"
    root.mkdir()
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {"BACKEND": "django.core.files.storage.FileSystemStorage", "OPTIONS": {"location": str(root)}},
    }
    return root


@pytest.fixture
def operator(db: None, django_user_model: type) -> object:
    from django.contrib.auth.models import Group

    user = django_user_model.objects.create_user("olivia", password="pw-olivia-123")
    user.groups.add(Group.objects.get_or_create(name="operator")[0])
    return user


@pytest.fixture
def viewer(db: None, django_user_model: type) -> object:
    from django.contrib.auth.models import Group

    user = django_user_model.objects.create_user("victor", password="pw-victor-123")
    user.groups.add(Group.objects.get_or_create(name="viewer")[0])
    return user


@pytest.fixture
def operator_client(client: object, operator: object) -> object:
    client.force_login(operator)
    return client


@pytest.fixture
def viewer_client(client: object, viewer: object) -> object:
    client.force_login(viewer)
    return client


def chromium_path() -> str:
    path = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).exists():
        pytest.fail("Debian's chromium is needed for browser tests: apt-get install -y chromium")
    return path


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    """Debian's headless Chromium driven by Playwright (no browser download)."""
    from playwright.sync_api import sync_playwright

    # Playwright's sync API keeps an event loop in the test thread; the ORM calls stay synchronous.
    os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as pw:
        b = pw.chromium.launch(
            executable_path=chromium_path(),
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        yield b
        b.close()


@pytest.fixture
def page(browser: object, request: pytest.FixtureRequest) -> Iterator[object]:
    """A fresh browser page; console errors fail the test and a screenshot is kept for people."""
    context = browser.new_context(viewport={"width": 1366, "height": 860})
    pg = context.new_page()
    errors: list[str] = []
    pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.console_errors = errors
    yield pg
    out = Path(os.environ.get("TEST_OUTPUT_DIR", "test-output")) / "screenshots"
    out.mkdir(parents=True, exist_ok=True)
    try:
        pg.screenshot(path=str(out / f"{request.node.name}.png"), full_page=True)
    finally:
        context.close()


@pytest.fixture
def login(live_server: object) -> object:
    """Log a user in through the real login form in the browser."""

    def do(pg: object, username: str, password: str) -> None:
        pg.goto(f"{live_server.url}/login/")
        pg.fill("input[name=username]", username)
        pg.fill("input[name=password]", password)
        pg.click("button[type=submit]")
        pg.wait_for_load_state("networkidle")

    return do
