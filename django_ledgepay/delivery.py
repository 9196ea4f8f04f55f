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

No receiver is run by two deliverers at once (a task worker and ``ledgepay_deliver``, say):
before running them, a deliverer claims the receivers it is to run, each on its
``Reaction`` row, for ``LEDGEPAY_DELIVERY_LEASE`` seconds (``claimed_until``), where no
other deliverer holds a claim; another skips a receiver while its claim holds. A claim
ends with the receiver's success or failure, and a crashed deliverer's with its lease. On
PostgreSQL the claim is made by the statement that reads the transition.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import time
import traceback
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from inspect import iscoroutinefunction
from typing import Any, Final

from asgiref.sync import async_to_sync

from django.db import IntegrityError, connection, transaction
from django.db.models import Case, DateTimeField, F, Value, When
from django.utils import timezone

from django_ledgepay import claims, signals, task_backend, telemetry
from django_ledgepay.conf import conf
from django_ledgepay.models import Payment, Reaction, Refund, Transition

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
    """What one :func:`deliver` did: the receivers that succeeded now, those that raised,
    and those it left to another deliverer's claim, by name."""

    transition: Transition | None
    succeeded: list[str]
    failed: list[str]
    skipped: list[str] = field(default_factory=list)

    @property
    def delivered(self) -> bool:
        return self.transition is not None and self.transition.delivered_at is not None


def deliver(transition_id: int) -> Delivery:
    """Claim each receiver of the transition that has not yet succeeded and that no other
    deliverer holds, and run it in a transaction with the record of its success; then mark
    the transition delivered, or schedule its next attempt. Never raises for a receiver's
    sake."""
    with telemetry.span("ledgepay.deliver"):
        return _deliver(transition_id)


def _deliver(transition_id: int) -> Delivery:
    lease = datetime.timedelta(seconds=conf.LEDGEPAY_DELIVERY_LEASE)
    now = timezone.now()
    found = claims.read(transition_id, until=now + lease, now=now, receivers=_receiver_pairs())
    if found is None:
        return Delivery(None, [], [])
    transition = found.transition
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
    done = found.done
    if done is None:
        done = claims.succeeded(transition) if found.succeeded_before else frozenset()
    pending = [item for item in signal.named_receivers(sender) if item[0] not in done]
    claimed = found.claimed
    if claimed is None:
        names = [name for name, _ in pending]
        claimed = claims.claim(transition, names, until=now + lease, now=now)
    outcome.skipped = [name for name, _ in pending if name not in claimed]
    receivers = [item for item in pending if item[0] in claimed]
    # Each claim's end, by receiver: the token that releases or renews it.
    leases = dict.fromkeys(claimed, now + lease)
    errors: list[str] = []
    finished = False
    try:
        for position, (name, receiver) in enumerate(receivers, start=1):
            if not _hold(transition, name, leases, lease):
                outcome.skipped.append(name)
                continue
            # The last receiver, all before it having succeeded, marks the transition
            # delivered in its own transaction: one commit fewer, and the mark stands only
            # with its success.
            last = position == len(receivers) and not errors and not outcome.skipped
            began = time.monotonic()
            try:
                ran = _run_once(transition, name, receiver, signal, sender, kwargs, finish=last)
            except Exception as err:
                error = traceback.format_exc()[-MAX_ERROR_CHARS:]
                _record_failure(transition, name, error, leases.pop(name))
                logger.error(
                    "Receiver %s of %s (transition %s) raised %s; it will be tried again.",
                    name,
                    transition.signal,
                    transition.pk,
                    type(err).__name__,
                    exc_info=True,
                    extra={
                        "ledgepay_transition": transition.pk,
                        "ledgepay_payment": transition.payment.ledgepay_id,
                    },
                )
                telemetry.delivery_attempt(transition.signal, name, succeeded=False)
                outcome.failed.append(name)
                errors.append(f"{name}:\n{error}")
            else:
                leases.pop(name)
                if ran:
                    telemetry.delivery_attempt(transition.signal, name, succeeded=True)
                    outcome.succeeded.append(name)
                    finished = last
            _warn_if_outrun(transition, name, time.monotonic() - began, lease)
    except BaseException:
        # Interrupted (a worker told to stop, the database gone): the claims not yet
        # settled end now rather than with their lease, where the database still answers.
        with contextlib.suppress(Exception):
            claims.release(transition, leases)
        raise
    if not finished:
        _finish(transition, errors, skipped=outcome.skipped, ran=bool(outcome.succeeded))
    return outcome


