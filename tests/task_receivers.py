"""A database receiver for tests/test_task_engines.py, connected in every process that
tests/settings_tasks.py configures (web server, task worker, ``ledgepay_deliver``).

Its effect is a ``+`` appended to the payment's description, in the receiver's transaction,
so the test counts how many runs took effect. The description also steers it, since the
test cannot reach into another process:

- ``raise-once``: it raises on the transition's first attempt (after its write, which is
  rolled back with it);
- ``hold:<path>``: after its write it writes its process id to ``<path>.held``, then
  waits while the file ``path`` exists (at most 60 s), so the test can answer a webhook or
  kill the worker while it runs.
"""

from __future__ import annotations

import os
import time
from typing import Any

from django.apps import AppConfig
from django.db.models import Value
from django.db.models.functions import Concat

HOLD_LIMIT = 60.0


def count_effect(sender: Any, payment: Any, transition: Any, **kwargs: Any) -> None:
    from django_ledgepay.models import Payment

    Payment.objects.filter(pk=payment.pk).update(description=Concat("description", Value("+")))
    description = payment.description or ""
    if description.startswith("raise-once") and transition.attempts == 0:
        raise RuntimeError(f"first attempt of transition {transition.pk} fails")
    if description.startswith("hold:"):
        gate = description.removeprefix("hold:").split("+")[0]
        with open(f"{gate}.held", "w") as held:
            held.write(str(os.getpid()))
        deadline = time.monotonic() + HOLD_LIMIT
        while os.path.exists(gate) and time.monotonic() < deadline:
            time.sleep(0.02)


class TaskReceiversConfig(AppConfig):
    name = "tests.task_receivers"
    label = "task_receivers"

    def ready(self) -> None:
        from django_ledgepay import signals

        signals.payment_succeeded.connect(count_effect, dispatch_uid="tests.count_effect")
