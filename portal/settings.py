"""Django settings for the Layerswarm portal: one module, two worlds, chosen by environment variables.

- **Embedded** (the default, what ``make demo`` uses): SQLite, the in-memory channel layer, and
  Celery over a broker that lives in a local folder, so nothing has to be installed or running.
- **Production**: ``DJANGO_DEBUG=0``, ``DATABASE_URL=postgres://...``, ``REDIS_URL=redis://...`` (channel
  layer and Celery broker), ``DJANGO_SECRET_KEY`` and ``DJANGO_ALLOWED_HOSTS``. ``portal/checks.py``
  validates the combination (``manage.py check --deploy``).
"""

import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from portal.env import env_bool, env_float, env_int, env_list, env_str

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(env_str("LAYERSWARM_VAR_DIR", str(BASE_DIR / "var")))

# Production is the default: a portal started with no settings must not run with DEBUG pages and a known key.
# Local runs say so: `make demo` and portal/processes.py set DJANGO_DEBUG=1; a pytest run (pytest exports
# PYTEST_VERSION to itself and its children, before pytest-django imports this module) is local too.
DEBUG = env_bool("DJANGO_DEBUG", "PYTEST_VERSION" in os.environ)
SECRET_KEY = env_str("DJANGO_SECRET_KEY", "dev-insecure-layerswarm-key" if DEBUG else "")
if not SECRET_KEY:
    raise ImproperlyConfigured(
        "DJANGO_SECRET_KEY is not set: set it to a long random value (production), "
        "or set DJANGO_DEBUG=1 for a local demo or development run"
    )
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", ["127.0.0.1", "localhost"])
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", [])
# Our reverse proxies (CIDRs, e.g. "127.0.0.1/32,10.0.0.0/8"): only requests from these may name the visitor's
# address in X-Forwarded-For / X-Real-IP (portal/middleware.py). Empty: the socket's peer is the visitor.
TRUSTED_PROXIES = env_list("TRUSTED_PROXIES", [])

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "portal.staticfiles.StaticFilesConfig",  # django.contrib.staticfiles, minus frontend/node_modules
    "channels",
    "rest_framework",
    "drf_spectacular",
    "django_prometheus",  # request metrics; ours and the /metrics view: portal/metrics.py
    "portal",
    "portal.accounts",
    "portal.swarm",
    "portal.reputation",
    "portal.ledger",
    "portal.chat",
    "portal.relay",
    "portal.api",
]
# Run in sync mode (one thread hand-off per request under ASGI): see portal/middleware.py.
MIDDLEWARE = [
    "django_prometheus.middleware.PrometheusBeforeMiddleware",  # times the whole chain (with the After one)
    "portal.middleware.ClientAddressMiddleware",  # first: everything after it sees the visitor's address
    "portal.logs.RequestIdMiddleware",  # X-Request-ID, and the id on every log event of the request
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "csp.middleware.CSPMiddleware",
    "portal.ratelimits.RateLimitMiddleware",  # after authentication: some limits count per user
    "portal.accounts.middleware.UnverifiedAccountMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",  # last
]
# The node heartbeat under the WSGI workers (portal/wsgi.py): a bearer-token JSON endpoint, so without the
# session, CSRF, user, messages, page-header, rate-limit-rule and e-mail-check middleware (none of them has a
# part in it); metrics, the visitor's address, the request id and the security headers stay.
TRACKER_MIDDLEWARE = [
    path
    for path in MIDDLEWARE
    if path.rsplit(".", 1)[1]
    in {
        "PrometheusBeforeMiddleware",
        "ClientAddressMiddleware",
        "RequestIdMiddleware",
        "SecurityMiddleware",
        "PrometheusAfterMiddleware",
    }
]
ROOT_URLCONF = "portal.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "portal" / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]
ASGI_APPLICATION = "portal.asgi.application"

# -- data stores ----------------------------------------------------------------------------------
DATABASE_URL = env_str("DATABASE_URL", f"sqlite:///{BASE_DIR / 'db.sqlite3'}")
DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 0))}
if DATABASES["default"]["ENGINE"].endswith("postgresql") and env_bool("DATABASE_POOL", True):
    # Under ASGI every request may run in a different thread, so per-thread persistent connections pile
    # up; a shared psycopg pool keeps PostgreSQL at a bounded number of connections per daphne process.
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": env_int("DATABASE_POOL_MIN", 2),
        "max_size": env_int("DATABASE_POOL_MAX", 10),
        "timeout": env_float("DATABASE_POOL_TIMEOUT", 3.0),  # then 503 + Retry-After (portal/api/errors.py)
    }
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # Concurrent daphne + Celery writers: wait for the lock instead of failing at once.
    DATABASES["default"].setdefault("OPTIONS", {})["timeout"] = 20
    DATABASES["default"]["OPTIONS"]["transaction_mode"] = "IMMEDIATE"
