"""Settings come from the environment; with nothing set, EdgeFleet runs on embedded defaults.

Embedded defaults: SQLite, a file-system Celery broker and a file cache under ``EDGEFLEET_DATA_DIR``,
so ``make run`` works on a machine with only Python. Set ``DATABASE_URL`` and ``REDIS_URL`` to use
PostgreSQL and Redis (what production and the test suite use).
"""

import ipaddress
import os
import secrets
from datetime import timedelta
from pathlib import Path

import dj_database_url

from edgefleet import serving

BASE_DIR = Path(__file__).resolve().parent.parent
env = os.environ


def env_bool(name: str, default: bool) -> bool:
    value = env.get(name)
    return default if value is None else value.strip().lower() in {"1", "true", "yes", "on"}


def env_int(name: str, default: int) -> int:
    return int(env.get(name, default))


def env_float(name: str, default: float) -> float:
    return float(env.get(name, default))


DATA_DIR = Path(env.get("EDGEFLEET_DATA_DIR", BASE_DIR / "var"))
DATA_DIR.mkdir(parents=True, exist_ok=True)


def _dev_secret(path: Path) -> str:
    """A secret made once per data directory, so development never runs on a published key."""
    if not path.exists():
        path.write_text(secrets.token_urlsafe(50))
        path.chmod(0o600)
    return path.read_text().strip()


SECRET_KEY = env.get("SECRET_KEY") or _dev_secret(DATA_DIR / "secret_key")
DEBUG = env_bool("DEBUG", False)
ALLOWED_HOSTS = [
    h.strip() for h in env.get("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1],testserver").split(",") if h.strip()
]
CSRF_TRUSTED_ORIGINS = [o.strip() for o in env.get("CSRF_TRUSTED_ORIGINS", "").split(",") if o.strip()]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django_celery_beat",
    "accounts",
    "fleet",
    "ota",
    "telemetry",
    "rollout",
    "notify",
    "ops",
    "demo",
]

MIDDLEWARE = [
    "ops.middleware.RequestIdMiddleware",  # outermost: every log line of the request carries its id
    "ops.middleware.MetricsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "edgefleet.middleware.ServiceAwayMiddleware",
    "fleet.middleware.DeviceEdgeMiddleware",  # load shedding and rate limits, before any body is read
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "accounts.middleware.OperatorTimezoneMiddleware",
]

ROOT_URLCONF = "edgefleet.urls"
WSGI_APPLICATION = "edgefleet.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "accounts.context_processors.roles",
            ],
            "builtins": ["edgefleet.template_display"],  # |plain, |size, |number… on every page
        },
    },
]

DATABASES = {
    "default": dj_database_url.parse(
        env.get("DATABASE_URL", f"sqlite:///{DATA_DIR / 'edgefleet.sqlite3'}"),
        conn_max_age=env_int("DB_CONN_MAX_AGE", 60),
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # WAL lets web, worker and beat share the embedded database; IMMEDIATE transactions take the
    # write lock up front, so concurrent writers wait (timeout) instead of failing "database is locked".
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "timeout": 30,
        "transaction_mode": "IMMEDIATE",
    }
if env.get("TEST_DATABASE_NAME"):
    DATABASES["default"]["TEST"] = {"NAME": env["TEST_DATABASE_NAME"]}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env.get("REDIS_URL", "")
if REDIS_URL:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}}
else:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
            "LOCATION": str(DATA_DIR / "cache"),
        }
    }

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = DATA_DIR / "static"
STATIC_ROOT.mkdir(parents=True, exist_ok=True)
STATICFILES_DIRS = [BASE_DIR / "static"]
try:  # Plotly's own JS served by the app ({% static 'vendor/plotly.min.js' %}), never a CDN.
    import plotly as _plotly

    STATICFILES_DIRS.append(("vendor", Path(_plotly.__file__).parent / "package_data"))
except ImportError:  # pragma: no cover
    pass
STORAGES = {
    "default": {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": str(env.get("EDGEFLEET_ARTIFACT_DIR", DATA_DIR / "artifacts"))},
    },
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
if env.get("EDGEFLEET_STORAGE", "local") == "s3":
    # S3-compatible object storage for multi-node deployments; downloads use presigned URLs.
    STORAGES["default"] = {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": env.get("S3_BUCKET", "edgefleet"),
            "endpoint_url": env.get("S3_ENDPOINT_URL") or None,
            "querystring_expire": env_int("S3_URL_EXPIRE_SECONDS", 3600),
        },
    }
