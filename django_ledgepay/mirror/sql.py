"""Webhook deliveries applied in at most two small SQL statements on PostgreSQL: a
redelivery, and a known pending payment moved (the sale), in one.

(On SQLite, without data-modifying CTEs, the look-up answers a redelivery and records a new
body for a final payment in one INSERT; every other case takes the general path.)

The first statement looks the delivery up: the event already stored for the body (a
redelivery, answered with it alone), and the payment the event concerns, with its status and
fixed facts. For a ``payment.*`` event it also moves the payment when it is pending, the body
new and the event's fixed facts the payment's: that case needs nothing more. Otherwise what
it finds decides the second statement, which mirrors the general path of
:mod:`django_ledgepay.services` for the case found and leaves every other case to it
untouched (it then changes nothing and stores nothing). In that one statement, atomically:
the change is made, the event stored with its outcome, and the change's
:class:`~django_ledgepay.models.Transition` written.

A ``payment.*`` delivery signed :data:`LATE_AFTER` seconds or more after its event's
``timestamp`` is most likely one of LedgePay's retries, of a body applied before: it is
looked up with a plain ``SELECT`` first, which answers such a retry alone (PostgreSQL would
plan the move's statement for nothing), and a pending payment found is then moved as above.

- ``payment.*``: a known pending payment moves to the announced status (``WHERE status =
  'pending'``); a payment never seen is created from the event's data when it holds an
  amount and a currency; a final payment, which never changes, only records the event's
  outcome (processed, or ignored when the news contradicts it).
- ``refund.*`` for a known payment: its row is locked first, as the general path locks it;
  a refund never seen is created (its payment's row written); a known pending refund moves
  to the announced status; a known refund the event says nothing new about records the
  outcome.

A fixed fact (amount, currency, a refund's payment) that differs from the mirror's, a status
moved since the look-up, or a field the general path would change leave the case to the
general path, which asks LedgePay where it must. A rival that applied the same body
meanwhile leaves nothing to do: its change is made (``WHERE status = 'pending'`` matches
nothing, the payment's or refund's ``ledgepay_id`` is taken) and its event stored (the body's
hash is unique). ``tests/test_statements.py`` runs both paths on the same deliveries and
compares the rows they leave.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from django.db import connection
from django.utils import timezone

from django_ledgepay import transitions
from django_ledgepay.mirror import rules
from django_ledgepay.mirror.rules import PAYMENT_EVENTS, REFUND_EVENTS
from django_ledgepay.mirror.sql_parts import (
    Draft,
    KnownPayment,
    KnownRefund,
    Settlement,
    Unreachable,
    assignments,
    columns,
    event_insert,
    facts_guard,
    found,
    look_up_sql,
    q,
    saved,
    transition_insert,
)
from django_ledgepay.mirror.sql_refunds import refund_statement
from django_ledgepay.mirror.values import parse_time, payment_values
from django_ledgepay.models import Payment, Transition, WebhookEvent

logger = logging.getLogger("django_ledgepay.webhooks")

__all__ = [
    "LATE_AFTER",
    "Settlement",
    "KnownPayment",
    "KnownRefund",
    "settle",
    "found",
    "look_up",
    "signed_late",
]

Statement = tuple[str, list[Any], list[Transition]]


def settle(
    payload: Mapping[str, Any], digest: str, *, signed_at: float | None = None
) -> Settlement | None:
    """Apply a validated event in at most two statements; None when the event is of no
    type handled here (take the general path). PostgreSQL and SQLite only.

    ``signed_at``: the signature's timestamp. A payment event signed :data:`LATE_AFTER`
    seconds or more after its own ``timestamp`` is most likely a retry, and is looked up
    first (see :func:`signed_late`)."""
    event_type = payload["event"]
    if event_type not in PAYMENT_EVENTS and event_type not in REFUND_EVENTS:
        return None
    data = payload["data"]
    now = timezone.now()
    draft = Draft(
        WebhookEvent(
            event_type=event_type,
            object_id=data["id"],
            payload=dict(payload),
            body_sha256=digest,
            status=WebhookEvent.Status.PROCESSED,
            attempts=1,
            received_at=now,
            processed_at=now,
        ),
        now,
    )
    known_refund = None
    if event_type in REFUND_EVENTS:
        stored, payment, known_refund = look_up(digest, data["payment_id"], data["id"])
    elif connection.vendor != "postgresql":
        stored, payment, _ = look_up(digest, data["id"])
    elif not signed_late(payload, signed_at):
        # The case that carries a sale, a known pending payment moved, is tried in the
        # look-up's own statement: one statement for it, as for a redelivery.
        decided, payment = _move_if_pending(data, PAYMENT_EVENTS[event_type], draft)
        if decided is not None:
            return decided
        stored = None
    else:
        # A retry: most likely of a body applied before, which the plain look-up answers
        # alone, without PostgreSQL planning the move it would not make. A pending payment
        # found is then moved as above (the look-up repeated in the move's statement).
        stored, payment, _ = look_up(digest, data["id"])
        if stored is None and payment is not None and payment.status == rules.PENDING:
            decided, payment = _move_if_pending(data, PAYMENT_EVENTS[event_type], draft)
            if decided is not None:
                return decided
    if stored is not None:
        return Settlement(settled=None, stored=stored)
    try:
        statement = _statement(data, event_type, draft, payment, known_refund)
    except Unreachable as unreachable:
        # A refund's payment could not be fetched: the event is kept failed, as the general
        # path keeps it, without asking LedgePay a second time.
        return _failed(draft, unreachable.error)
    if statement is None:
        return Settlement(settled=None, stored=None)
    sql, params, written = statement
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        # An event's INSERT alone returns no row when a rival stored the body first.
        row = cursor.fetchone() or (None, None)
    return _settled(row, written, draft)


def _move_if_pending(
    data: Mapping[str, Any], announced: str, draft: Draft
) -> tuple[Settlement | None, KnownPayment | None]:
    """The look-up in the statement that moves a known pending payment
    (:func:`_pending_payment_statement`); the outcome when that decided the delivery, and
    the payment found (None when never seen)."""
    sql, params, written = _pending_payment_statement(data, announced, draft)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
    stored, payment = found(row[:6], draft.event.body_sha256)
    if stored is not None:
        return Settlement(settled=None, stored=stored), payment
    if row[-1] is not None:
        return _settled(row[6:], written, draft), payment
    if payment is not None and payment.status == rules.PENDING:
        # Not moved: its fixed facts contradict the event, or a rival moved it after the
        # look-up. The general path decides.
        return Settlement(settled=None, stored=None), payment
    return None, payment  # Final or never seen: the statement of its case.


#: Seconds between an event's ``timestamp`` and a delivery's signature from which the
#: delivery is taken for a retry. LedgePay signs each attempt when it sends it; a first
#: attempt follows its event within a second or two, a retry comes after the attempt before
#: it failed or timed out, and after a back-off.
LATE_AFTER = 30


def signed_late(payload: Mapping[str, Any], signed_at: float | None) -> bool:
    """Whether a delivery signed at ``signed_at`` (Unix seconds) was signed
    :data:`LATE_AFTER` seconds or more after its event's ``timestamp``.

    It only chooses which statement runs first: either order applies any delivery alike.
    False when either time is missing or unreadable (a naive ``timestamp`` is UTC)."""
    happened = parse_time(payload.get("timestamp"))
    if signed_at is None or happened is None:
        return False
    return signed_at - happened.timestamp() >= LATE_AFTER


def _settled(row: tuple[Any, ...], written: list[Transition], draft: Draft) -> Settlement:
    """The outcome of a statement whose ``row`` is the stored event's id and status (None
    when a rival stored the body first), then the id of each of ``written`` transitions."""
    stored_id, stored_status, *transition_ids = row
    pairs = [
        (transition, saved(transition, transition_id))
        for transition, transition_id in zip(written, transition_ids, strict=True)
        if transition_id is not None
    ]
    recorded = [row for _, row in pairs]
    # Those naming the delivery's event (a sync's, of a refund's unseen payment, names none).
    of_the_event = [row for transition, row in pairs if transition.event is not None]
    if stored_id is None and of_the_event:
        # The change was made, but a delivery of the same body on the general path stored
        # the event after the look-up (its INSERT is committed: ours waited for it, then
        # yielded). The transitions name that event; the general path records its outcome.
        _name_stored_event(of_the_event, draft.event.body_sha256)
    for transition in recorded:
        transitions.deliver_on_commit(transition)
    if stored_id is None:
        return Settlement(settled=None, stored=None)
    event = saved(draft.event, stored_id, status=stored_status)
    return Settlement(settled=event, stored=event)


def _name_stored_event(written: list[Transition], digest: str) -> None:
    stored = WebhookEvent.objects.filter(body_sha256=digest).values("pk")[:1]
    Transition.objects.filter(pk__in=[t.pk for t in written]).update(event=stored)


def _statement(
    data: Mapping[str, Any],
    event_type: str,
    draft: Draft,
    payment: KnownPayment | None,
    refund: KnownRefund | None,
) -> Statement | None:
    """The statement for the case the look-up found, or None (take the general path)."""
    if event_type in PAYMENT_EVENTS and payment is not None and payment.status != rules.PENDING:
        return _final_payment_statement(data, PAYMENT_EVENTS[event_type], draft, payment)
    if connection.vendor != "postgresql":
        return None  # A change with its transition: a data-modifying CTE, PostgreSQL's.
    if event_type in REFUND_EVENTS:
        return refund_statement(data, REFUND_EVENTS[event_type], draft, payment, refund)
    if payment is not None:
        return None  # Pending: the look-up's own statement tried it (see settle()).
    return _unseen_payment_statement(data, PAYMENT_EVENTS[event_type], draft)


def _failed(draft: Draft, error: Exception) -> Settlement:
    """Store the event failed with the error, as ``webhooks.process_event`` does; leave it
    to the general path when a rival stored the body first."""
    event = draft.event
    event.status, event.error, event.processed_at = WebhookEvent.Status.FAILED, str(error), None
    sql, params = event_insert(draft, "%s", "%s", "TRUE")
    with connection.cursor() as cursor:
        cursor.execute(sql, [*params, event.status, event.error])
        row = cursor.fetchone()
    if row is None:
        return Settlement(settled=None, stored=None)
    stored = saved(event, row[0])
    logger.warning("Webhook event %s (%s) failed: %s", stored.pk, event.event_type, event.error)
    return Settlement(settled=stored, stored=stored)


def look_up(
    digest: str, payment_id: str, refund_id: str | None = None
) -> tuple[WebhookEvent | None, KnownPayment | None, KnownRefund | None]:
    """The event stored for this body, if any, the payment ``payment_id`` and the refund
    ``refund_id``, if known: one statement, an index look-up each."""
    params = [digest, payment_id] if refund_id is None else [digest, payment_id, refund_id]
    with connection.cursor() as cursor:
        cursor.execute(look_up_sql(refund=refund_id is not None), params)
        row = cursor.fetchone()
    stored, payment = found(row[:6], digest)
    refund = KnownRefund(*row[6:]) if refund_id is not None and row[6] is not None else None
    return stored, payment, refund


# payment.*


def _final_payment_statement(
    data: Mapping[str, Any], announced: str, draft: Draft, known: KnownPayment
) -> Statement:
    """A final payment never changes: the event's outcome alone, as the rulebook decides
    it, in one INSERT made only while the payment's fixed facts agree with the event's (else
    nothing is stored and the general path asks LedgePay)."""
    status, error = rules.event_outcome(known.status, announced, "payment")
    facts = {
        name: value for name, value in payment_values(data).items() if name in rules.PAYMENT_FACTS
    }
    guard, guard_params = facts_guard(facts)
    when = (
        f"EXISTS (SELECT 1 FROM {q(Payment._meta.db_table)} WHERE "
        + " AND ".join([f"{q('id')} = %s", *guard])
        + ")"
    )
    sql, params = event_insert(draft, "%s", "%s", when)
    return sql, [*params, status, error, known.id, *guard_params], []


def _pending_payment_statement(data: Mapping[str, Any], announced: str, draft: Draft) -> Statement:
    """The look-up, in the statement that moves a known pending payment to the announced
    status when the body is new and the event's fixed facts are the payment's (the
    rulebook's :func:`~django_ledgepay.mirror.rules.payment_move`, its guard and its SET
    list compiled here).

    Its row: the look-up's columns, then the stored event's id and status and the
    transition's id (None when nothing moved: a redelivery, a payment never seen or final,
    facts that contradict the mirror's, or a rival that moved it first). The look-up reads
    the rows as they were before the statement, as PostgreSQL's data-modifying ``WITH``
    does."""
    move = rules.payment_move(payment_values(data), announced, draft.now)
    sets, params = assignments(Payment, {**move.writes, "updated_at": draft.now}, move.defaults)
    guard, guard_params = facts_guard(move.facts)
    conditions = [f"{q('ledgepay_id')} = %s", f"{q('status')} = %s", *guard]
    params += [data["id"], rules.PENDING, *guard_params]
    events = q(WebhookEvent._meta.db_table)
    conditions.append(f"NOT EXISTS (SELECT 1 FROM {events} WHERE {q('body_sha256')} = %s)")
    params.append(draft.event.body_sha256)
    changed = (
        f"changed AS (UPDATE {q(Payment._meta.db_table)} SET {', '.join(sets)} "
        f"WHERE {' AND '.join(conditions)} RETURNING {q('id')})"
    )
    recorded, recorded_params, transition = _stored_and_noted(draft, move.signal)
    params += [*recorded_params, draft.event.body_sha256, data["id"]]
    look_up = look_up_sql(
        refund=False,
        also="(SELECT id FROM stored), (SELECT status FROM stored), (SELECT id FROM noted)",
    )
    return f"WITH {changed}, {recorded} {look_up}", params, [transition]


def _stored_and_noted(draft: Draft, signal: str) -> tuple[str, list[Any], Transition]:
    """``stored`` and ``noted``, after a ``changed`` that returns the payment it moved or
    recorded: the event's INSERT and its transition's, made only when there is one."""

    def build() -> tuple[str, list[Any], Transition]:
        stored, params = event_insert(draft, "%s", "''", "EXISTS (SELECT 1 FROM changed)")
        transition = transitions.new_transition(
            signal, payment=Payment(), event=draft.event, now=draft.now
        )
        noted, noted_params = transition_insert(
            "noted", transition, "changed.id", "NULL", "changed"
        )
        sql = f"stored AS ({stored}), {noted}"
        return sql, [*params, WebhookEvent.Status.PROCESSED, *noted_params], transition

    sql, params, transition = draft.part(f"noted {signal}", build)
    return sql, list(params), transition


def _unseen_payment_statement(
    data: Mapping[str, Any], announced: str, draft: Draft
) -> Statement | None:
    """A payment never seen recorded, as the rulebook records one; None when its event
    lacks its amount or currency (the general path fetches it)."""
    values = {**payment_values(data), "status": announced}
    if "amount" not in values or "currency" not in values:
        return None
    # Recorded as the general path would, unless a rival recorded it first.
    new = Payment(
        ledgepay_id=data["id"], updated_at=draft.now, **rules.new_payment(values, draft.now)
    )
    names, params = columns(new)
    changed = (
        f"changed AS (INSERT INTO {q(Payment._meta.db_table)} ({', '.join(names)}) "
        f"VALUES ({', '.join(['%s'] * len(params))}) "
        f"ON CONFLICT ({q('ledgepay_id')}) DO NOTHING RETURNING {q('id')})"
    )
    recorded, recorded_params, transition = _stored_and_noted(
        draft, rules.PAYMENT_TRANSITIONS[announced]
    )
    params += recorded_params
    sql = (
        f"WITH {changed}, {recorded} "
        "SELECT (SELECT id FROM stored), (SELECT status FROM stored), (SELECT id FROM noted)"
    )
    return sql, params, [transition]
