"""Settings of the example shop, from the environment (see .env.example).

The defaults run everything on this machine: SQLite beside this file and the LedgePay
sandbox on 127.0.0.1:8765.
"""

from __future__ import annotations

from pathlib import Path

import environ

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env")

SECRET_KEY = env("SECRET_KEY", default="example-shop-not-secret")
DEBUG = env.bool("DEBUG", default=True)
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost"])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_ledgepay",
    "shop",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "example_project.urls"
WSGI_APPLICATION = "example_project.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
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

DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}")}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # A webhook arriving during a refund waits for it instead of failing with "database is
    # locked" (django_ledgepay.W005).
    DATABASES["default"].setdefault("OPTIONS", {})["transaction_mode"] = "IMMEDIATE"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

USE_TZ = True
TIME_ZONE = "UTC"
STATIC_URL = "static/"

# LedgePay: the sandbox by default (any non-empty key works there).
LEDGEPAY_API_KEY = env("LEDGEPAY_API_KEY", default="sk_test_demo")
LEDGEPAY_API_BASE = env("LEDGEPAY_API_BASE", default="http://127.0.0.1:8765/v1")
LEDGEPAY_WEBHOOK_SECRET = env.list("LEDGEPAY_WEBHOOK_SECRET", default=["whsec_demo"])
LEDGEPAY_TIMEOUT = env.float("LEDGEPAY_TIMEOUT", default=10)
LEDGEPAY_MAX_RETRIES = env.int("LEDGEPAY_MAX_RETRIES", default=3)

# Where the receivers run: "immediate" (Django's default ImmediateBackend: in the web process,
# right after each commit) or "db" (a worker of django-tasks-db: `manage.py db_worker`).
SHOP_TASKS = env("SHOP_TASKS", default="immediate")
if SHOP_TASKS == "db":
    INSTALLED_APPS.append("django_tasks_db")
    TASKS = {"default": {"BACKEND": "django_tasks_db.DatabaseBackend", "QUEUES": ["default"]}}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"django_ledgepay": {"handlers": ["console"], "level": "INFO"}},
}
