"""Settings for the processes tests/test_task_engines.py starts: a web server, a real task
worker (``db_worker``, ``rqworker`` or ``celery worker``) and ``ledgepay_deliver``, all on
the test database.

The suite's settings, plus, from the environment:

- ``DATABASE_URL``: the test database (read by tests.settings);
- ``LEDGEPAY_TEST_ENGINE``: ``db`` (django-tasks-db), ``rq`` (django-tasks-rq on Redis) or
  ``celery`` (django-tasks-fennel on RabbitMQ);
- ``LEDGEPAY_TEST_QUEUE``: the run's own queue on Redis or RabbitMQ (tests/task_queues.py);
- ``LEDGEPAY_TEST_REDIS_URL`` and ``LEDGEPAY_TEST_REDIS_DB``: the Redis of the RQ engine
  (default ``redis://127.0.0.1:6379``, database 15);
- ``LEDGEPAY_TEST_AMQP_URL``: the RabbitMQ of the Celery engine (default
  ``amqp://guest:guest@127.0.0.1:5672//``);
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
REDIS_URL = os.environ.get("LEDGEPAY_TEST_REDIS_URL", "redis://127.0.0.1:6379")
REDIS_DB = int(os.environ.get("LEDGEPAY_TEST_REDIS_DB", "15"))
AMQP_URL = os.environ.get("LEDGEPAY_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
QUEUE = os.environ.get("LEDGEPAY_TEST_QUEUE", "default")
#: The app's tasks name "default"; tests/task_queues.py puts them on the run's queue.
QUEUES = sorted({"default", QUEUE})

INSTALLED_APPS = [*INSTALLED_APPS, "tests.task_receivers.TaskReceiversConfig"]
if ENGINE == "rq":
    INSTALLED_APPS += ["django_rq", "django_tasks_rq"]
    TASKS = {"default": {"BACKEND": "tests.task_queues.RQBackend", "QUEUES": QUEUES}}
    RQ_QUEUES = {
        name: {"URL": REDIS_URL, "DB": REDIS_DB, "DEFAULT_TIMEOUT": 60} for name in QUEUES
    }
elif ENGINE == "celery":
    INSTALLED_APPS += ["django_tasks_fennel"]
    TASKS = {"default": {"BACKEND": "tests.task_queues.CeleryBackend", "QUEUES": QUEUES}}
    # Celery reads these through django-tasks-fennel's app (django_tasks_fennel.app). No
    # result backend: the app never reads a task's result.
    CELERY_BROKER_URL = AMQP_URL
    CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
    CELERY_WORKER_HIJACK_ROOT_LOGGER = False
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