WHITENOISE_USE_FINDERS = True

# Uploads stream to disk in 1 MiB chunks: memory stays flat whatever the file size.
FILE_UPLOAD_MAX_MEMORY_SIZE = 1024 * 1024
DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("EDGEFLEET_MAX_JSON_BYTES", 1024 * 1024)
FILE_UPLOAD_TEMP_DIR = str(DATA_DIR / "uploads")
Path(FILE_UPLOAD_TEMP_DIR).mkdir(parents=True, exist_ok=True)

# Celery: Redis when configured, otherwise a broker on the local file system (no server needed).
# Queues, routes and time limits: edgefleet/queues.py (docs/architecture.md shows them).
from edgefleet import queues as _queues  # noqa: E402

EDGEFLEET_VALIDATION_TIMEOUT = env_int("EDGEFLEET_VALIDATION_TIMEOUT", 300)  # wall clock of one validation
# "localhost" names no server (the file broker has none); without it kombu warns "No hostname was
# supplied" in every process that connects.
CELERY_BROKER_URL = env.get("CELERY_BROKER_URL") or REDIS_URL or "filesystem://localhost/"
if CELERY_BROKER_URL.startswith("filesystem://"):
    _broker_dir = DATA_DIR / "broker"
    for _sub in ("queue", "processed", "control"):
        (_broker_dir / _sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir / "queue"),
        "data_folder_out": str(_broker_dir / "queue"),
        "processed_folder": str(_broker_dir / "processed"),
        "control_folder": str(_broker_dir / "control"),
        "store_processed": False,
    }
else:
    # An unacknowledged message comes back after the visibility timeout. It must outlast the longest
    # task (or a slow task would run twice), and no more: a dead worker's job should not wait an hour.
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "visibility_timeout": env_int(
            "CELERY_VISIBILITY_TIMEOUT", _queues.longest_hard_limit(EDGEFLEET_VALIDATION_TIMEOUT) + 60
        )
    }
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
# A task is acknowledged only after it ran: a worker killed mid-task leaves it for another worker.
# edgefleet/guard.py stops a message that killed its worker twice from coming back a third time.
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_ALWAYS_EAGER = False
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_QUEUES = {name: {"exchange": name, "routing_key": name} for name in _queues.QUEUES}
CELERY_TASK_DEFAULT_QUEUE = _queues.DEFAULT
CELERY_TASK_DEFAULT_EXCHANGE = _queues.DEFAULT
CELERY_TASK_DEFAULT_ROUTING_KEY = _queues.DEFAULT
CELERY_TASK_ROUTES = _queues.routes()
EDGEFLEET_METRICS_QUEUES = list(_queues.QUEUES)  # /metrics reports the length of each
CELERY_TASK_ANNOTATIONS = _queues.annotations(EDGEFLEET_VALIDATION_TIMEOUT)
CELERY_TASK_SOFT_TIME_LIMIT = _queues.DEFAULT_SOFT_LIMIT
CELERY_TASK_TIME_LIMIT = _queues.DEFAULT_HARD_LIMIT
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_TIMEZONE = "UTC"
CELERY_BEAT_SCHEDULE: dict = {}  # each app adds its periodic jobs in edgefleet/schedule.py

