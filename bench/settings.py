"""Settings for the webhook benchmark: a small project on PostgreSQL, as deployed.

The database comes from ``BENCH_DATABASE_URL``
(default ``postgres://postgres@127.0.0.1:5432/ledgepay_bench``), LedgePay from
``BENCH_API_BASE`` (``bench/run.py`` points it at a sandbox for the ``refund-unseen`` path;
no other path calls LedgePay). Tasks run on Django's default ``ImmediateBackend``: a
receiver's delivery runs in the request, right after the commit.
"""

from __future__ import annotations

import os

import environ

DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/ledgepay_bench"

SECRET_KEY = "bench-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
USE_TZ = True
TIME_ZONE = "UTC"
ROOT_URLCONF = "bench.urls"
WSGI_APPLICATION = "bench.wsgi.application"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

DATABASES = {
    "default": {
        **environ.Env.db_url_config(os.environ.get("BENCH_DATABASE_URL", DEFAULT_DATABASE_URL)),
        # Persistent connections, as a production deployment has them.
        "CONN_MAX_AGE": 60,
        # BENCH_PREPARED=1 (run.py --prepared): parameters bound by the server, and psycopg
        # prepares a statement run five times on a connection, so PostgreSQL can reuse its
        # plan. Django's default is neither: values are inlined, and every statement is
        # parsed and planned anew.
        "OPTIONS": (
            {"server_side_binding": True, "prepare_threshold": 5}
            if os.environ.get("BENCH_PREPARED") == "1"
            else {}
        ),
    }
}

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django_ledgepay",
]

# What a typical project has in front of its views; CsrfViewMiddleware is why the webhook
# view must be csrf_exempt.
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
]

LEDGEPAY_API_KEY = "sk_test_bench_not_secret"
# Never reached unless a path names a payment the mirror lacks (refund-unseen).
LEDGEPAY_API_BASE = os.environ.get("BENCH_API_BASE", "http://127.0.0.1:9/v1")
# The first attempt only: a benchmark that cannot reach its sandbox should fail at once.
LEDGEPAY_MAX_RETRIES = 0
LEDGEPAY_WEBHOOK_SECRET = "whsec_bench"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
    # Errors only: the readiness probe's 404s are not news.
    "loggers": {"django.request": {"level": "ERROR"}},
}
