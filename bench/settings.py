"""Settings for the webhook benchmark: a small project on PostgreSQL, as deployed.

The database comes from ``BENCH_DATABASE_URL``
(default ``postgres://postgres@127.0.0.1:5432/ledgepay_bench``).
"""

from __future__ import annotations

import os
from urllib.parse import unquote, urlsplit

DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/ledgepay_bench"


def database_from_url(url: str) -> dict[str, object]:
    """A DATABASES entry for ``postgres://user:password@host:port/name``."""
    parts = urlsplit(url)
    if parts.scheme not in {"postgres", "postgresql", "pgsql"}:
        raise ValueError(f"BENCH_DATABASE_URL must be a postgres:// URL, not {parts.scheme}://")
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": unquote(parts.path.lstrip("/")) or "ledgepay_bench",
        "USER": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": parts.hostname or "",
        "PORT": str(parts.port or ""),
        # Persistent connections, as a production deployment has them.
        "CONN_MAX_AGE": 60,
    }


SECRET_KEY = "bench-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
USE_TZ = True
TIME_ZONE = "UTC"
ROOT_URLCONF = "bench.urls"
WSGI_APPLICATION = "bench.wsgi.application"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

DATABASES = {
    "default": database_from_url(os.environ.get("BENCH_DATABASE_URL", DEFAULT_DATABASE_URL))
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
# Never reached: every delivery names a payment seeded beforehand.
LEDGEPAY_API_BASE = "http://127.0.0.1:9/v1"
LEDGEPAY_WEBHOOK_SECRET = "whsec_bench"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
    # Errors only: the readiness probe's 404s are not news.
    "loggers": {"django.request": {"level": "ERROR"}},
}
