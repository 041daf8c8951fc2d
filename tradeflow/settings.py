"""TradeFlow settings, all read from the environment in this one file.

Two modes (DESIGN.md "Modes and services"):

* embedded (nothing set): SQLite under ``var/``, tasks run in-process on a thread pool, in-memory
  channel layer, local-memory cache. Keys are generated once into ``var/`` (git-ignored).
* production (``DATABASE_URL`` or ``REDIS_URL`` set): PostgreSQL, Redis as Celery broker, channel
  layer and cache. Refuses to start without ``SECRET_KEY`` and ``FIELD_ENCRYPTION_KEY``.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
env = environ.Env()

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def envbool(name: str, default: bool) -> bool:
    """A boolean from the environment; an unknown spelling is an error, not a silent False."""
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name}={raw!r} is not a boolean: use one of 1/0, true/false, yes/no, on/off")


DATABASE_URL = env.str("DATABASE_URL", default="")
REDIS_URL = env.str("REDIS_URL", default="")
EMBEDDED = not (DATABASE_URL or REDIS_URL)
DATA_DIR = Path(env.str("TRADEFLOW_DATA_DIR", default=str(BASE_DIR / "var")))


def _local_secret(filename: str, make) -> str:
    """Embedded mode only: a key kept in DATA_DIR, created on first run."""
    path = DATA_DIR / filename
    if not path.exists():
        DATA_DIR.mkdir(parents=True, exist_ok=True)
        # Owner-only from creation (write-then-chmod leaves it readable for a moment); O_EXCL: the first
        # process to start keeps its key, a concurrent one reads it instead of overwriting it.
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w") as fh:
                fh.write(make())
    return path.read_text().strip()


def _fernet_key() -> str:
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode()


if EMBEDDED:
    SECRET_KEY = env.str("SECRET_KEY", default="") or _local_secret("secret_key", lambda: secrets.token_urlsafe(50))
    FIELD_ENCRYPTION_KEY = env.str("FIELD_ENCRYPTION_KEY", default="") or _local_secret(
        "field_encryption.key", _fernet_key
    )
else:
    SECRET_KEY = env.str("SECRET_KEY", default="")
    FIELD_ENCRYPTION_KEY = env.str("FIELD_ENCRYPTION_KEY", default="")
    missing = [n for n, v in (("SECRET_KEY", SECRET_KEY), ("FIELD_ENCRYPTION_KEY", FIELD_ENCRYPTION_KEY)) if not v]
    if missing:
        raise ImproperlyConfigured(
            f"Production mode (DATABASE_URL/REDIS_URL set) needs {' and '.join(missing)} in the environment. "
            "Generate a FIELD_ENCRYPTION_KEY with: python -c 'from cryptography.fernet import Fernet; "
            "print(Fernet.generate_key().decode())'"
        )

DEBUG = envbool("DEBUG", EMBEDDED)
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["*"] if EMBEDDED else ["localhost", "127.0.0.1"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])
# The public base URL shown in webhook URLs and curl examples (TradingView needs 80/443 in production).
PUBLIC_URL = env.str("PUBLIC_URL", default="http://127.0.0.1:8000").rstrip("/")

# Live orders need this global switch on in addition to a live account (seed 002: paper first).
LIVE_TRADING_ENABLED = envbool("LIVE_TRADING_ENABLED", False)
# Prefix of every client order id / Kite tag we send, so two deployments never collide on one account.
ORDER_ID_PREFIX = env.str("ORDER_ID_PREFIX", default="TF")
PAPER_DEFAULT_CAPITAL = env.str("PAPER_DEFAULT_CAPITAL", default="1000000")
# Lot size used by the paper broker for an index option that is not in the instruments table.
PAPER_OPTION_LOT_SIZE = env.int("PAPER_OPTION_LOT_SIZE", default=65)
# Broker endpoints (tests point them at local protocol servers; production keeps the defaults).
KITE_API_ROOT = env.str("KITE_API_ROOT", default="https://api.kite.trade")
KITE_TIMEOUT = env.float("KITE_TIMEOUT", default=7.0)
KITE_FILL_WAIT = env.float("KITE_FILL_WAIT", default=2.0)
BINANCE_API_URL = env.str("BINANCE_API_URL", default="https://api.binance.com/api")
BINANCE_SAPI_URL = env.str("BINANCE_SAPI_URL", default="https://api.binance.com/sapi")
BINANCE_FUTURES_URL = env.str("BINANCE_FUTURES_URL", default="https://fapi.binance.com/fapi")
BINANCE_TESTNET_API_URL = env.str("BINANCE_TESTNET_API_URL", default="https://testnet.binance.vision/api")
BINANCE_TESTNET_FUTURES_URL = env.str("BINANCE_TESTNET_FUTURES_URL", default="https://testnet.binancefuture.com/fapi")
BINANCE_TIMEOUT = env.float("BINANCE_TIMEOUT", default=10.0)
WEBHOOK_RATE_LIMIT = env.str("WEBHOOK_RATE_LIMIT", default="120/m")
WEBHOOK_UNKNOWN_KEY_RATE_LIMIT = env.str("WEBHOOK_UNKNOWN_KEY_RATE_LIMIT", default="60/m")
WEBHOOK_MAX_BODY_BYTES = 64 * 1024
# Threads per web process that run the webhook receivers (webhooks/asgi.py); each keeps a pooled connection,
# so keep DB_POOL_MAX_SIZE above this. The receive is mostly CPU, but each one also waits for its commit to reach
# the disk: measured on two cores with the worker executing beside them, 16 threads answered 271-327 alerts/s
# (4: 243-254) and 200 alerts/s with ack p99 0.31-0.60 s (4: 0.43-1.43 s), commits sharing each disk flush.
WEBHOOK_THREADS = env.int("WEBHOOK_THREADS", default=16)
# Account alerts are received in natural batches (webhooks/asgi.py): at most WEBHOOK_RECEIVERS batches in flight
# per web process, each of up to WEBHOOK_RECEIVE_BATCH alerts that arrived while the others were busy.
WEBHOOK_RECEIVERS = env.int("WEBHOOK_RECEIVERS", default=2)
WEBHOOK_RECEIVE_BATCH = env.int("WEBHOOK_RECEIVE_BATCH", default=64)
WEBHOOK_DEDUPE_SECONDS = env.int("WEBHOOK_DEDUPE_SECONDS", default=60)

# Billing (billing/, seed 003). Without STRIPE_SECRET_KEY the billing page says billing is not configured and
# everything else works (the embedded demo). STRIPE_API_BASE points the stripe client elsewhere (tests: a local server).
STRIPE_SECRET_KEY = env.str("STRIPE_SECRET_KEY", default="")
STRIPE_PUBLISHABLE_KEY = env.str("STRIPE_PUBLISHABLE_KEY", default="")
STRIPE_WEBHOOK_SECRET = env.str("STRIPE_WEBHOOK_SECRET", default="")
STRIPE_API_BASE = env.str("STRIPE_API_BASE", default="https://api.stripe.com")
STRIPE_WEBHOOK_TOLERANCE = 300  # seconds: Stripe's own default; older signed events are refused (replays)
BILLING_TRIAL_DAYS = env.int("BILLING_TRIAL_DAYS", default=3)
BILLING_TRIAL_TRADES = env.int("BILLING_TRIAL_TRADES", default=100)
BILLING_GRACE_DAYS = env.int("BILLING_GRACE_DAYS", default=3)  # after a failed payment, before trial limits

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "channels",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "encrypted_model_fields",
    "allauth",
    "allauth.account",
    "allauth.mfa",
    "accounts",
    "brokers",
    "bots",
    "risk",
    "billing",
    "webhooks",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "allauth.account.middleware.AccountMiddleware",
    "accounts.middleware.UserTimezoneMiddleware",  # after auth: times shown in the user's timezone
    # Last: WhiteNoise is sync-only, and placed early it forces a thread hop around every other middleware
    # under ASGI (measured: /livez 1.7 → 1.1 ms CPU per request).
    "whitenoise.middleware.WhiteNoiseMiddleware",
]

ROOT_URLCONF = "tradeflow.urls"
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
            ],
        },
    },
]
WSGI_APPLICATION = None
ASGI_APPLICATION = "tradeflow.asgi.application"

if DATABASE_URL:
    DATABASES = {"default": env.db_url("DATABASE_URL")}
    if os.environ.get("TRADEFLOW_PROCESS") == "web" and env.int("DB_POOL_MAX_SIZE", default=20) > 0:
        # Under ASGI every request runs in its own thread, so persistent connections pile up (one per thread)
        # and short-lived ones cost a PostgreSQL backend per request: use psycopg's pool instead.
        DATABASES["default"]["CONN_MAX_AGE"] = 0
        DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
            "min_size": 2, "max_size": env.int("DB_POOL_MAX_SIZE", default=20), "timeout": 10}
    else:
        DATABASES["default"]["CONN_MAX_AGE"] = env.int("CONN_MAX_AGE", default=60)
        # Off by default: Django's check is a ``SELECT 1`` round trip before the first query of every Celery task.
        # A connection that died (PostgreSQL restarted) fails that task's first statement instead, and Django drops
        # it; the tasks are built for that (an execution is retried, a drain hands its alert to its own task, the
        # sweeper resumes what is left).
        DATABASES["default"]["CONN_HEALTH_CHECKS"] = env.bool("CONN_HEALTH_CHECKS", default=False)
else:
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": env.str("SQLITE_PATH", default=str(DATA_DIR / "tradeflow.sqlite3")),
            # WAL + IMMEDIATE: the web thread and the in-process task threads write concurrently.
            "OPTIONS": {
                "transaction_mode": "IMMEDIATE",
                "timeout": 20,
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            },
        }
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

if REDIS_URL:
    CACHES = {"default": {"BACKEND": "tradeflow.cache.SharedRedisCache", "LOCATION": REDIS_URL}}
    # Live updates go over Redis pub/sub: a price tick is one PUBLISH that each server process fans out to its
    # sockets in memory (bench/ws_bench.py). CHANNEL_LAYER=core: channels_redis' list-based layer instead.
    _LAYERS = {"pubsub": "channels_redis.pubsub.RedisPubSubChannelLayer",
               "core": "channels_redis.core.RedisChannelLayer"}
    # Pub/sub channels ignore the Redis db number: the prefix carries it, so two instances on one Redis stay apart.
    _REDIS_DB = REDIS_URL.rsplit("/", 1)[-1] if REDIS_URL.count("/") > 2 else "0"
    CHANNEL_LAYERS = {"default": {"BACKEND": _LAYERS[env.str("CHANNEL_LAYER", default="pubsub")],
                                  "CONFIG": {"hosts": [REDIS_URL], "prefix": f"tf{_REDIS_DB}"}}}
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

# Celery: Redis broker in production; in embedded mode tasks run in-process (see tradeflow/queue.py).
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default=REDIS_URL or "memory://")
CELERY_RESULT_BACKEND = None
CELERY_TASK_ALWAYS_EAGER = not REDIS_URL
# Embedded mode: an eager retry re-runs at once inside apply(); propagation would abort the chain.
CELERY_TASK_EAGER_PROPAGATES = False
CELERY_BEAT_SCHEDULE = {
    "executions-sweep": {"task": "brokers.tasks.executions_sweep", "schedule": 60.0},
    # Kite's instruments list, daily: each run syncs only if today's list (published ~08:00 IST) is not in yet,
    # so it lands within 20 minutes of the first customer's Kite login of the day.
    "kite-instruments-sync": {"task": "brokers.tasks.instruments_sync_task", "schedule": 1200.0},
}
# The stop watcher (SL/TP and option strike stops) and the follow-up of orders left open at a broker. A beat
# message not picked up before the next one is due is dropped rather than piling up behind a busy worker.
STOP_WATCH_SECONDS = env.float("STOP_WATCH_SECONDS", default=5.0)
STOP_RETRY_SECONDS = env.int("STOP_RETRY_SECONDS", default=60)  # after a failed stop close, before the next try
ORDER_SYNC_SECONDS = env.float("ORDER_SYNC_SECONDS", default=15.0)
ORDER_SYNC_MAX_AGE_HOURS = env.float("ORDER_SYNC_MAX_AGE_HOURS", default=24.0)
CELERY_BEAT_SCHEDULE["stops-watch"] = {"task": "brokers.tasks.stops_watch_task", "schedule": STOP_WATCH_SECONDS,
                                       "options": {"expires": STOP_WATCH_SECONDS}}
# Users who chose to flatten on their daily loss limit: checked between signals too.
CELERY_BEAT_SCHEDULE["risk-daily-loss"] = {"task": "risk.tasks.daily_loss_sweep_task", "schedule": 30.0,
                                           "options": {"expires": 30.0}}
CELERY_BEAT_SCHEDULE["orders-sync"] = {"task": "brokers.tasks.orders_sync_task", "schedule": ORDER_SYNC_SECONDS,
                                       "options": {"expires": ORDER_SYNC_SECONDS}}
# The price feed marks open positions to market and pushes the P&L to dashboards (brokers/services/prices.py).
PRICE_FEED_SECONDS = env.float("PRICE_FEED_SECONDS", default=2.0)
CELERY_BEAT_SCHEDULE["prices-feed"] = {"task": "brokers.tasks.prices_feed_task", "schedule": PRICE_FEED_SECONDS,
                                       "options": {"expires": PRICE_FEED_SECONDS}}
# Reconcile: live positions closed in the broker's own app are booked closed (brokers/services/reconcile.py); an
# account with an order or fill in the last RECONCILE_GRACE_SECONDS is left alone (brokers report with a delay).
RECONCILE_SECONDS = env.float("RECONCILE_SECONDS", default=60.0)
RECONCILE_GRACE_SECONDS = env.int("RECONCILE_GRACE_SECONDS", default=120)
CELERY_BEAT_SCHEDULE["positions-reconcile"] = {"task": "brokers.tasks.positions_reconcile_task",
                                               "schedule": RECONCILE_SECONDS, "options": {"expires": RECONCILE_SECONDS}}
# Embedded demo: paper quotes of open positions take a small random walk, so P&L visibly moves.
SIMULATED_FEED = EMBEDDED and envbool("SIMULATED_FEED", True)
# A signal not sent within this many seconds of its arrival fails instead of trading late.
SIGNAL_MAX_DELAY_SECONDS = env.int("SIGNAL_MAX_DELAY_SECONDS", default=120)
# Bot fan-out: the Celery queue of bot subscribers' executions (blank: the default queue). Point it at a worker
# running an I/O pool (``-Q bots --pool threads --concurrency 100``) so 1,000 broker round trips overlap.
BOT_EXECUTION_QUEUE = env.str("BOT_EXECUTION_QUEUE", default="")
# Bot entries: place every subscriber's main order before anyone's stop loss / take profit (a follow-up run of
# the same execution, queued behind the other main orders). Off by default: measured, it brings the last main
# order of a 1,000-subscriber alert ~3 s earlier but leaves every position unprotected ~9 s longer.
BOT_DEFER_PROTECTION = envbool("BOT_DEFER_PROTECTION", False)
# A bot alert's subscribers are executed in batches (brokers/services/batch.py) of this many, each batch one Celery
# task; 0 runs every subscriber as its own task (the one-by-one engine). Threads per batch for broker calls.
BOT_BATCH_SIZE = env.int("BOT_BATCH_SIZE", default=100)
BATCH_BROKER_THREADS = env.int("BATCH_BROKER_THREADS", default=50)
# Account alerts' entries on paper accounts run through the same batch engine (brokers.services.batch.executions_drain):
# each one's task also takes the alerts queued behind it, up to this many in all (1 runs each on its own).
WEBHOOK_BATCH_SIZE = env.int("WEBHOOK_BATCH_SIZE", default=20)
# In embedded mode eager tasks are handed to a thread so the webhook answers before execution.
TASKS_IN_THREAD = envbool("TASKS_IN_THREAD", not REDIS_URL)
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_TIME_LIMIT = 120
CELERY_TASK_SOFT_TIME_LIMIT = 90
CELERY_TASK_IGNORE_RESULT = True
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 300}
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
# Celery's Django fixup closes the database connection around every task unless this is set (measured: the
# reconnect was 60 % of claiming an execution).
CELERY_DB_REUSE_MAX = env.int("CELERY_DB_REUSE_MAX", default=1000)
CELERY_TIMEZONE = "UTC"

AUTH_USER_MODEL = "accounts.User"
AUTHENTICATION_BACKENDS = [
    "django.contrib.auth.backends.ModelBackend",
    "allauth.account.auth_backends.AuthenticationBackend",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "account_login"
LOGIN_REDIRECT_URL = "dashboard"
ACCOUNT_LOGOUT_REDIRECT_URL = "account_login"
ACCOUNT_LOGIN_METHODS = {"email"}
ACCOUNT_SIGNUP_FIELDS = ["email*", "password1*", "password2*"]
ACCOUNT_USER_MODEL_USERNAME_FIELD = None
ACCOUNT_UNIQUE_EMAIL = True
ACCOUNT_EMAIL_VERIFICATION = env.str("ACCOUNT_EMAIL_VERIFICATION", default="mandatory")
ACCOUNT_LOGIN_ON_EMAIL_CONFIRMATION = True
ACCOUNT_RATE_LIMITS = {"login_failed": "10/m/ip,5/5m/key"}
MFA_SUPPORTED_TYPES = ["totp", "recovery_codes"]
MFA_TOTP_ISSUER = "TradeFlow"
EMAIL_BACKEND = env.str("EMAIL_BACKEND", default="django.core.mail.backends.console.EmailBackend")
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="TradeFlow <noreply@localhost>")

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
        if EMBEDDED
        else "whitenoise.storage.CompressedManifestStaticFilesStorage"
    },
}

# The customer API (/api/v1/, tradeflow/api_urls.py): personal API tokens first, so an anonymous call is a 401;
# the session for the browsable API. JSON in and out; errors in the webhooks' format (tradeflow/api_common.py).
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["tradeflow.api_auth.TokenAuthentication",
                                       "rest_framework.authentication.SessionAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated", "tradeflow.api_auth.TokenScope"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_PAGINATION_CLASS": "tradeflow.api_common.Pagination",
    "PAGE_SIZE": 50,
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer",
                                 "rest_framework.renderers.BrowsableAPIRenderer"],
    "DEFAULT_THROTTLE_CLASSES": ["tradeflow.api_auth.ApiRateThrottle"],
    # Per token (per user for sessions): a script gone wild slows down alone.
    "DEFAULT_THROTTLE_RATES": {"api": env.str("API_RATE_LIMIT", default="600/m")},
    "EXCEPTION_HANDLER": "tradeflow.api_common.exception_handler",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "TradeFlow API",
    "VERSION": "1.0.0",
    "DESCRIPTION": "Everything a customer does on the pages, as JSON. Authenticate with a personal API token "
                   "(Settings → API tokens) sent as `Authorization: Token tf_pat_...`. Errors are "
                   "`{\"error\": {\"code\", \"message\", \"fields\"}}`.",
    "SCHEMA_PATH_PREFIX": "/api/v1",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    "POSTPROCESSING_HOOKS": ["drf_spectacular.hooks.postprocess_schema_enums",
                             "tradeflow.api_common.add_error_responses"],
    # Swagger UI and Redoc served from our own static files (drf-spectacular-sidecar), no CDN.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "ENUM_NAME_OVERRIDES": {"BrokerEnum": "brokers.models.Broker", "BotBrokerEnum": "bots.models.Bot.BrokerChoice",
                            "TimezoneEnum": "accounts.models.TIMEZONE_CHOICES"},
}

if not EMBEDDED and not DEBUG:
    SESSION_COOKIE_SECURE = envbool("SECURE_COOKIES", True)
    CSRF_COOKIE_SECURE = envbool("SECURE_COOKIES", True)
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"redact": {"()": "tradeflow.logging.RedactSecretsFilter"}},
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain", "filters": ["redact"]}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {
        # Django logs every 4xx with its path; webhook paths carry API keys (redacted by the filter).
        "django.request": {"level": "ERROR"},
        "uvicorn.access": {"level": "WARNING"},
    },
}
