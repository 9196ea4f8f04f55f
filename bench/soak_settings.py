"""Settings for the delivery soak (bench/soak_delivery.py): a project on PostgreSQL whose
tasks run on django-tasks-db's database backend, or on Celery with RabbitMQ through
django-tasks-fennel, with the receivers of bench/soak.

From the environment (the soak sets them for every process it starts):
``SOAK_DATABASE_URL`` (default ``postgres://postgres@127.0.0.1:5432/ledgepay_soak``),
``SOAK_API_BASE`` (the sandbox), ``SOAK_PROCESSING`` (``inline`` or ``task``),
``SOAK_LEASE`` (``LEDGEPAY_DELIVERY_LEASE``, seconds; default 10, so that the claims of the
processes the soak kills lapse within the run), ``SOAK_ENGINE`` (``db`` or ``celery``),
``SOAK_AMQP_URL`` (Celery's broker, default ``amqp://guest:guest@127.0.0.1:5672/ledgepay_soak``).
"""

from __future__ import annotations

import os

import environ

DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/ledgepay_soak"
DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/ledgepay_soak"
ENGINE = os.environ.get("SOAK_ENGINE", "db")

SECRET_KEY = "soak-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
USE_TZ = True
TIME_ZONE = "UTC"
ROOT_URLCONF = "bench.soak.urls"
WSGI_APPLICATION = "bench.soak.wsgi.application"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

DATABASES = {
    "default": {
        **environ.Env.db_url_config(os.environ.get("SOAK_DATABASE_URL", DEFAULT_DATABASE_URL)),
        "CONN_MAX_AGE": 60,
        "CONN_HEALTH_CHECKS": True,
    }
}

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django_ledgepay",
    "django_tasks_fennel" if ENGINE == "celery" else "django_tasks_db",
    "bench.soak.apps.SoakConfig",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
]

TASKS = {"default": {"BACKEND": "django_tasks_db.DatabaseBackend", "QUEUES": ["default"]}}
if ENGINE == "celery":
    TASKS = {"default": {"BACKEND": "django_tasks_fennel.CeleryBackend", "QUEUES": ["default"]}}
    # Read by django-tasks-fennel's Celery app. No result backend: the app reads none.
    CELERY_BROKER_URL = os.environ.get("SOAK_AMQP_URL", DEFAULT_AMQP_URL)
    CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
    CELERY_WORKER_HIJACK_ROOT_LOGGER = False
LEDGEPAY_TASK_BACKEND = "default"
LEDGEPAY_WEBHOOK_PROCESSING = os.environ.get("SOAK_PROCESSING", "inline")
LEDGEPAY_DELIVERY_LEASE = float(os.environ.get("SOAK_LEASE", "10"))

LEDGEPAY_API_KEY = "sk_test_soak_not_secret"
LEDGEPAY_API_BASE = os.environ.get("SOAK_API_BASE", "http://127.0.0.1:9/v1")
LEDGEPAY_WEBHOOK_SECRET = "whsec_soak"
LEDGEPAY_MAX_RETRIES = 5
LEDGEPAY_TIMEOUT = 10

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
    "loggers": {
        "django.request": {"level": "ERROR"},
        # The client's retries of the sandbox's injected failures: expected, and many.
        "django_ledgepay.client": {"level": "ERROR"},
    },
}