# EdgeFleet's own knobs.
EDGEFLEET_MAX_UPLOAD_BYTES = env_int("EDGEFLEET_MAX_UPLOAD_BYTES", 1024**3)
EDGEFLEET_POLL_INTERVAL = env_int("EDGEFLEET_POLL_INTERVAL", 60)
# Ready manifests a worker process keeps in memory (an LRU: the devices that poll stay, ~0.5 KB each;
# the rest are one Redis round trip away). fleet/manifests.py.
EDGEFLEET_POLL_READY_MAX = env_int("EDGEFLEET_POLL_READY_MAX", 300_000)
# A campaign change reaching more than this share of the fleet re-resolves every device at once
# instead of moving its devices in batches (rollout/moves.py).
EDGEFLEET_MOVE_GLOBAL_SHARE = env_float("EDGEFLEET_MOVE_GLOBAL_SHARE", 0.25)
# Fleets of at least this many devices show the status counts a beat job kept (fleet/overview.py).
EDGEFLEET_STATUS_KEPT_ABOVE = env_int("EDGEFLEET_STATUS_KEPT_ABOVE", 50_000)
EDGEFLEET_TELEMETRY_WINDOW = env_int("EDGEFLEET_TELEMETRY_WINDOW", 300)
# A signed manifest is valid this long (seconds), and re-signed once less than REFRESH is left.
EDGEFLEET_MANIFEST_TTL = env_int("EDGEFLEET_MANIFEST_TTL", 7 * 24 * 3600)
EDGEFLEET_MANIFEST_REFRESH = env_int("EDGEFLEET_MANIFEST_REFRESH", 24 * 3600)
EDGEFLEET_SIGNING_KEY = env.get("EDGEFLEET_SIGNING_KEY", "")  # base64 raw Ed25519 private key
EDGEFLEET_SIGNING_KEY_FILE = Path(env.get("EDGEFLEET_SIGNING_KEY_FILE", DATA_DIR / "signing_key"))
EDGEFLEET_DP_MECHANISM = env.get("EDGEFLEET_DP_MECHANISM", "laplace")
EDGEFLEET_DP_EPSILON = env_float("EDGEFLEET_DP_EPSILON", 1.0)
# Charged on the day the server receives reports: a day's windows (288 at 300 s) plus a day of
# spool from a device that was offline fit (docs/privacy.md).
EDGEFLEET_DP_DAILY_BUDGET = env_float("EDGEFLEET_DP_DAILY_BUDGET", 600.0)
# A report's window must end at most this long after the server's clock (device clocks drift) ...
EDGEFLEET_TELEMETRY_CLOCK_SKEW_SECONDS = env_int("EDGEFLEET_TELEMETRY_CLOCK_SKEW_SECONDS", 120)
# ... and start at most this long before it: a device offline for a day still delivers its spool.
EDGEFLEET_TELEMETRY_MAX_AGE_SECONDS = env_int("EDGEFLEET_TELEMETRY_MAX_AGE_SECONDS", 48 * 3600)
# The most inferences (input rows) per second a device can run: bounds every count in a report.
EDGEFLEET_TELEMETRY_MAX_INFERENCES_PER_SECOND = env_float("EDGEFLEET_TELEMETRY_MAX_INFERENCES_PER_SECOND", 10_000)
EDGEFLEET_MIN_COHORT = env_int("EDGEFLEET_MIN_COHORT", 20)
# Device-level privacy (issue 12, docs/privacy.md): a model's defaults until an operator saves its own.
# The health budget is the smallest at which a canary of 100 devices whose error rate goes 1 % → 10 %
# fails its gate within three windows (tests/test_privacy_policy.py pins it), with health rounds only
# while a wave soaks (three per device-day) and the canary summed as one group.
EDGEFLEET_PRIVACY_EPSILON_DRIFT_DAY = env_float("EDGEFLEET_PRIVACY_EPSILON_DRIFT_DAY", 4.0)
EDGEFLEET_PRIVACY_EPSILON_HEALTH_DAY = env_float("EDGEFLEET_PRIVACY_EPSILON_HEALTH_DAY", 4.9)
EDGEFLEET_PRIVACY_DELTA = env_float("EDGEFLEET_PRIVACY_DELTA", 1e-6)
EDGEFLEET_PRIVACY_DRIFT_ROUNDS_PER_DAY = env_int("EDGEFLEET_PRIVACY_DRIFT_ROUNDS_PER_DAY", 24)
EDGEFLEET_PRIVACY_HEALTH_ROUNDS_PER_DAY = env_int("EDGEFLEET_PRIVACY_HEALTH_ROUNDS_PER_DAY", 0)
EDGEFLEET_PRIVACY_SOAK_ROUNDS = env_int("EDGEFLEET_PRIVACY_SOAK_ROUNDS", 3)
EDGEFLEET_PRIVACY_CANARY_SIZE = env_int("EDGEFLEET_PRIVACY_CANARY_SIZE", 100)
EDGEFLEET_PRIVACY_CANARY_GROUPS = env_int("EDGEFLEET_PRIVACY_CANARY_GROUPS", 1)
# Which windows run rounds: "policy" (telemetry/round_plan.py: drift on the policy's windows a day,
# health while a version is in a running campaign) or "every_window" (both budgets every window,
# still calibrated as the policy says and stopped per device at its day's ε: tests of the protocol).
EDGEFLEET_ROUND_SCHEDULE = env.get("EDGEFLEET_ROUND_SCHEDULE", "policy")
EDGEFLEET_TELEMETRY_RETENTION_DAYS = env_int("EDGEFLEET_TELEMETRY_RETENTION_DAYS", 30)
EDGEFLEET_ROLLUP_SECONDS = env_int("EDGEFLEET_ROLLUP_SECONDS", 3600)  # width of a telemetry rollup window
EDGEFLEET_STALE_AFTER = env_int("EDGEFLEET_STALE_AFTER", 300)
EDGEFLEET_OFFLINE_AFTER = env_int("EDGEFLEET_OFFLINE_AFTER", 3600)
EDGEFLEET_X_ACCEL_REDIRECT = env.get("EDGEFLEET_X_ACCEL_REDIRECT", "")  # e.g. /protected-artifacts/
# The validation sandbox (ota/sandbox.py): limits of the child process that parses and runs an upload.
EDGEFLEET_VALIDATION_MEMORY_MB = env_int("EDGEFLEET_VALIDATION_MEMORY_MB", 2048)
EDGEFLEET_VALIDATION_CPU_SECONDS = env_int("EDGEFLEET_VALIDATION_CPU_SECONDS", 2 * EDGEFLEET_VALIDATION_TIMEOUT)
EDGEFLEET_VALIDATION_MAX_INPUT_ELEMENTS = env_int("EDGEFLEET_VALIDATION_MAX_INPUT_ELEMENTS", 1 << 24)
EDGEFLEET_VALIDATION_MAX_TENSOR_ELEMENTS = env_int("EDGEFLEET_VALIDATION_MAX_TENSOR_ELEMENTS", 1 << 26)
EDGEFLEET_REFERENCE_MAX_BYTES = env_int("EDGEFLEET_REFERENCE_MAX_BYTES", 256 * 1024 * 1024)
EDGEFLEET_TASK_MAX_CRASHES = env_int("EDGEFLEET_TASK_MAX_CRASHES", 2)  # then a message is not run again
EDGEFLEET_GATE_INTERVAL = env_int("EDGEFLEET_GATE_INTERVAL", 30)  # seconds between campaign gate checks

