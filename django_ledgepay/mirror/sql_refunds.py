"""The SQL statements of ``refund.*`` deliveries on PostgreSQL (see
:mod:`django_ledgepay.mirror.sql`).

A refund's payment row is locked first, as the general path and ``refund_payment`` lock it
before its refunds. A refund never seen is created under that lock, its payment's row
written with it, only where the rulebook's :func:`~django_ledgepay.mirror.rules.decide_new_refund`
allows it: in the payment's currency, and not past the payment's amount. That sum is read in
the statement's snapshot, which a concurrent refund committed after the snapshot and before
the lock would escape: so the row the lock returns must be the row the snapshot holds
(every writer of a refund writes its payment's row), or nothing is created and the general
path decides. A known pending refund moves to the announced status.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django_ledgepay import transitions
from django_ledgepay.client import get_client
from django_ledgepay.exceptions import LedgePayError
from django_ledgepay.mirror import rules
from django_ledgepay.mirror.rules import Verdict
from django_ledgepay.mirror.sql_parts import (
    Draft,
    KnownPayment,
    KnownRefund,
    Unreachable,
    assignments,
    columns,
    db_value,
    event_insert,
    q,
    transition_insert,
)
from django_ledgepay.mirror.values import payment_values, refund_values
from django_ledgepay.models import Payment, Refund, Transition, WebhookEvent

Statement = tuple[str, list[Any], list[Transition]]


def refund_statement(
    data: Mapping[str, Any],
    announced: str | None,
    draft: Draft,
    payment: KnownPayment | None,
    refund: KnownRefund | None,
) -> Statement | None:
    """The statement for a refund event; None for a case left to the general path."""
    values = refund_values(data)
    if announced is not None:
        values["status"] = announced
    if refund is not None:
        return _known_refund_statement(data, values, draft, payment, refund)
    if "amount" not in values:
        return None  # Not enough to record it: the general path says why.

    refunds, payments = q(Refund._meta.db_table), q(Payment._meta.db_table)
    params: list[Any] = []
    parts = []
    deferred: list[tuple[str, list[Any]]] = []  # After the event's INSERT: they name it.
    written: list[Transition] = []
    selects: list[str] = []
    if payment is not None:
        # Locked first; its version (xmin) as the lock returns it, to compare with the
        # snapshot's (see the module's docstring).
        parts.append(
            f"pay AS (SELECT {q('id')}, {q('currency')}, {q('amount')}, "
            f"xmin::text AS version FROM {payments} WHERE {q('id')} = %s FOR UPDATE)"
        )
        params.append(payment.id)
        unchanged = (
            f"pay.version = (SELECT xmin::text FROM {payments} s WHERE s.{q('id')} = pay.id)"
        )
    else:
        unseen = _unseen_payment(data, draft)
        if unseen is None:
            return None
        pay_sql, pay_params, synced = unseen
        parts.append(pay_sql)
        params += pay_params
        unchanged = "TRUE"  # Inserted by this very statement: no refund can be its.
        if synced is not None:
            deferred.append(transition_insert("synced", synced, "pay.id", "NULL", "pay", "NULL"))
            written.append(synced)
            selects.append("(SELECT id FROM synced)")

    # A refund never seen: the rulebook's decision, with the payment's facts in SQL.
    status = values.get("status", rules.PENDING)
    new = Refund(
        ledgepay_id=data["id"],
        payment_id=0,
        updated_at=draft.now,
        **{**values, "status": status, "currency": values.get("currency", "")},
    )
    names, new_values = columns(new, skip=frozenset({"payment", "currency"}))
    refunded = (
        f"(SELECT COALESCE(SUM(r.{q('amount')}), 0) FROM {refunds} r "
        f"WHERE r.{q('payment_id')} = pay.id AND r.{q('status')} <> %s)"
    )
    guard, guard_params = [unchanged], []
    if "currency" in values:
        guard.append("pay.currency = %s")
        guard_params.append(values["currency"])
    if status != Refund.Status.FAILED:  # Only a refund that has not failed counts.
        guard.append(f"{refunded} + %s <= pay.amount")
        guard_params += [Refund.Status.FAILED, values["amount"]]
    parts.append(
        f"created AS (INSERT INTO {refunds} ({', '.join(names)}, {q('payment_id')}, "
        f"{q('currency')}) SELECT {', '.join(['%s'] * len(new_values))}, pay.id, "
        f"pay.currency FROM pay WHERE {' AND '.join(guard)} "
        f"ON CONFLICT ({q('ledgepay_id')}) DO NOTHING "
        f"RETURNING {q('id')}, {q('payment_id')}, {q('status')})"
    )
    params += [*new_values, *guard_params]
    if payment is not None:
        parts.append(
            f"touched AS (UPDATE {payments} SET {q('updated_at')} = %s "
            f"WHERE {q('id')} = (SELECT payment_id FROM created) RETURNING {q('id')})"
        )
        params.append(db_value(Payment, "updated_at", draft.now))
    signals: list[str] = [Transition.Signal.REFUND_CREATED]
    if status in rules.REFUND_TRANSITIONS:
        signals.append(rules.REFUND_TRANSITIONS[status])
    for number, signal in enumerate(signals):
        transition = transitions.new_transition(
            signal, payment=Payment(), event=draft.event, now=draft.now
        )
        alias = f"created_noted_{number}"
        deferred.append(
            transition_insert(alias, transition, "created.payment_id", "created.id", "created")
        )
        written.append(transition)
        selects.append(f"(SELECT id FROM {alias})")

    stored, stored_params = event_insert(draft, "%s", "''", "EXISTS (SELECT 1 FROM created)")
    parts.append(f"stored AS ({stored})")
    params += [*stored_params, WebhookEvent.Status.PROCESSED]
    for sql, noted_params in deferred:
        parts.append(sql)
        params += noted_params
    sql = (
        "WITH "
        + ", ".join(parts)
        + " SELECT (SELECT id FROM stored), (SELECT status FROM stored)"
        + "".join(f", {select}" for select in selects)
    )
    return sql, params, written


def _known_refund_statement(
    data: Mapping[str, Any],
    said: Mapping[str, Any],
    draft: Draft,
    payment: KnownPayment | None,
    refund: KnownRefund,
) -> Statement | None:
    """A known pending refund moved to a final status, under its payment's lock; or, when
    the event says nothing new, the event alone. None for what the general path decides:
    news the rulebook refuses or keeps, or that changes more than the status."""
    if payment is None or refund.payment_id != payment.id:
        return None
    held = {**refund._asdict(), "ledgepay_id": data["id"]}
    decision = rules.decide_refund(held, said, payment=data["payment_id"])
    if decision.verdict == Verdict.NOTHING:
        alone, alone_params = event_insert(draft, "%s", "%s", "TRUE")
        return alone, [*alone_params, WebhookEvent.Status.PROCESSED, ""], []
    if decision.verdict != Verdict.APPLY or "status" not in decision.writes:
        return None
    refunds, payments = q(Refund._meta.db_table), q(Payment._meta.db_table)
    sets, set_params = assignments(Refund, {**decision.writes, "updated_at": draft.now}, {})
    params: list[Any] = [payment.id, *set_params, refund.id, rules.PENDING]
    (signal,) = decision.signals
    moved = transitions.new_transition(signal, payment=Payment(), event=draft.event, now=draft.now)
    stored, stored_params = event_insert(draft, "%s", "''", "EXISTS (SELECT 1 FROM moved)")
    noted, noted_params = transition_insert(
        "noted", moved, "moved.payment_id", "moved.id", "moved"
    )
    params += [*stored_params, WebhookEvent.Status.PROCESSED, *noted_params]
    sql = (
        # The payment's row first, as everywhere its refunds change.
        f"WITH pay AS (SELECT {q('id')} FROM {payments} WHERE {q('id')} = %s "
        f"FOR UPDATE), moved AS (UPDATE {refunds} SET {', '.join(sets)} "
        f"WHERE {q('id')} = %s AND {q('status')} = %s "
        f"AND EXISTS (SELECT 1 FROM pay) RETURNING {q('id')}, {q('payment_id')}), "
        f"stored AS ({stored}), {noted} "
        "SELECT (SELECT id FROM stored), (SELECT status FROM stored), "
        "(SELECT id FROM noted)"
    )
    return sql, params, [moved]


def _unseen_payment(
    data: Mapping[str, Any], draft: Draft
) -> tuple[str, list[Any], Transition | None] | None:
    """``pay`` for a refund whose payment the mirror lacks: the payment fetched from
    LedgePay (outside any transaction: no lock is held over HTTP) and recorded as
    ``sync_payment`` records it, with its transition, unless a rival recorded it first or
    the mirror knows the refund (under another payment: the general path notes that).
    None when the payment cannot be recorded (the general path then does what it does);
    Unreachable when LedgePay cannot give it."""
    ledgepay_id = data["payment_id"]
    try:
        remote = get_client().retrieve_payment(ledgepay_id)
    except LedgePayError as err:
        raise Unreachable(err) from err
    values = payment_values({**remote, "id": remote.get("id") or ledgepay_id})
    if "amount" not in values or "currency" not in values:
        return None
    if remote.get("id", ledgepay_id) != ledgepay_id:
        return None
    new = Payment(
        ledgepay_id=ledgepay_id, updated_at=draft.now, **rules.new_payment(values, draft.now)
    )
    names, new_values = columns(new)
    table, refunds = q(Payment._meta.db_table), q(Refund._meta.db_table)
    sql = (
        f"pay AS (INSERT INTO {table} ({', '.join(names)}) "
        f"SELECT {', '.join(['%s'] * len(new_values))} "
        f"WHERE NOT EXISTS (SELECT 1 FROM {refunds} WHERE {q('ledgepay_id')} = %s) "
        f"ON CONFLICT ({q('ledgepay_id')}) DO NOTHING "
        f"RETURNING {q('id')}, {q('currency')}, {q('amount')})"
    )
    synced = None
    if new.status in rules.PAYMENT_TRANSITIONS:
        with transitions.origin(Transition.Source.SYNC):
            synced = transitions.new_transition(
                rules.PAYMENT_TRANSITIONS[new.status], payment=Payment(), now=draft.now
            )
    return sql, [*new_values, data["id"]], synced
