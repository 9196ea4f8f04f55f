"""Delivering transitions: every signal reaches each receiver at least once.

Once a change's :class:`~django_ledgepay.models.Transition` commits (see
:mod:`django_ledgepay.transitions`), the task :func:`deliver_transition` is enqueued on
``LEDGEPAY_TASK_BACKEND``; with Django's default ``ImmediateBackend`` it runs at once, in the
same process.

:func:`deliver` runs each receiver that has not yet succeeded for the transition inside a
transaction together with the :class:`~django_ledgepay.models.Reaction` that records its
success: a receiver whose work is only in the default database takes effect exactly once,
and one that raises leaves nothing behind and is tried again later, with backoff, up to
``LEDGEPAY_DELIVERY_MAX_ATTEMPTS`` attempts. ``manage.py ledgepay_deliver`` catches up what
a crash between the commit and the task lost.
"""

from __future__ import annotations

import datetime
import functools
import logging
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from inspect import iscoroutinefunction
from typing import Any, Final, cast

from asgiref.sync import async_to_sync

from django.db import IntegrityError, connection, connections, transaction
from django.db.models import F, Model
from django.utils import timezone

from django_ledgepay import signals, task_backend
from django_ledgepay.conf import conf
from django_ledgepay.models import Payment, Reaction, Refund, Transition, WebhookEvent

logger = logging.getLogger(__name__)

#: Each signal by its name in ``Transition.signal``, with its sender.
SIGNALS: Final[Mapping[str, tuple[signals.Signal, type[Payment] | type[Refund]]]] = {
    Transition.Signal.PAYMENT_SUCCEEDED: (signals.payment_succeeded, Payment),
    Transition.Signal.PAYMENT_FAILED: (signals.payment_failed, Payment),
    Transition.Signal.PAYMENT_CANCELED: (signals.payment_canceled, Payment),
    Transition.Signal.REFUND_CREATED: (signals.refund_created, Refund),
    Transition.Signal.REFUND_SUCCEEDED: (signals.refund_succeeded, Refund),
    Transition.Signal.REFUND_FAILED: (signals.refund_failed, Refund),
}

#: How long a new transition is left to its task before ``ledgepay_deliver`` takes it up.
GRACE: Final = datetime.timedelta(minutes=5)
#: The first retry's delay; each next one doubles, up to :data:`MAX_BACKOFF`.
FIRST_BACKOFF: Final = datetime.timedelta(minutes=1)
MAX_BACKOFF: Final = datetime.timedelta(hours=6)
#: How much of a receiver's traceback is kept.
MAX_ERROR_CHARS: Final = 10_000


@task_backend.task()  # type: ignore[untyped-decorator,unused-ignore]
def deliver_transition(transition_id: int) -> None:
    """Run the receivers of the transition ``transition_id`` that have not yet succeeded."""
    deliver(transition_id)


def enqueue(transition_id: int, *, run_after: datetime.datetime | None = None) -> None:
    """Hand the delivery to the task backend. A backend that fails loses nothing: the
    transition stays undelivered in the database, and ``ledgepay_deliver`` catches it up."""
    try:
        task_backend.enqueue(deliver_transition, transition_id, run_after=run_after)
    except Exception:
        logger.exception(
            "Could not enqueue the delivery of transition %s; ledgepay_deliver will deliver it.",
            transition_id,
        )


# Delivering


@dataclass
class Delivery:
    """What one :func:`deliver` did: the receivers that succeeded now, and those that
    raised, by name."""

    transition: Transition | None
    succeeded: list[str]
    failed: list[str]

    @property
    def delivered(self) -> bool:
        return self.transition is not None and self.transition.delivered_at is not None


def deliver(transition_id: int) -> Delivery:
    """Run each receiver of the transition that has not yet succeeded, each in a
    transaction with the record of its success; then mark the transition delivered, or
    schedule its next attempt. Never raises for a receiver's sake."""
    found = _read(transition_id)
    if found is None:
        return Delivery(None, [], [])
    transition, succeeded_before = found
    outcome = Delivery(transition, [], [])
    if transition.delivered_at is not None:
        return outcome
    signal, sender = SIGNALS[transition.signal]
    kwargs: dict[str, Any] = {
        "payment": transition.payment,
        "event": transition.event,
        "transition": transition,
    }
    if transition.refund is not None:
        kwargs["refund"] = transition.refund
    # Those that succeeded before are skipped, whether their attempt finished or was cut
    # short (a worker killed after one receiver's success but before the next's). On a
    # first delivery there are none, and the query is spared.
    done: set[str] = set()
    if succeeded_before:
        done = set(
            Reaction.objects.filter(transition=transition, succeeded_at__isnull=False).values_list(
                "receiver", flat=True
            )
        )
    receivers = [item for item in signal.named_receivers(sender) if item[0] not in done]
    errors: list[str] = []
    finished = False
    for position, (name, receiver) in enumerate(receivers, start=1):
        # The last receiver, all before it having succeeded, marks the transition delivered
        # in its own transaction: one commit fewer, and the mark stands only with its success.
        last = position == len(receivers) and not errors
        try:
            ran = _run_once(transition, name, receiver, signal, sender, kwargs, finish=last)
        except Exception as err:
            error = traceback.format_exc()[-MAX_ERROR_CHARS:]
            _record_failure(transition, name, error)
            logger.error(
                "Receiver %s of %s (transition %s) raised %s; it will be tried again.",
                name,
                transition.signal,
                transition.pk,
                type(err).__name__,
                exc_info=True,
            )
            outcome.failed.append(name)
            errors.append(f"{name}:\n{error}")
        else:
            if ran:
                outcome.succeeded.append(name)
                finished = last
    if not finished:
        _finish(transition, errors)
    return outcome