# ==== Security: transport, browser hardening, login throttling, probes (docs/security.md) =========
# Transport hardening only works over HTTPS, so it is off for `make run` on http://localhost and on
# with EDGEFLEET_HTTPS=1 (each knob can also be set on its own). Browser hardening costs nothing on
# plain HTTP and is always on. Production: SECRET_KEY=<50+ random chars> DEBUG=0 EDGEFLEET_HTTPS=1
# ALLOWED_HOSTS=<host>; `manage.py check --deploy` is then clean.
EDGEFLEET_HTTPS = env_bool("EDGEFLEET_HTTPS", False)
SECURE_SSL_REDIRECT = env_bool("EDGEFLEET_SSL_REDIRECT", EDGEFLEET_HTTPS)
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = env_bool("EDGEFLEET_SECURE_COOKIES", EDGEFLEET_HTTPS)
SECURE_HSTS_SECONDS = env_int("EDGEFLEET_HSTS_SECONDS", 365 * 24 * 3600 if EDGEFLEET_HTTPS else 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("EDGEFLEET_HSTS_INCLUDE_SUBDOMAINS", EDGEFLEET_HTTPS)
SECURE_HSTS_PRELOAD = env_bool("EDGEFLEET_HSTS_PRELOAD", EDGEFLEET_HTTPS)
# Behind a TLS-terminating proxy that sets X-Forwarded-Proto (and strips it from clients): only then
# may the app believe it, or any client could claim https.
SECURE_PROXY_SSL_HEADER = (
    ("HTTP_X_FORWARDED_PROTO", "https") if env_bool("EDGEFLEET_TRUST_X_FORWARDED_PROTO", False) else None
)
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = CSRF_COOKIE_SAMESITE = "Lax"

# Content-Security-Policy (django-csp): our own origin only. Inline <script> needs the response's
# nonce ({{ request.csp_nonce }}); no inline handlers or style attributes (Plotly's CSS is linked from
# static/css/plotly.css, see edgefleet/plotly_css.py). Exceptions, both Plotly's: data: images
# (heatmaps are drawn as PNG data URLs) and the two constant style attributes it sets, by hash
# (`python -m edgefleet.plotly_css` prints them after an upgrade; a test compares). EDGEFLEET_CSP=
# report-only reports instead of blocking (to try a change), off drops the header.
from csp.constants import NONCE, NONE, SELF, UNSAFE_HASHES  # noqa: E402

PLOTLY_STYLE_ATTR_HASHES = [
    "'sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU='",  # style="" on colour-bar rectangles
    "'sha256-AR/cKIZjWPcPmBUPDA6oti9XBiTbJvz0Cro2J1VzzS8='",  # image-rendering: … on heatmap images
]

EDGEFLEET_CSP = env.get("EDGEFLEET_CSP", "enforce").strip().lower()
_CSP_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF, NONCE],
        "style-src": [SELF],
        "style-src-elem": [SELF],
        "style-src-attr": [UNSAFE_HASHES, *PLOTLY_STYLE_ATTR_HASHES],
        "img-src": [SELF, "data:"],
        "font-src": [SELF],
        "connect-src": [SELF],
        "object-src": [NONE],
        "base-uri": [NONE],
        "frame-ancestors": [NONE],
        "form-action": [SELF],
    }
}
if EDGEFLEET_CSP not in {"enforce", "report-only", "off"}:
    raise ValueError(f"EDGEFLEET_CSP must be enforce, report-only or off, not {EDGEFLEET_CSP!r}")