REDIS_URL = env_str("REDIS_URL", "")
if REDIS_URL:
    # redis-py 8 reads with a 5 s socket timeout by default, exactly channels_redis's blocking-pop time: an idle
    # consumer's receive then fails with "Timeout reading from" and the websocket closes (1011). Wait longer.
    _redis_host = {"address": REDIS_URL, "socket_timeout": env_float("REDIS_SOCKET_TIMEOUT", 30.0)}
    CHANNEL_LAYERS = {
        "default": {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": {"hosts": [_redis_host]}}
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
# The cache holds rate-limit counters (portal/ratelimits.py): shared through Redis by every worker in production.
CACHES = {
    "default": (
        {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": "layerswarm",
            "OPTIONS": {"pool_class": "portal.cachepool.SharedConnectionPool"},  # not one per request
        }
        if REDIS_URL
        else {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "KEY_PREFIX": "layerswarm"}
    )
}

# -- Celery: Redis in production; a folder-backed broker when embedded (no server to run) -----------
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", REDIS_URL or "filesystem://")
CELERY_BROKER_TRANSPORT_OPTIONS = (
    {
        "data_folder_in": str(VAR_DIR / "celery" / "queue"),
        "data_folder_out": str(VAR_DIR / "celery" / "queue"),
        "processed_folder": str(VAR_DIR / "celery" / "processed"),
        "store_processed": False,
    }
    if CELERY_BROKER_URL.startswith("filesystem")
    else {}
)
if CELERY_BROKER_URL.startswith("filesystem"):
    CELERY_BROKER_TRANSPORT = "portal.broker:Transport"  # messages appear whole (see portal/broker.py)
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)
CELERY_TASK_IGNORE_RESULT = True
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")

# -- the swarm tracker -------------------------------------------------------------------------------
SWARM_HEARTBEAT_INTERVAL = env_float("SWARM_HEARTBEAT_INTERVAL", 10.0)  # seconds between a node's heartbeats
SWARM_HEARTBEAT_TIMEOUT = env_float("SWARM_HEARTBEAT_TIMEOUT", 35.0)  # silent this long -> offline
SWARM_EXPIRE_EVERY = env_float("SWARM_EXPIRE_EVERY", 5.0)  # how often the beat task marks stale nodes
SWARM_HEARTBEAT_HISTORY = env_int("SWARM_HEARTBEAT_HISTORY", 24 * 3600)  # seconds of heartbeats to keep
SWARM_HEARTBEAT_HISTORY_EVERY = env_float("SWARM_HEARTBEAT_HISTORY_EVERY", 60.0)  # history: a row per node per N s
# Write-behind heartbeats (portal/swarm/beats.py): an online node's heartbeat goes to Redis, a flush writes them
# in batches. Needs the Redis cache; off when embedded. VOUCH_TTL: seconds a node stays on the fast path between
# database checks (bans, leaves and expiry take effect at once; an edit behind the tracker's back within this).
SWARM_HEARTBEAT_WRITE_BEHIND = env_bool("SWARM_HEARTBEAT_WRITE_BEHIND", bool(REDIS_URL))
SWARM_HEARTBEAT_VOUCH_TTL = env_float("SWARM_HEARTBEAT_VOUCH_TTL", 60.0)
# A vouched node's heartbeat answered before Django (portal/swarm/fastbeat.py): a Redis token cache and one Lua call.
SWARM_HEARTBEAT_FAST_PATH = env_bool("SWARM_HEARTBEAT_FAST_PATH", SWARM_HEARTBEAT_WRITE_BEHIND)
SWARM_HEARTBEAT_FLUSH_EVERY = env_float("SWARM_HEARTBEAT_FLUSH_EVERY", 2.0)  # seconds between flushes (Celery beat)
API_MAX_JSON_BYTES = env_int("API_MAX_JSON_BYTES", 16 * 1024)  # JSON request body limit (413 above)
SWARM_MAX_NODES_PER_TOKEN = env_int("SWARM_MAX_NODES_PER_TOKEN", 8)  # active nodes one machine may run
SWARM_DHT_BOOTSTRAP = env_list("SWARM_DHT_BOOTSTRAP", [])  # DHT multiaddrs to read and publish (#18, docs/dht.md)
SWARM_TRUSTED_PUBLISHERS = env_list("SWARM_TRUSTED_PUBLISHERS", [])  # ed25519:... model publisher keys (#19)
# -- reputation (portal/reputation/scoring.py; formula in portal/README.md) ----------------------------
REPUTATION_PRIOR = env_float("REPUTATION_PRIOR", 0.5)  # score of a node without evidence
REPUTATION_PRIOR_WEIGHT = env_float("REPUTATION_PRIOR_WEIGHT", 4.0)  # how much evidence the prior is worth
REPUTATION_HALF_LIFE = env_float("REPUTATION_HALF_LIFE", 3 * 24 * 3600.0)  # seconds until evidence weighs half
REPUTATION_THRESHOLD = env_float("REPUTATION_THRESHOLD", 0.3)  # under this, a node leaves the peer list
REPUTATION_SUSPEND_FAILURES = env_int("REPUTATION_SUSPEND_FAILURES", 3)  # failed audits that suspend a node ...
REPUTATION_SUSPEND_WINDOW = env_float("REPUTATION_SUSPEND_WINDOW", 24 * 3600.0)  # ... within this many seconds
REPUTATION_DECAY_EVERY = env_float("REPUTATION_DECAY_EVERY", 300.0)  # seconds between decay runs (history points)
REPUTATION_HISTORY = env_int("REPUTATION_HISTORY", 90 * 24 * 3600)  # seconds of score history to keep
# Client reports (portal/reputation/reporting.py): only from users with receipts from the node in the window,
# capped per reporter and node and window, scaled by the reporter's standing (account age up to MATURITY).
REPUTATION_REPORT_WINDOW = env_float("REPUTATION_REPORT_WINDOW", 24 * 3600.0)
REPUTATION_REPORT_MAX_OK = env_int("REPUTATION_REPORT_MAX_OK", 250)  # served steps counted per window
REPUTATION_REPORT_MAX_FAILED = env_int("REPUTATION_REPORT_MAX_FAILED", 4)  # failed steps counted per window
REPUTATION_REPORTER_MATURITY = env_float("REPUTATION_REPORTER_MATURITY", 30 * 24 * 3600.0)  # full weight at
# -- the ledger (credits; one credit = one block-token of work) ----------------------------------------
# Credits a new user starts with: spendable, never payable, and what they pay for is never payable (#17).
LEDGER_STARTING_GRANT = env_int("LEDGER_STARTING_GRANT", 6_000)  # 200 tokens at 30 credits a token
LEDGER_CREDITS_PER_TOKEN = env_int("LEDGER_CREDITS_PER_TOKEN", 30)  # a chat/API token (a 30-block model's pass)
LEDGER_ANONYMOUS_QUOTA_TOKENS = env_int("LEDGER_ANONYMOUS_QUOTA_TOKENS", 2_000)  # free tokens per visitor ...
LEDGER_ANONYMOUS_QUOTA_WINDOW = env_float("LEDGER_ANONYMOUS_QUOTA_WINDOW", 24 * 3600.0)  # ... per this many s
LEDGER_RECEIPT_MAX_AGE = env_float("LEDGER_RECEIPT_MAX_AGE", 7 * 24 * 3600.0)  # older receipts are refused
LEDGER_SETTLE_EVERY = env_float("LEDGER_SETTLE_EVERY", 5.0)  # seconds between settlement runs (beat)
LEDGER_ESCROW_MIN_AGE = env_float("LEDGER_ESCROW_MIN_AGE", 24 * 3600.0)  # a node's earnings are escrowed until
LEDGER_ESCROW_RELEASE_SCORE = env_float("LEDGER_ESCROW_RELEASE_SCORE", 0.6)  # ... this old and this reputable
LEDGER_ESCROW_EVERY = env_float("LEDGER_ESCROW_EVERY", 300.0)  # seconds between escrow release runs
LEDGER_MIN_PAYOUT = env_int("LEDGER_MIN_PAYOUT", 1_000)  # smallest payout request, in credits
LEDGER_LINK_WINDOW = env_float("LEDGER_LINK_WINDOW", 600.0)  # owner chatting this close to gateway work: flagged
LEDGER_PUBLIC_EMAIL_DOMAINS = env_list(  # shared by strangers: a common domain does not link two accounts
    "LEDGER_PUBLIC_EMAIL_DOMAINS",
    "gmail.com googlemail.com outlook.com hotmail.com live.com yahoo.com icloud.com me.com proton.me "
    "protonmail.com gmx.de gmx.net web.de mail.ru yandex.ru qq.com 163.com example.com example.org".split(),
)
LEDGER_GATEWAY_IDENTITY = env_str("LEDGER_GATEWAY_IDENTITY", str(VAR_DIR / "gateway.identity"))  # its client key

# -- Relay for nodes behind NAT (portal/relay; spec §9) ---------------------------------------------------
RELAY_CAPACITY = env_int("RELAY_CAPACITY", 256)  # nodes attached to /ws/relay at once
RELAY_PUBLIC_URL = env_str("RELAY_PUBLIC_URL", "")  # ws(s)://host/ws/relay as clients see it; "" = from Host
RELAY_NODE_BYTES_PER_S = env_float("RELAY_NODE_BYTES_PER_S", 64 * 1024 * 1024)  # per node, both ways; 0 = no limit
RELAY_NODE_FRAMES_PER_S = env_float("RELAY_NODE_FRAMES_PER_S", 2000.0)
RELAY_MAX_FRAME_BYTES = env_int("RELAY_MAX_FRAME_BYTES", 16 * 1024 * 1024)  # one client frame
RELAY_DIAL_BACK_TIMEOUT = env_float("RELAY_DIAL_BACK_TIMEOUT", 3.0)  # seconds for the reachability check
# Dial back (relay reachability checks) private, loopback and link-local addresses too: a LAN swarm, local runs.
# Off in production, so a stranger's node cannot make the portal probe its own network (docs/security.md).
ALLOW_PRIVATE_PEERS = env_bool("ALLOW_PRIVATE_PEERS", DEBUG)
CELERY_BEAT_SCHEDULE = {
    "settle-receipts": {"task": "portal.ledger.tasks.settle_receipts", "schedule": LEDGER_SETTLE_EVERY},
    "release-escrow": {"task": "portal.ledger.tasks.release_escrow", "schedule": LEDGER_ESCROW_EVERY},
    "expire-stale-nodes": {"task": "portal.swarm.tasks.expire_stale_nodes", "schedule": SWARM_EXPIRE_EVERY},
    "flush-heartbeats": {"task": "portal.swarm.tasks.flush_heartbeats", "schedule": SWARM_HEARTBEAT_FLUSH_EVERY},
    "prune-heartbeats": {"task": "portal.swarm.tasks.prune_heartbeats", "schedule": 600.0},
    "decay-reputation": {"task": "portal.reputation.tasks.decay_reputation", "schedule": REPUTATION_DECAY_EVERY},
    "prune-score-history": {"task": "portal.reputation.tasks.prune_score_history", "schedule": 3600.0},
}
# Span ONNX files served to browser nodes (`manage.py export_browser_span`), named <sha256>.onnx.
SWARM_SPAN_FILES_DIR = Path(env_str("SWARM_SPAN_FILES_DIR", str(VAR_DIR / "spans")))
# Where `pip install` in the "Contribute a GPU" commands fetches the node agent from.
# Embedded (a demo on this machine): this checkout, so the commands work as pasted.
SWARMNODE_PIP_SOURCE = env_str(
    "SWARMNODE_PIP_SOURCE", str(BASE_DIR) if DEBUG else "git+https://github.com/layerswarm/layerswarm.git"
)

# -- chat and the OpenAI-compatible API (portal/chat: consumer, gateway) --------------------------------
# Embedded (no Redis): the gateway runs inside each daphne process. With Redis run `manage.py run_gateway`.
CHAT_GATEWAY_EMBEDDED = env_bool("CHAT_GATEWAY_EMBEDDED", not REDIS_URL)
CHAT_GATEWAY_CHANNEL = env_str("CHAT_GATEWAY_CHANNEL", "chat-gateway")  # requests queue here for any gateway
CHAT_GATEWAY_CONCURRENCY = env_int("CHAT_GATEWAY_CONCURRENCY", 32)  # generations one gateway runs at once
CHAT_GATEWAY_TIMEOUT = env_float("CHAT_GATEWAY_TIMEOUT", 60.0)  # no gateway took a request this long -> error
CHAT_GATEWAY_HEARTBEAT = env_float("CHAT_GATEWAY_HEARTBEAT", 5.0)  # s between a gateway's "alive" per generation
CHAT_GATEWAY_DEADLINE = env_float("CHAT_GATEWAY_DEADLINE", 30.0)  # no word from a gateway this long: it died
CHAT_MAX_GENERATIONS_PER_USER = env_int("CHAT_MAX_GENERATIONS_PER_USER", 4)  # at once, per user or visitor
CHAT_MAX_GENERATIONS_PER_IP = env_int("CHAT_MAX_GENERATIONS_PER_IP", 8)  # at once, per client address
CHAT_RESERVATION_TTL = env_float("CHAT_RESERVATION_TTL", 3600.0)  # an unsettled hold on credits expires after
CHAT_SWARM_PEERS = env_list("CHAT_SWARM_PEERS", [])  # node URLs the gateway uses besides the tracker's
# The gateway routes only over trusted tracker nodes (portal/generation/trust.py): it replays this share of
# steps on an independent route (0: never) and records what the audits find as reputation evidence ...
CHAT_GATEWAY_AUDIT_RATE = env_float("CHAT_GATEWAY_AUDIT_RATE", 0.05)
# ... and encrypts every hop end to end, pinned to the key the tracker registered (False: plaintext to direct nodes).
CHAT_GATEWAY_SECURE = env_bool("CHAT_GATEWAY_SECURE", True)
CHAT_DEFAULT_MODEL = env_str("CHAT_DEFAULT_MODEL", "smollm2")
CHAT_DEFAULT_MAX_NEW_TOKENS = env_int("CHAT_DEFAULT_MAX_NEW_TOKENS", 256)
CHAT_MAX_NEW_TOKENS = env_int("CHAT_MAX_NEW_TOKENS", 1024)  # per answer
CHAT_CONTEXT_TOKENS = env_int("CHAT_CONTEXT_TOKENS", 0)  # >0: a context smaller than the model's
CHAT_MAX_INPUT_CHARS = env_int("CHAT_MAX_INPUT_CHARS", 16000)  # prompt / all messages of a request
CHAT_MAX_MESSAGES = env_int("CHAT_MAX_MESSAGES", 200)  # messages of a request
CHAT_MAX_WS_MESSAGE_BYTES = env_int("CHAT_MAX_WS_MESSAGE_BYTES", 32 * 1024)
# -- the OpenAI-compatible API (/v1) --
OPENAI_BYTES_PER_TOKEN = env_int("OPENAI_BYTES_PER_TOKEN", 32)  # body limit: the context's tokens x this
OPENAI_CORS_ALLOWED_ORIGINS = env_list("OPENAI_CORS_ALLOWED_ORIGINS", [])  # browser origins allowed; "*": any

# -- API ---------------------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "portal.accounts.authentication.ApiKeyAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_PARSER_CLASSES": ["portal.api.parsers.LimitedJSONParser"],
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
    "EXCEPTION_HANDLER": "portal.api.errors.api_exception_handler",
    # Rates: API_THROTTLE_RATES below (read per request: portal/ratelimits.py).
    "DEFAULT_THROTTLE_CLASSES": [
        "portal.ratelimits.AnonThrottle",
        "portal.ratelimits.UserThrottle",
        "portal.ratelimits.ScopedThrottle",
    ],
}
# -- rate limits (#17; portal/ratelimits.py): "N/s|m|h|d"; a 429 with Retry-After beyond them ------------------
API_THROTTLE_RATES = {
    "anon": env_str("API_THROTTLE_ANON", "600/min"),  # /api/ per visitor address (peer lists, health)
    "user": env_str("API_THROTTLE_USER", "3000/min"),  # /api/ per user: all their nodes' heartbeats, scripts
    "reports": env_str("API_THROTTLE_REPORTS", "60/min"),  # reputation reports per user
}
# Plain views and /v1/: (name, methods, path regex, key: ip|user|bearer|post:<field>, rate).
RATE_LIMITS = [
    ("login", "POST", r"^/accounts/login/$", "ip", env_str("RATE_LIMIT_LOGIN", "20/m")),
    ("login-user", "POST", r"^/accounts/login/$", "post:username", env_str("RATE_LIMIT_LOGIN_USER", "5/m")),
    ("signup", "POST", r"^/accounts/signup/$", "ip", env_str("RATE_LIMIT_SIGNUP", "5/h")),
    ("verify-email", "POST", r"^/accounts/verify/resend/$", "user", env_str("RATE_LIMIT_VERIFY_EMAIL", "3/h")),
    ("api-key", "POST", r"^/accounts/profile/$", "user", env_str("RATE_LIMIT_API_KEY", "20/h")),
    ("node-token", "POST", r"^/contribute/(browser/token/)?$", "user", env_str("RATE_LIMIT_NODE_TOKEN", "30/h")),
    ("openai", "GET,POST", r"^/v1/", "bearer", env_str("RATE_LIMIT_OPENAI", "120/m")),
]

