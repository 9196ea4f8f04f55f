"""Transitions: the record of each change that sends a signal, written in the change's own
transaction, and where a change comes from.

A change that sends a signal writes a :class:`~django_ledgepay.models.Transition` in its own
transaction (:func:`record`); once that commits, its delivery is enqueued
(:mod:`django_ledgepay.delivery`).
"""

from __future__ import annotations

import contextvars
import datetime
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from django.db import transaction
from django.utils import timezone

from django_ledgepay import delivery
from django_ledgepay.models import Payment, Refund, Transition, WebhookEvent

# Where a change comes from


@dataclass(frozen=True)
class Origin:
    source: str
    #: The staff user (``AUTH_USER_MODEL``) behind an admin action.
    actor: Any = None


_origin: contextvars.ContextVar[Origin | None] = contextvars.ContextVar(
    "ledgepay_origin", default=None
)


@contextmanager
def origin(source: str, actor: Any = None) -> Iterator[None]:
    """Record the changes made inside the block as coming from ``source`` (a
    ``Transition.Source``) on behalf of ``actor``, the staff user of an admin action.

    The outermost block wins: an admin action that syncs stays an admin action.
    """
    if source not in Transition.Source.values:
        raise ValueError(f"source must be one of {', '.join(Transition.Source.values)}.")
    if _origin.get() is not None:
        yield
        return
    user = actor if getattr(actor, "is_authenticated", False) else None
    token = _origin.set(Origin(source, user))
    try:
        yield
    finally:
        _origin.reset(token)


def current_origin(event: WebhookEvent | None = None) -> Origin:
    """Where a change made now comes from: a webhook when ``event`` brought it, else the
    enclosing :func:`origin`, else a service call from code."""
    if event is not None:
        return Origin(Transition.Source.WEBHOOK)
    return _origin.get() or Origin(Transition.Source.API)


# Recording


def has_receivers(signal_name: str) -> bool:
    signal, sender = delivery.SIGNALS[signal_name]
    return bool(signal.named_receivers(sender))


def new_transition(
    signal_name: str,
    *,
    payment: Payment,
    refund: Refund | None = None,
    event: WebhookEvent | None = None,
    now: datetime.datetime | None = None,
) -> Transition:
    """An unsaved transition. One whose signal has no receivers is delivered as it is
    written: there is nothing to run."""
    now = now or timezone.now()
    where = current_origin(event)
    waiting = has_receivers(signal_name)
    return Transition(
        signal=signal_name,
        payment=payment,
        refund=refund,
        source=where.source,
        event=event,
        actor=where.actor,
        created_at=now,
        delivered_at=None if waiting else now,
        next_attempt_at=now + delivery.GRACE if waiting else None,
    )


def record(
    signal_name: str,
    *,
    payment: Payment,
    refund: Refund | None = None,
    event: WebhookEvent | None = None,
) -> Transition:
    """Write the transition of a change, in the change's transaction, and deliver it once
    that commits."""
    transition = new_transition(signal_name, payment=payment, refund=refund, event=event)
    transition.save(force_insert=True)
    deliver_on_commit(transition)
    return transition


def record_many(transitions: Sequence[Transition]) -> None:
    """Write several unsaved transitions in one query, and deliver each after commit."""
    Transition.objects.bulk_create(transitions)
    for transition in transitions:
        deliver_on_commit(transition)


def deliver_on_commit(transition: Transition) -> None:
    """Enqueue the transition's delivery once the current transaction commits (at once
    outside one). A transition without receivers is delivered already: nothing to do."""
    if transition.delivered_at is None:
        transition_id = transition.pk

        # A named function, not a partial: were it ever to raise, Django's on_commit would
        # log the callback's __qualname__, which a partial lacks. (enqueue() catches all.)
        def deliver() -> None:
            delivery.enqueue(transition_id)

        transaction.on_commit(deliver)