CONTENT_SECURITY_POLICY = _CSP_POLICY if EDGEFLEET_CSP == "enforce" else None
CONTENT_SECURITY_POLICY_REPORT_ONLY = _CSP_POLICY if EDGEFLEET_CSP == "report-only" else None

# Login throttling (django-axes): after EDGEFLEET_LOGIN_FAILURE_LIMIT wrong passwords for one username
# from one address, that pair is refused (429, registration/locked_out.html) for the cool-off, the
# right password included, on /login/ and /admin/login/ alike. API and device tokens are not
# passwords and do not go through it.
EDGEFLEET_LOGIN_FAILURE_LIMIT = env_int("EDGEFLEET_LOGIN_FAILURE_LIMIT", 5)
EDGEFLEET_LOGIN_COOLOFF_MINUTES = env_int("EDGEFLEET_LOGIN_COOLOFF_MINUTES", 15)
AXES_FAILURE_LIMIT = EDGEFLEET_LOGIN_FAILURE_LIMIT
AXES_COOLOFF_TIME = timedelta(minutes=EDGEFLEET_LOGIN_COOLOFF_MINUTES)
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_CALLABLE = "accounts.lockout.locked_out"  # 429, the reason, how long, Retry-After
AUTHENTICATION_BACKENDS = ["axes.backends.AxesStandaloneBackend", "django.contrib.auth.backends.ModelBackend"]

# Readiness (/readyz) gives each backing service this long before it counts as down.
EDGEFLEET_READYZ_TIMEOUT = env_float("EDGEFLEET_READYZ_TIMEOUT", 2.0)

# ninja: the API docs page then uses its bundled Swagger UI files, not a CDN the CSP would refuse.
INSTALLED_APPS += ["axes", "csp", "ninja"]
_security = MIDDLEWARE.index("django.middleware.security.SecurityMiddleware")
MIDDLEWARE = [
    *MIDDLEWARE[:_security],  # request ids and metrics see probes too
    "edgefleet.health.ProbeMiddleware",  # probes come by IP over http: answered before host checks
    MIDDLEWARE[_security],
    "csp.middleware.CSPMiddleware",
    *MIDDLEWARE[_security + 1 :],
    "axes.middleware.AxesMiddleware",  # last, as django-axes wants: turns a lockout into its page
]
# ==== end of the security block ====================================================================

