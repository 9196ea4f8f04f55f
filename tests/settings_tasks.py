"""Settings for the processes tests/test_task_engines.py starts: a web server, a real task
worker (``db_worker`` or ``rqworker``) and ``ledgepay_deliver``, all on the test database.

The suite's settings, plus, from the environment:

- ``DATABASE_URL``: the test database (read by tests.settings);
- ``LEDGEPAY_TEST_ENGINE``: ``db`` (django-tasks-db) or ``rq`` (django-tasks-rq on the local
  Redis, database 15);
- ``LEDGEPAY_TEST_PROCESSING``: ``inline`` or ``task``, the web server's
  ``LEDGEPAY_WEBHOOK_PROCESSING``;
- ``LEDGEPAY_TEST_API_BASE``: the sandbox a worker fetches unknown objects from.

Every process has the receivers of tests/task_receivers.py connected, as every process of a
project has the same receivers.
"""

from __future__ import annotations

import os

from tests.settings import *  # noqa: F403
from tests.settings import INSTALLED_APPS

ENGINE = os.environ.get("LEDGEPAY_TEST_ENGINE", "db")
REDIS_URL = os.environ.get("LEDGEPAY_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")

INSTALLED_APPS = [*INSTALLED_APPS, "tests.task_receivers.TaskReceiversConfig"]
if ENGINE == "rq":
    INSTALLED_APPS += ["django_rq", "django_tasks_rq"]
    TASKS = {"default": {"BACKEND": "django_tasks_rq.RQBackend", "QUEUES": ["default"]}}
    RQ_QUEUES = {"default": {"URL": REDIS_URL, "DEFAULT_TIMEOUT": 60}}
else:
    INSTALLED_APPS += ["django_tasks_db"]
    TASKS = {"default": {"BACKEND": "django_tasks_db.DatabaseBackend", "QUEUES": ["default"]}}

LEDGEPAY_TASK_BACKEND = "default"
LEDGEPAY_WEBHOOK_PROCESSING = os.environ.get("LEDGEPAY_TEST_PROCESSING", "inline")
LEDGEPAY_API_BASE = os.environ.get("LEDGEPAY_TEST_API_BASE", "http://127.0.0.1:9/v1")
# A killed worker's claim on a receiver lapses within a test (the default is 300 s).
LEDGEPAY_DELIVERY_LEASE = 10

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
}
