"""Transitions and their delivery, under the name 0.2 gave them.

0.3 splits them by concept: :mod:`django_ledgepay.transitions` records each change and where
it came from (:func:`origin`), and :mod:`django_ledgepay.delivery` runs the receivers. The
names below stay importable from here.
"""

from __future__ import annotations

from django_ledgepay.delivery import (
    FIRST_BACKOFF,
    GRACE,
    MAX_BACKOFF,
    MAX_ERROR_CHARS,
    SIGNALS,
    Delivery,
    backoff,
    deliver,
    enqueue,
    undelivered,
)
from django_ledgepay.transitions import (
    Origin,
    current_origin,
    deliver_on_commit,
    has_receivers,
    new_transition,
    origin,
    record,
    record_many,
)

#: 0.2's name for :class:`~django_ledgepay.delivery.Delivery`.
Outcome = Delivery

__all__ = [
    "FIRST_BACKOFF",
    "GRACE",
    "MAX_BACKOFF",
    "MAX_ERROR_CHARS",
    "SIGNALS",
    "Delivery",
    "Origin",
    "Outcome",
    "backoff",
    "current_origin",
    "deliver",
    "deliver_on_commit",
    "enqueue",
    "has_receivers",
    "new_transition",
    "origin",
    "record",
    "record_many",
    "undelivered",
]