SPECTACULAR_SETTINGS = {
    "TITLE": "Layerswarm portal API",
    "DESCRIPTION": "The swarm tracker (nodes register and heartbeat; clients find spans) and swarm health.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    # The OpenAI-compatible /v1 endpoints are plain async views (SSE); their part of the schema is written by hand.
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "portal.api.openai_schema.add_openai_paths",
    ],
}

# -- auth, static, i18n --------------------------------------------------------------------------------
LOGIN_URL = "accounts:login"
LOGIN_REDIRECT_URL = "swarm:contribute"
LOGOUT_REDIRECT_URL = "home"
# Self-registered accounts confirm their e-mail before they may create node tokens or API keys, and weigh
# nothing as reporters until then (portal/accounts/verification.py). Off by default only for local runs.
ACCOUNTS_VERIFY_EMAIL = env_bool("ACCOUNTS_VERIFY_EMAIL", not DEBUG)
ACCOUNTS_VERIFY_MAX_AGE = env_int("ACCOUNTS_VERIFY_MAX_AGE", 3 * 24 * 3600)  # seconds a link works
EMAIL_BACKEND = env_str(  # SMTP settings: Django's EMAIL_HOST, EMAIL_PORT, ... (portal/README.md)
    "DJANGO_EMAIL_BACKEND",
    "django.core.mail.backends.console.EmailBackend" if DEBUG else "django.core.mail.backends.smtp.EmailBackend",
)
EMAIL_HOST = env_str("EMAIL_HOST", "localhost")
EMAIL_PORT = env_int("EMAIL_PORT", 25)
EMAIL_HOST_USER = env_str("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = env_str("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", False)
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "Layerswarm <noreply@localhost>")
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "frontend"]
STATIC_ROOT = Path(env_str("DJANGO_STATIC_ROOT", str(BASE_DIR / "staticfiles")))
SERVE_STATIC = env_bool("DJANGO_SERVE_STATIC", DEBUG)  # daphne serves /static/ itself; nginx does in production
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"
# LOG_FORMAT=json: one JSON object per line (python-json-logger), with the request's id (portal/logs.py) and
# any ids a call passes in extra= (request_id, session_id) as fields.
LOG_FORMAT = env_str("LOG_FORMAT", "text")
if LOG_FORMAT not in ("text", "json"):
    raise ImproperlyConfigured(f"LOG_FORMAT={LOG_FORMAT!r} is not text or json")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"request_id": {"()": "portal.logs.RequestIdFilter"}},
    "formatters": {
        "text": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "format": "%(asctime)s %(levelname)s %(name)s %(message)s",
            "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger", "exc_info": "exception"},
        },
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT, "filters": ["request_id"]},
    },
    "root": {"handlers": ["console"], "level": env_str("DJANGO_LOG_LEVEL", "WARNING")},
    # Django's own handler would print its events a second time, as plain text: they go to the root's only.
    "loggers": {"django": {"handlers": [], "level": env_str("DJANGO_LOG_LEVEL", "WARNING"), "propagate": True}},
}

