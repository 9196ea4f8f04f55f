"""Task backends for the shared engines of tests/test_task_engines.py (RQ on Redis, Celery
on RabbitMQ) that put every task on the queue ``LEDGEPAY_TEST_QUEUE`` names, one of the
test run's own: two runs on one Redis or one RabbitMQ then never take each other's tasks,
and each run deletes only the keys and the queue it made.

A project keeps the queue its tasks name; this renaming is the tests' only change to the
engines. (The app's tasks name Django's ``"default"`` queue; the backends list both.)
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

#: The run's queue (tests/test_task_engines.py sets it for every process it starts).
QUEUE = os.environ.get("LEDGEPAY_TEST_QUEUE", "default")


class RunQueue:
    """Enqueues on :data:`QUEUE` whatever queue the task names."""

    def enqueue(self, task: Any, args: Any, kwargs: Any) -> Any:
        if task.queue_name != QUEUE:
            task = task.using(queue_name=QUEUE)
        return super().enqueue(task, args, kwargs)  # type: ignore[misc]


if importlib.util.find_spec("django_tasks_rq") is not None:
    from django_tasks_rq import RQBackend as _RQBackend

    class RQBackend(RunQueue, _RQBackend):
        """django-tasks-rq's backend, on the run's queue."""


if importlib.util.find_spec("django_tasks_fennel") is not None:
    from django_tasks_fennel import CeleryBackend as _CeleryBackend

    class CeleryBackend(RunQueue, _CeleryBackend):
        """django-tasks-fennel's backend, on the run's queue."""