# The device API's limits (fleet/limits.py, docs/protocol.md "Limits"). Load shedding: device requests
# one web process serves at once, by default its threads minus one (edgefleet/serving.py, shared with
# docker/gunicorn.conf.py), so a full process still answers pages and /healthz.
EDGEFLEET_DEVICE_API_CONCURRENCY = env_int("EDGEFLEET_DEVICE_API_CONCURRENCY", serving.device_api_slots())
EDGEFLEET_RETRY_AFTER = env_int("EDGEFLEET_RETRY_AFTER", 10)  # seconds a shed request is told to wait
# Token buckets, "burst/per_minute": per device (its token) for manifest, upload (events and
# telemetry) and artifact; per client IP for enroll, signing-key and failed token or enrollment-key
# checks ("auth_fail": an IP over it may not have unknown tokens looked up). "auto": ten per
# EDGEFLEET_POLL_INTERVAL (an agent makes one poll and at most two uploads per interval, and flushes a
# full spool, 100 batches, within the upload burst). Sized so an agent polling at the manifest's
# interval never meets them. Set EDGEFLEET_NUM_PROXIES to the proxies in front of the server, so the
# client IP is read from X-Forwarded-For (default 0: REMOTE_ADDR).
EDGEFLEET_RATE_LIMITS = {
    "manifest": env.get("EDGEFLEET_RATE_MANIFEST", "30/auto"),
    "upload": env.get("EDGEFLEET_RATE_UPLOAD", "120/auto"),
    "artifact": env.get("EDGEFLEET_RATE_ARTIFACT", "60/30"),
    "enroll": env.get("EDGEFLEET_RATE_ENROLL", "60/60"),
    "signing_key": env.get("EDGEFLEET_RATE_SIGNING_KEY", "60/60"),
    "auth_fail": env.get("EDGEFLEET_RATE_AUTH_FAIL", "30/30"),
}
EDGEFLEET_NUM_PROXIES = env_int("EDGEFLEET_NUM_PROXIES", 0)

from edgefleet.schedule import BEAT_SCHEDULE  # noqa: E402

CELERY_BEAT_SCHEDULE = BEAT_SCHEDULE

# Notifications (notify/): outbound webhooks, Slack and e-mail.
EDGEFLEET_PUBLIC_URL = env.get("EDGEFLEET_PUBLIC_URL", "")  # e.g. https://fleet.example.com, for links
EDGEFLEET_SECRETS_KEY = env.get("EDGEFLEET_SECRETS_KEY", "")  # stored webhook secrets; default SECRET_KEY
EDGEFLEET_NOTIFY_TIMEOUT = env_float("EDGEFLEET_NOTIFY_TIMEOUT", 10.0)
EDGEFLEET_NOTIFY_ALLOW_PRIVATE = env_bool("EDGEFLEET_NOTIFY_ALLOW_PRIVATE", False)
EDGEFLEET_NOTIFY_RETRY_HOURS = env_float("EDGEFLEET_NOTIFY_RETRY_HOURS", 24.0)
EDGEFLEET_NOTIFY_BACKOFF_BASE = env_float("EDGEFLEET_NOTIFY_BACKOFF_BASE", 10.0)
EDGEFLEET_NOTIFY_BACKOFF_CAP = env_float("EDGEFLEET_NOTIFY_BACKOFF_CAP", 3600.0)
EMAIL_BACKEND = env.get("EMAIL_BACKEND", "django.core.mail.backends.smtp.EmailBackend")
EMAIL_HOST = env.get("EMAIL_HOST", "localhost")
EMAIL_PORT = env_int("EMAIL_PORT", 25)
EMAIL_HOST_USER = env.get("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = env.get("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", False)
EMAIL_TIMEOUT = env_int("EMAIL_TIMEOUT", 10)
DEFAULT_FROM_EMAIL = env.get("DEFAULT_FROM_EMAIL", "edgefleet@localhost")

# Metrics (ops/): /metrics needs the token or an allowed address (see docs/operations.md).
EDGEFLEET_METRICS_TOKEN = env.get("EDGEFLEET_METRICS_TOKEN", "")
EDGEFLEET_METRICS_ALLOW = [
    str(ipaddress.ip_network(n.strip(), strict=False)) for n in env.get("EDGEFLEET_METRICS_ALLOW", "").split(",")
    if n.strip()
]  # fmt: skip
EDGEFLEET_METRICS_CACHE_SECONDS = env_int("EDGEFLEET_METRICS_CACHE_SECONDS", 10)

# Logs: EDGEFLEET_LOG_FORMAT=json gives one JSON object per line with the request id (ops/logs.py).
EDGEFLEET_LOG_FORMAT = env.get("EDGEFLEET_LOG_FORMAT", "text").strip().lower()
EDGEFLEET_ACCESS_LOG = env_bool("EDGEFLEET_ACCESS_LOG", False)
CELERY_WORKER_HIJACK_ROOT_LOGGER = EDGEFLEET_LOG_FORMAT != "json"  # JSON in workers too

from ops.logs import logging_config  # noqa: E402

LOGGING = logging_config(EDGEFLEET_LOG_FORMAT, env.get("LOG_LEVEL", "INFO"))