# -- Prometheus (portal/metrics.py): GET /metrics from these addresses (CIDRs), or with this bearer token --------
METRICS_ALLOWED_IPS = env_list("METRICS_ALLOWED_IPS", ["127.0.0.1/32", "::1/128"])
METRICS_TOKEN = env_str("METRICS_TOKEN", "")
if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # each process counts into files there; it must exist first
    Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]).mkdir(parents=True, exist_ok=True)

# -- Content-Security-Policy (django-csp): the pages load only their own scripts and styles (no inline code);
# 'wasm-unsafe-eval' lets the in-page node compile onnxruntime-web's wasm; nodes and relays are websockets anywhere.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'", "'wasm-unsafe-eval'"],
        "style-src": ["'self'"],
        "img-src": ["'self'", "data:"],
        "font-src": ["'self'"],
        "connect-src": ["'self'", "ws:", "wss:"],
        "worker-src": ["'self'", "blob:"],
        "object-src": ["'none'"],
        "base-uri": ["'self'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
    }
}

# -- production hardening (all on when DEBUG is off; nginx terminates TLS) ------------------------------
if not DEBUG:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = env_bool("DJANGO_SECURE_SSL_REDIRECT", True)
    SECURE_HSTS_SECONDS = env_int("DJANGO_HSTS_SECONDS", 31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