def _read(transition_id: int) -> tuple[Transition, bool] | None:
    """The transition with its payment, refund and event, and whether any receiver
    succeeded for it before, in one query. Its SQL is composed once per database: the ORM
    would compose the three joins and the ``EXISTS`` again on every delivery, at several
    times the cost of running them."""
    sql, parts = _read_plan(connection.alias)
    with connection.cursor() as cursor:
        cursor.execute(sql, [transition_id])
        row = cursor.fetchone()
    if row is None:
        return None
    instances: list[Model | None] = []
    start = 0
    for part in parts:
        end = start + len(part.attnames)
        values = [part.convert(index, value) for index, value in enumerate(row[start:end])]
        # A refund or an event the transition lacks has every column NULL, its pk first.
        found = values[0] is not None
        instances.append(
            part.model.from_db(connection.alias, part.attnames, values) if found else None
        )
        start = end
    transition = cast(Transition, instances[0])
    for part, instance in zip(parts[1:], instances[1:], strict=True):
        setattr(transition, part.relation, instance)  # Cached: reading it costs no query.
    return transition, bool(row[start])


@dataclass(frozen=True)
class _ReadPart:
    """One object :func:`_read` builds from a slice of its row."""

    relation: str
    model: type[Model]
    attnames: list[str]
    #: Each column's expression and the converters the ORM would apply to its values: the
    #: backend's (an aware datetime on SQLite, say), then the field's (a JSONField's decoding).
    columns: list[tuple[Any, list[Any]]]

    def convert(self, index: int, value: Any) -> Any:
        expression, converters = self.columns[index]
        for converter in converters:
            value = converter(value, expression, connection)
        return value


@functools.cache
def _read_plan(db: str) -> tuple[str, list[_ReadPart]]:
    """:func:`_read`'s SQL on the database ``db``, and its parts, the transition first."""
    backend = connections[db]
    quote = backend.ops.quote_name
    related = {"payment": Payment, "refund": Refund, "event": WebhookEvent}
    parts, selected = [], []
    for relation, model in {"": Transition, **related}.items():
        alias = relation[:1] or "t"
        fields = model._meta.concrete_fields
        columns = []
        for field in fields:
            column = field.get_col(alias)
            converters = [
                *backend.ops.get_db_converters(column),
                *column.get_db_converters(backend),
            ]
            columns.append((column, converters))
            selected.append(f"{alias}.{quote(field.column)}")
        parts.append(_ReadPart(relation, model, [field.attname for field in fields], columns))
    joins = " ".join(
        f"{'JOIN' if relation == 'payment' else 'LEFT JOIN'} {quote(model._meta.db_table)} "
        f"{relation[0]} ON {relation[0]}.{quote('id')} = t.{quote(relation + '_id')}"
        for relation, model in related.items()
    )
    succeeded = (
        f"SELECT 1 FROM {quote(Reaction._meta.db_table)} x "
        f"WHERE x.{quote('transition_id')} = t.{quote('id')} "
        f"AND x.{quote('succeeded_at')} IS NOT NULL"
    )
    sql = (
        f"SELECT {', '.join(selected)}, CASE WHEN EXISTS ({succeeded}) THEN 1 ELSE 0 END "
        f"FROM {quote(Transition._meta.db_table)} t {joins} WHERE t.{quote('id')} = %s"
    )
    return sql, parts


def _run_once(
    transition: Transition,
    name: str,
    receiver: signals.Receiver,
    signal: signals.Signal,
    sender: type[Any],
    kwargs: dict[str, Any],
    *,
    finish: bool = False,
) -> bool:
    """Run ``receiver`` and record its success in one transaction, with ``finish`` the
    transition's delivery too; False (and the run's work undone) when another worker
    recorded its success first: that row is unique."""
    with transaction.atomic():
        if iscoroutinefunction(receiver):
            async_to_sync(receiver)(signal=signal, sender=sender, **kwargs)
        else:
            receiver(signal=signal, sender=sender, **kwargs)
        now = timezone.now()
        if not _record_success(transition, name, now, finish=finish):
            transaction.set_rollback(True)
            return False
    if finish:
        transition.delivered_at, transition.next_attempt_at, transition.error = now, None, ""
    return True


