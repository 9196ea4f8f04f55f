"""The task backend this app's tasks run on: Django's Tasks framework, from ``django.tasks``
on Django 6.0 and newer, from the ``django-tasks`` backport on Django 5.2.

The backend is the one ``LEDGEPAY_TASK_BACKEND`` names (default ``"default"``): with Django's
default ``ImmediateBackend``, tasks run in the process that enqueues them, right away.
"""

from __future__ import annotations

import datetime
from typing import Any

try:  # Django 6.0+
    from django.tasks import (  # type: ignore[import-not-found,import-untyped,unused-ignore]
        InvalidTaskBackend,
        task,
        task_backends,
    )
except ImportError:  # Django 5.2: the backport
    from django_tasks import task, task_backends  # type: ignore[no-redef,unused-ignore]
    from django_tasks.exceptions import (  # type: ignore[no-redef,unused-ignore]
        InvalidTaskBackendError as InvalidTaskBackend,
    )

from django_ledgepay.conf import conf

__all__ = ["InvalidTaskBackend", "backend", "enqueue", "supports_defer", "task", "task_backends"]


def backend() -> Any:
    """The task backend ``LEDGEPAY_TASK_BACKEND`` names; InvalidTaskBackend if none."""
    return task_backends[conf.LEDGEPAY_TASK_BACKEND]


def supports_defer() -> bool:
    return bool(backend().supports_defer)


def enqueue(the_task: Any, *args: Any, run_after: datetime.datetime | None = None) -> Any:
    """Enqueue ``the_task`` on ``LEDGEPAY_TASK_BACKEND``; ``run_after`` where the backend
    can defer."""
    alias = conf.LEDGEPAY_TASK_BACKEND
    if alias != the_task.backend:
        the_task = the_task.using(backend=alias)
    if run_after is not None and backend().supports_defer:
        the_task = the_task.using(run_after=run_after)
    return the_task.enqueue(*args)
