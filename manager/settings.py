"""Gatehouse settings: one flat file, every value read from the environment."""
import os
from pathlib import Path

import dj_database_url

from manager.env import data_dir, env_bool, env_port, env_str, load_or_create_secret_key

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = data_dir()
DATA_DIR.mkdir(parents=True, exist_ok=True)

SECRET_KEY = load_or_create_secret_key(DATA_DIR)
DEBUG = env_bool("GATEHOUSE_DEBUG", False)
ALLOWED_HOSTS = [h for h in env_str("GATEHOUSE_ALLOWED_HOSTS", "*").split(",") if h]
CSRF_TRUSTED_ORIGINS = [o for o in env_str("GATEHOUSE_CSRF_TRUSTED_ORIGINS", "").split(",") if o]

HTTP_PORT = env_port("GATEHOUSE_HTTP_PORT", 8080)
HTTPS_PORT = env_port("GATEHOUSE_HTTPS_PORT", 8443)
DASHBOARD_PORT = env_port("GATEHOUSE_DASHBOARD_PORT", 8081)
# The port the internet reaches the HTTP side on (80 behind a port forward to HTTP_PORT);
# ACME HTTP-01 validation always comes there. Used by the reachability check.
PUBLIC_HTTP_PORT = env_port("GATEHOUSE_PUBLIC_HTTP_PORT", 80)

# Empty REDIS_URL means "no Redis": Celery uses the filesystem broker and the engine polls.
# Unset, it is the private redis-server that `make run` started, if there is one, so that
# commands run by hand (importconfig, ...) announce their changes too.
REDIS_URL = env_str("REDIS_URL", "")
if "REDIS_URL" not in os.environ and "REDIS_URL_FILE" not in os.environ and (DATA_DIR / "redis" / "url").exists():
    REDIS_URL = (DATA_DIR / "redis" / "url").read_text().strip()
CONFIG_CHANNEL = "gatehouse:config"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_htmx",
    "manager.accounts",
    "manager.access",
    "manager.certificates",
    "manager.hosts",
    "manager.audit",
    "manager.configuration",
    "manager.dashboard",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
]

ROOT_URLCONF = "manager.urls"
WSGI_APPLICATION = "manager.wsgi.application"

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
                "manager.accounts.access.rights",
            ],
        },
    },
]

DATABASES = {
    "default": dj_database_url.parse(
        env_str("DATABASE_URL", "") or f"sqlite:///{DATA_DIR / 'gatehouse.sqlite3'}",
        conn_max_age=60,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL + busy timeout: the dashboard, the workers and the engine share one file.
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 20,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=20000;",
    }

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = env_str("TZ", "UTC") or "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = DATA_DIR / "staticfiles"
STATIC_ROOT.mkdir(exist_ok=True)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "dashboard:overview"
LOGOUT_REDIRECT_URL = "login"

SESSION_COOKIE_HTTPONLY = True
# Behind HTTPS (the dashboard published through a TLS proxy host), cookies travel only over HTTPS.
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = env_bool("GATEHOUSE_SECURE_COOKIES", False)
CSRF_COOKIE_SAMESITE = "Strict"
SESSION_COOKIE_SAMESITE = "Lax"
X_FRAME_OPTIONS = "DENY"

# Celery: Redis when configured, otherwise kombu's filesystem transport (no server needed).
if REDIS_URL:
    CELERY_BROKER_URL = REDIS_URL
    CELERY_RESULT_BACKEND = REDIS_URL
else:
    _broker_dir = DATA_DIR / "broker"
    for _sub in ("out", "processed", "control"):
        (_broker_dir / _sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_URL = "filesystem://"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir / "out"),
        "data_folder_out": str(_broker_dir / "out"),
        "data_folder_processed": str(_broker_dir / "processed"),
        "control_folder": str(_broker_dir / "control"),
    }
    CELERY_RESULT_BACKEND = f"file://{DATA_DIR / 'broker' / 'results'}"
    (DATA_DIR / "broker" / "results").mkdir(parents=True, exist_ok=True)
CELERY_TASK_SERIALIZER = "json"
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Beat (`celery -A manager beat`): certificates expiring within 30 days are renewed daily.
CELERY_BEAT_SCHEDULE = {
    "renew-due-certificates": {"task": "manager.certificates.tasks.renew_due_certificates", "schedule": 24 * 3600.0},
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("GATEHOUSE_LOG_LEVEL", "INFO") or "INFO"},
}