def _hold(
    transition: Transition,
    name: str,
    leases: dict[str, datetime.datetime],
    lease: datetime.timedelta,
) -> bool:
    """Whether the claim on ``name`` still holds for long enough to run it: past half its
    lease (receivers before it ran long), it is renewed for a whole lease; False when it
    lapsed and another deliverer took it meanwhile."""
    now = timezone.now()
    until = leases[name]
    if now < until - lease / 2:
        return True
    renewed = now + lease
    if not claims.renew(transition, name, until, renewed):
        del leases[name]
        return False
    leases[name] = renewed
    return True


def _receiver_pairs() -> list[tuple[str, str]]:
    """Each receiver connected now, as the name of its signal and its own."""
    return [
        (str(signal_name), name)
        for signal_name, (signal, sender) in SIGNALS.items()
        for name, _ in signal.named_receivers(sender)
    ]


def _warn_if_outrun(
    transition: Transition, name: str, seconds: float, lease: datetime.timedelta
) -> None:
    if seconds > lease.total_seconds():
        logger.warning(
            "Receiver %s of transition %s ran for %.0f s, longer than its claim's lease "
            "(LEDGEPAY_DELIVERY_LEASE, %.0f s): another deliverer may have run it meanwhile. "
            "Raise LEDGEPAY_DELIVERY_LEASE, or hand the long work to a task of its own.",
            name,
            transition.pk,
            seconds,
            lease.total_seconds(),
        )


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
    """Mark the receiver's row (its claim, or its failures) succeeded, or insert it, ending
    the claim, and with ``finish`` mark the transition delivered; False, and nothing
    written, when the receiver had succeeded already. One statement on PostgreSQL, an
    upsert on SQLite."""
    vendor = connection.vendor
    if vendor not in {"postgresql", "sqlite"}:
        if not _write_attempt(
            transition, name, succeeded_at=now, last_attempt_at=now, error="", claimed_until=None
        ):
            return False
        if finish:
            _mark_delivered(transition, now)
        return True
    table = connection.ops.quote_name(Reaction._meta.db_table)
    moment = claims.db_time(now)
    sql = (
        f"INSERT INTO {table} "
        "(transition_id, receiver, attempts, succeeded_at, last_attempt_at, error) "
        "VALUES (%s, %s, 1, %s, %s, '') "
        "ON CONFLICT (transition_id, receiver) DO UPDATE SET "
        f"succeeded_at = EXCLUDED.succeeded_at, attempts = {table}.attempts + 1, "
        "last_attempt_at = EXCLUDED.last_attempt_at, error = '', claimed_until = NULL "
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


def _record_failure(
    transition: Transition, name: str, error: str, until: datetime.datetime | None
) -> None:
    """Count a failed attempt of the receiver, keeping its error, and end this deliverer's
    claim on it (the one ending at ``until``), so that its next attempt need not wait for
    the lease. A claim another deliverer took meanwhile stays."""
    mine = Case(
        When(claimed_until=until, then=Value(None)),
        default=F("claimed_until"),
        output_field=DateTimeField(),
    )
    # False (a row recorded meanwhile by another worker) needs nothing more.
    _write_attempt(
        transition,
        name,
        last_attempt_at=timezone.now(),
        error=error,
        claimed_until=mine if until is not None else F("claimed_until"),
    )


def _write_attempt(transition: Transition, name: str, **fields: Any) -> bool:
    """Count an attempt of the receiver with ``fields`` on its row, creating the row if it
    has none; False, and nothing written, when the row is a success already or another
    worker inserted it meanwhile."""
    rows = Reaction.objects.filter(transition=transition, receiver=name, succeeded_at=None)
    if rows.update(attempts=F("attempts") + 1, **fields):
        return True
    # A new row holds no claim (expressions aside, the values are the ones given).
    values = {key: value for key, value in fields.items() if key != "claimed_until"}
    try:
        with transaction.atomic():
            Reaction.objects.create(transition=transition, receiver=name, attempts=1, **values)
    except IntegrityError:
        return False
    return True


def _mark_delivered(transition: Transition, now: datetime.datetime) -> None:
    Transition.objects.filter(pk=transition.pk, delivered_at__isnull=True).update(
        delivered_at=now, next_attempt_at=None, error=""
    )


def _finish(
    transition: Transition, errors: list[str], *, skipped: Collection[str] = (), ran: bool = False
) -> None:
    """After the receivers ran: the transition delivered when none raised, or its next
    attempt scheduled. A receiver left to another deliverer's claim is that deliverer's to
    finish; only when this one ran others (each claimed a part) does it look whether every
    receiver has succeeded now."""
    now = timezone.now()
    if not errors and skipped:
        signal, sender = SIGNALS[transition.signal]
        names = {name for name, _ in signal.named_receivers(sender)}
        if not ran or not names <= claims.succeeded(transition):
            return
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
