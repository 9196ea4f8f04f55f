"""The app's tasks, on Django's Tasks framework: thin functions with JSON arguments.

``django.tasks`` on Django 6.0 and newer; the ``django-tasks`` backport on Django 5.2. They
run on the backend ``LEDGEPAY_TASK_BACKEND`` names (default ``"default"``): with Django's
default ``ImmediateBackend``, in the process that enqueues them, right away.
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

__all__ = ["InvalidTaskBackend", "deliver_transition", "process_event", "task_backends"]


@task()  # type: ignore[untyped-decorator,unused-ignore]
def deliver_transition(transition_id: int) -> None:
    """Run the receivers of the transition ``transition_id`` that have not yet succeeded."""
    from django_ledgepay import reactions

    reactions.deliver(transition_id)


@task()  # type: ignore[untyped-decorator,unused-ignore]
def process_event(event_id: int) -> None:
    """Apply the stored webhook event ``event_id``, unless it was applied already."""
    from django_ledgepay import webhooks
    from django_ledgepay.models import WebhookEvent

    event = WebhookEvent.objects.filter(pk=event_id).first()
    if event is not None and not event.is_processed:
        webhooks.process_event(event)


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
