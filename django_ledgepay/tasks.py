"""The app's tasks, on Django's Tasks framework, under the dotted paths 0.2 documented.

Each task lives beside what it runs: :func:`django_ledgepay.delivery.deliver_transition` and
:func:`django_ledgepay.intake.process_event`. They are importable from here too, so that
tasks queued by 0.2 under ``django_ledgepay.tasks.*`` still run after an upgrade.
"""

from __future__ import annotations

from django_ledgepay.delivery import deliver_transition
from django_ledgepay.intake import process_event
from django_ledgepay.task_backend import (
    InvalidTaskBackend,
    backend,
    enqueue,
    supports_defer,
    task_backends,
)

__all__ = [
    "InvalidTaskBackend",
    "backend",
    "deliver_transition",
    "enqueue",
    "process_event",
    "supports_defer",
    "task_backends",
]