def _record_success(
    transition: Transition, name: str, now: datetime.datetime, *, finish: bool = False
) -> bool:
    """Insert the receiver's success, or mark its row of failures succeeded, and with
    ``finish`` mark the transition delivered; False, and nothing written, when the receiver
    had succeeded already. One statement on PostgreSQL, an upsert on SQLite."""
    vendor = connection.vendor
    if vendor not in {"postgresql", "sqlite"}:
        if not _write_attempt(transition, name, succeeded_at=now, last_attempt_at=now, error=""):
            return False
        if finish:
            _mark_delivered(transition, now)
        return True
    table = connection.ops.quote_name(Reaction._meta.db_table)
    moment = _db_time(now)
    sql = (
        f"INSERT INTO {table} "
        "(transition_id, receiver, attempts, succeeded_at, last_attempt_at, error) "
        "VALUES (%s, %s, 1, %s, %s, '') "
        "ON CONFLICT (transition_id, receiver) DO UPDATE SET "
        f"succeeded_at = EXCLUDED.succeeded_at, attempts = {table}.attempts + 1, "
        "last_attempt_at = EXCLUDED.last_attempt_at, error = '' "
        f"WHERE {table}.succeeded_at IS NULL RETURNING id"
    )
    params = [transition.pk, name, moment, moment]
    together = finish and vendor == "postgresql"
    if together:
        # The UPDATE runs only when the upsert returned a row: the mark only with a success.
        transitions = connection.ops.quote_name(Transition._meta.db_table)
        sql = (
            f"WITH success AS ({sql}), delivered AS (UPDATE {transitions} "
            "SET delivered_at = %s, next_attempt_at = NULL, error = '' "
            "WHERE id = %s AND delivered_at IS NULL AND EXISTS (SELECT 1 FROM success)) "
            "SELECT id FROM success"
        )
        params += [moment, transition.pk]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        if cursor.fetchone() is None:
            return False
    if finish and not together:
        _mark_delivered(transition, now)
    return True


def _db_time(moment: datetime.datetime) -> Any:
    return Reaction._meta.get_field("succeeded_at").get_db_prep_save(moment, connection)


def _record_failure(transition: Transition, name: str, error: str) -> None:
    # False (a row recorded meanwhile by another worker) needs nothing more.
    _write_attempt(transition, name, last_attempt_at=timezone.now(), error=error)


def _write_attempt(transition: Transition, name: str, **fields: Any) -> bool:
    """Count an attempt of the receiver with ``fields`` on its row, creating the row if it
    has none; False, and nothing written, when the row is a success already or another
    worker inserted it meanwhile."""
    rows = Reaction.objects.filter(transition=transition, receiver=name, succeeded_at=None)
    if rows.update(attempts=F("attempts") + 1, **fields):
        return True
    try:
        with transaction.atomic():
            Reaction.objects.create(transition=transition, receiver=name, attempts=1, **fields)
    except IntegrityError:
        return False
    return True


def _mark_delivered(transition: Transition, now: datetime.datetime) -> None:
    Transition.objects.filter(pk=transition.pk, delivered_at__isnull=True).update(
        delivered_at=now, next_attempt_at=None, error=""
    )


def _finish(transition: Transition, errors: list[str]) -> None:
    now = timezone.now()
    if not errors:
        _mark_delivered(transition, now)
        transition.delivered_at, transition.next_attempt_at, transition.error = now, None, ""
        return
    rows = Transition.objects.filter(pk=transition.pk, delivered_at__isnull=True)
    attempts = transition.attempts + 1
    next_attempt = None
    if attempts < conf.LEDGEPAY_DELIVERY_MAX_ATTEMPTS:
        next_attempt = now + backoff(attempts)
    error = "\n".join(errors)[-MAX_ERROR_CHARS:]
    rows.update(attempts=F("attempts") + 1, next_attempt_at=next_attempt, error=error)
    transition.attempts, transition.next_attempt_at, transition.error = (
        attempts,
        next_attempt,
        error,
    )
    if next_attempt is None:
        logger.error(
            "Gave up delivering transition %s (%s) after %d attempts; "
            "run ledgepay_deliver --all once its receivers are fixed.",
            transition.pk,
            transition.signal,
            attempts,
        )
    elif task_backend.supports_defer():
        enqueue(transition.pk, run_after=next_attempt)


def backoff(attempts: int) -> datetime.timedelta:
    """The wait after ``attempts`` failed attempts: 1 minute, doubling, at most 6 hours."""
    doublings = min(max(0, attempts - 1), 20)
    return min(FIRST_BACKOFF * (1 << doublings), MAX_BACKOFF)


def undelivered(*, everything: bool = False) -> Any:
    """The transitions ``ledgepay_deliver`` delivers: those due, or with ``everything``
    every undelivered one (those given up included), oldest first."""
    rows = Transition.objects.filter(delivered_at__isnull=True)
    if not everything:
        rows = rows.filter(next_attempt_at__lte=timezone.now())
    return rows.order_by("pk")
