"""Settings for the test suite: SQLite by default, PostgreSQL when DATABASE_URL says so.

From the environment, so that runs can share a host (docs/development.md):
``DATABASE_URL``; ``LEDGEPAY_TEST_DB_NAME``, the test database's name (default Django's,
``test_`` and the name in ``DATABASE_URL``; on SQLite a file in the run's folder);
``LEDGEPAY_TEST_TMPDIR``, the run's folder for its files (default a new folder in the
system's temporary folder, removed at the end of the run).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import environ

# The example shop runs in the end-to-end and browser tests.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "example_project"))

SECRET_KEY = "tests-only-not-secret"
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "tests.urls"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"


def run_folder() -> str | None:
    """The folder of this test run's files: ``LEDGEPAY_TEST_TMPDIR``, or in pytest a new one,
    which the processes the tests start inherit and tests/conftest.py removes at the end.
    None elsewhere (mypy, Sphinx, ``makemigrations``): they need no file."""
    folder = os.environ.get("LEDGEPAY_TEST_TMPDIR")
    if not folder and "pytest" in sys.modules:
        folder = tempfile.mkdtemp(prefix="ledgepay-tests-")
        os.environ["LEDGEPAY_TEST_TMPDIR"] = folder
        os.environ["LEDGEPAY_TEST_TMPDIR_MADE_BY"] = str(os.getpid())
    return folder


DATABASES = {
    "default": environ.Env.db_url_config(os.environ.get("DATABASE_URL", "sqlite://:memory:"))
}
if os.environ.get("LEDGEPAY_TEST_DB_NAME"):
    DATABASES["default"]["TEST"] = {"NAME": os.environ["LEDGEPAY_TEST_DB_NAME"]}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # As the README advises: writers wait for each other, as row locks make them elsewhere.
    DATABASES["default"].setdefault("OPTIONS", {})["transaction_mode"] = "IMMEDIATE"
    # Files, not memory: the live server's threads then get connections of their own, so a
    # webhook and an admin request run side by side as they do in production. (With a NAME
    # in memory, the live server would share one connection between its threads.)
    # NAME holds no data (only the commands the tests start in subprocesses open it); both
    # files are in the run's own folder.
    _folder = run_folder()
    if _folder and DATABASES["default"]["NAME"] in ("", ":memory:"):
        DATABASES["default"]["NAME"] = os.path.join(_folder, "ledgepay-tests.sqlite3")
    if _folder and "TEST" not in DATABASES["default"]:
        DATABASES["default"]["TEST"] = {
            "NAME": os.path.join(_folder, "ledgepay-tests-test.sqlite3")
        }
elif os.environ.get("LEDGEPAY_TEST_SERVER_SIDE_BINDING") == "1":
    # Parameters bound by PostgreSQL, as a project that sets Django's server_side_binding
    # has them, and a statement prepared from its second run on (psycopg's
    # prepare_threshold 1; at 0 Django's own migrations fail, some of their statements
    # being two commands): the raw SQL of django_ledgepay.statements and the reactions must
    # work there too. (A URL's ?server_side_binding=true gives the string "true", which
    # Django does not take for True.)
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        server_side_binding=True, prepare_threshold=1
    )
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
]

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

STATIC_URL = "/static/"
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

LEDGEPAY_API_KEY = "sk_test_tests_secret_key_123"
LEDGEPAY_API_BASE = "https://api.ledgepay.test/v1"
LEDGEPAY_WEBHOOK_SECRET = "whsec_tests"
LEDGEPAY_MAX_RETRIES = 3
