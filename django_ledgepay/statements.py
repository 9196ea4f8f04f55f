"""Webhook deliveries applied in two small SQL statements on PostgreSQL, a redelivery in one.

(On SQLite, without data-modifying CTEs, the look-up answers a redelivery and records a new
body for a final payment in one INSERT; every other case takes the general path.)

The first statement looks the delivery up: the event already stored for the body (a
redelivery, answered with it alone), and the payment the event concerns, with its status and
fixed facts. What it finds decides the second statement, which mirrors the general path of
:mod:`django_ledgepay.services` for the case found and leaves every other case to it
untouched (it then changes nothing and stores nothing). In that one statement, atomically:
the change is made, the event stored with its outcome, and the change's
:class:`~django_ledgepay.models.Transition` written.

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

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple, cast

from django.db import connection
from django.db.models import Field, Model
from django.utils import timezone

from django_ledgepay import reactions, services
from django_ledgepay.exceptions import LedgePayError
from django_ledgepay.models import Payment, Refund, Transition, WebhookEvent


@dataclass(frozen=True)
class FastOutcome:
    """What the statements did: the stored event when they applied the delivery, else the
    event already stored for this body (a redelivery), if any."""

    settled: WebhookEvent | None
    stored: WebhookEvent | None


class KnownPayment(NamedTuple):
    """The mirror's payment, as the look-up found it."""

    id: int
    status: str
    amount: int
    currency: str


def apply(payload: Mapping[str, Any], digest: str) -> FastOutcome | None:
    """Apply a validated event in at most two statements; None when the event is of no
    type handled here (take the general path). PostgreSQL and SQLite only."""
    from django_ledgepay.webhooks import PAYMENT_EVENTS, REFUND_EVENTS

    event_type = payload["event"]
    if event_type not in PAYMENT_EVENTS and event_type not in REFUND_EVENTS:
        return None
    data = payload["data"]
    refund = event_type in REFUND_EVENTS
    stored, payment = look_up(digest, data["payment_id"] if refund else data["id"])
    if stored is not None:
        return FastOutcome(settled=None, stored=stored)
    now = timezone.now()
    event = WebhookEvent(
        event_type=event_type,
        object_id=data["id"],
        payload=dict(payload),
        body_sha256=digest,
        status=WebhookEvent.Status.PROCESSED,
        attempts=1,
        received_at=now,
        processed_at=now,
    )
    statement: tuple[str, list[Any], list[Transition]] | None = None
    if not refund and payment is not None and payment.status != Payment.Status.PENDING:
        statement = _final_payment_statement(data, PAYMENT_EVENTS[event_type], event, payment)
    elif connection.vendor != "postgresql":
        pass  # A change with its transition: a data-modifying CTE, which is PostgreSQL's.
    elif refund:
        statement = _refund_statement(data, REFUND_EVENTS[event_type], event, now, payment)
    else:
        statement = _payment_statement(data, PAYMENT_EVENTS[event_type], event, now, payment)
    if statement is None:
        return FastOutcome(settled=None, stored=None)
    sql, params, transitions = statement
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
    stored_id, stored_status, *transition_ids = row
    if stored_id is None:
        return FastOutcome(settled=None, stored=None)
    event.pk, event.status = stored_id, stored_status
    event._state.adding = False
    for transition, transition_id in zip(transitions, transition_ids, strict=True):
        if transition_id is not None:
            transition.pk = transition_id
            transition._state.adding = False
            reactions.deliver_on_commit(transition)
    return FastOutcome(settled=event, stored=event)


def look_up(digest: str, payment_id: str) -> tuple[WebhookEvent | None, KnownPayment | None]:
    """The event stored for this body, if any, and the payment ``payment_id``, if known:
    one statement, two index look-ups."""
    with connection.cursor() as cursor:
        cursor.execute(_look_up_sql(), [digest, payment_id])
        event_id, event_status, *payment = cursor.fetchone()
    stored = None
    if event_id is not None:
        stored = WebhookEvent(pk=event_id, status=event_status, body_sha256=digest)
        stored._state.adding = False
    return stored, (KnownPayment(*payment) if payment[0] is not None else None)


@functools.cache
def _look_up_sql() -> str:
    events, payments = _q(WebhookEvent._meta.db_table), _q(Payment._meta.db_table)
    return (
        f"SELECT e.{_q('id')}, e.{_q('status')}, p.{_q('id')}, p.{_q('status')}, "
        f"p.{_q('amount')}, p.{_q('currency')} FROM (SELECT 1) AS one "
        f"LEFT JOIN {events} e ON e.{_q('body_sha256')} = %s "
        f"LEFT JOIN {payments} p ON p.{_q('ledgepay_id')} = %s"
    )


# SQL helpers

_QUOTED: dict[str, str] = {}


def _q(name: str) -> str:
    """``name`` quoted for PostgreSQL (remembered: the statements are built per delivery)."""
    quoted = _QUOTED.get(name)
    if quoted is None:
        quoted = _QUOTED[name] = connection.ops.quote_name(name)
    return quoted


def _field(model: type[Model], name: str) -> Field[Any, Any]:
    return cast("Field[Any, Any]", model._meta.get_field(name))


def _value(model: type[Model], name: str, value: Any) -> Any:
    return _field(model, name).get_db_prep_save(value, connection)


def _columns(instance: Model, skip: frozenset[str] = frozenset()) -> tuple[list[str], list[Any]]:
    """The columns of ``instance`` but its id and ``skip``, and their values for the
    database: every column, so none is left to a default the schema does not know."""
    names, values = [], []
    for field in type(instance)._meta.concrete_fields:
        if field.primary_key or field.name in skip:
            continue
        names.append(_q(field.column))
        values.append(field.get_db_prep_save(getattr(instance, field.attname), connection))
    return names, values


def _event_insert(
    event: WebhookEvent, status_sql: str, error_sql: str, when: str
) -> tuple[str, list[Any]]:
    """The event's INSERT with its status and error decided in SQL, only ``when``; a rival
    that stored the same body first wins (ON CONFLICT), and then nothing is returned."""
    names, values = _columns(event, skip=frozenset({"status", "error"}))
    sql = (
        f"INSERT INTO {_q(WebhookEvent._meta.db_table)} "
        f"({', '.join(names)}, {_q('status')}, {_q('error')}) "
        f"SELECT {', '.join(['%s'] * len(values))}, {status_sql}, {error_sql} "
        f"WHERE {when} ON CONFLICT ({_q('body_sha256')}) DO NOTHING "
        f"RETURNING {_q('id')}, {_q('status')}"
    )
    return sql, values


def _transition_insert(
    alias: str,
    transition: Transition,
    payment_sql: str,
    refund_sql: str,
    source: str,
    event_sql: str = "stored.id",
) -> tuple[str, list[Any]]:
    """``alias``: a transition's INSERT for each row of ``source`` (with the event stored)."""
    names, values = _columns(transition, skip=frozenset({"payment", "refund", "event"}))
    sql = (
        f"{alias} AS (INSERT INTO {_q(Transition._meta.db_table)} "
        f"({', '.join(names)}, {_q('payment_id')}, {_q('refund_id')}, {_q('event_id')}) "
        f"SELECT {', '.join(['%s'] * len(values))}, {payment_sql}, {refund_sql}, "
        f"{event_sql} FROM {source}, stored RETURNING {_q('id')})"
    )
    return sql, values


def _matches(model: type[Model], alias: str, values: Mapping[str, Any]) -> tuple[str, list[Any]]:
    """`` AND alias.column IS NOT DISTINCT FROM %s`` for each of ``values``."""
    sql, params = "", []
    for name, value in values.items():
        column = (
            f"{alias}.{_q(_field(model, name).column)}"
            if alias
            else _q(_field(model, name).column)
        )
        sql += f" AND {column} IS NOT DISTINCT FROM %s"
        params.append(_value(model, name, value))
    return sql, params


# payment.*


def _final_payment_statement(
    data: Mapping[str, Any], announced: str, event: WebhookEvent, known: KnownPayment
) -> tuple[str, list[Any], list[Transition]] | None:
    """A final payment never changes: the event's outcome alone, as services' _outcome
    decides it, in one INSERT. None when the event contradicts its fixed facts."""
    if _contradicts(data, known):
        return None
    status, error = WebhookEvent.Status.PROCESSED, ""
    if known.status != announced:
        status = WebhookEvent.Status.IGNORED
        error = f"The payment is already {known.status}."
    sql, params = _event_insert(event, "%s", "%s", "TRUE")
    return sql, [*params, status, error], []


def _contradicts(data: Mapping[str, Any], known: KnownPayment) -> bool:
    said = services.payment_values(data)
    return any(
        name in said and said[name] != getattr(known, name) for name in services.FIXED_FACTS
    )


def _payment_statement(
    data: Mapping[str, Any],
    announced: str,
    event: WebhookEvent,
    now: Any,
    known: KnownPayment | None,
) -> tuple[str, list[Any], list[Transition]] | None:
    """A known pending payment moved, or a payment never seen recorded; None for a case
    left to the general path: fixed facts that contradict the mirror's, or a payment never
    seen whose event lacks its amount or currency (it is fetched)."""
    values = {**services.payment_values(data), "status": announced}
    facts = {name: values.pop(name) for name in sorted(services.FIXED_FACTS) if name in values}
    if known is not None and _contradicts(data, known):
        return None
    if known is None and len(facts) < len(services.FIXED_FACTS):
        return None

    table = _q(Payment._meta.db_table)
    params: list[Any] = []
    if known is not None:
        # Pending: moved to the announced status, unless a rival moved it first.
        moved_values = {**values, "updated_at": now}
        moved_values.setdefault("completed_at", now)
        assignments = []
        for name, value in moved_values.items():
            assignments.append(f"{_q(_field(Payment, name).column)} = %s")
            params.append(_value(Payment, name, value))
        changed = (
            f"changed AS (UPDATE {table} SET {', '.join(assignments)} "
            f"WHERE {_q('id')} = %s AND {_q('status')} = %s RETURNING {_q('id')})"
        )
        params += [known.id, Payment.Status.PENDING]
    else:
        # Never seen: recorded as the general path would, unless a rival recorded it first.
        new = Payment(
            ledgepay_id=data["id"],
            updated_at=now,
            **services._new_payment({**values, **facts}),
        )
        names, new_values = _columns(new)
        changed = (
            f"changed AS (INSERT INTO {table} ({', '.join(names)}) "
            f"VALUES ({', '.join(['%s'] * len(new_values))}) "
            f"ON CONFLICT ({_q('ledgepay_id')}) DO NOTHING RETURNING {_q('id')})"
        )
        params += new_values

    stored, stored_params = _event_insert(event, "%s", "''", "EXISTS (SELECT 1 FROM changed)")
    params += [*stored_params, WebhookEvent.Status.PROCESSED]
    transition = reactions.new_transition(
        services.PAYMENT_TRANSITIONS[announced], payment=Payment(), event=event, now=now
    )
    noted, noted_params = _transition_insert("noted", transition, "changed.id", "NULL", "changed")
    params += noted_params
    sql = (
        f"WITH {changed}, stored AS ({stored}), {noted} "
        "SELECT (SELECT id FROM stored), (SELECT status FROM stored), (SELECT id FROM noted)"
    )
    return sql, params, [transition]


# refund.*


def _refund_statement(
    data: Mapping[str, Any],
    announced: str | None,
    event: WebhookEvent,
    now: Any,
    known: KnownPayment | None,
) -> tuple[str, list[Any], list[Transition]] | None:
    """The statement for a refund event; None for a case left to the general path."""
    refunds, payments = _q(Refund._meta.db_table), _q(Payment._meta.db_table)
    values = services.refund_values(data)
    if announced is not None:
        values["status"] = announced
    facts = {name: values.pop(name) for name in sorted(services.FIXED_FACTS) if name in values}
    status = values.pop("status", None)
    others = values  # reason, created_at: what else the general path would merge
    params: list[Any] = []
    parts = []
    # The transitions' INSERTs, which come after the event's (they name it).
    deferred: list[tuple[str, list[Any]]] = []
    transitions: list[Transition] = []
    selects: list[str] = []
    if known is not None:
        # The payment's row is locked first, as the general path and refund_payment() lock
        # it before its refunds: every statement below reads from ``pay``, so runs after it.
        parts.append(
            f"pay AS (SELECT {_q('id')}, {_q('currency')} FROM {payments} "
            f"WHERE {_q('id')} = %s FOR UPDATE)"
        )
        params.append(known.id)
    else:
        unseen = _unseen_payment(data, facts, now)
        if unseen is None:
            return None
        pay_sql, pay_params, synced = unseen
        parts.append(pay_sql)
        params += pay_params
        if synced is not None:
            deferred.append(_transition_insert("synced", synced, "pay.id", "NULL", "pay", "NULL"))
            transitions.append(synced)
            selects.append("(SELECT id FROM synced)")
    parts.append(
        f"current AS (SELECT r.{_q('id')}, r.{_q('status')} FROM {refunds} r "
        f"WHERE r.{_q('ledgepay_id')} = %s)"
    )
    params.append(data["id"])

    changed = []

    # A known refund of this payment that the event says nothing new about, bar its status.
    same_facts_sql, same_facts_params = _matches(Refund, "r", facts)
    same_others_sql, same_others_params = _matches(Refund, "r", others)
    known_where = (
        f"r.{_q('ledgepay_id')} = %s "
        f"AND r.{_q('payment_id')} = (SELECT id FROM pay){same_facts_sql}"
    )
    known_params = [data["id"], *same_facts_params]

    if status in (Refund.Status.SUCCEEDED, Refund.Status.FAILED):
        assignments = [f"{_q('status')} = %s", f"{_q('updated_at')} = %s"]
        move_params: list[Any] = [status, _value(Refund, "updated_at", now)]
        for name, value in others.items():
            assignments.append(f"{_q(_field(Refund, name).column)} = %s")
            move_params.append(_value(Refund, name, value))
        parts.append(
            f"moved AS (UPDATE {refunds} r SET {', '.join(assignments)} WHERE {known_where} "
            f"AND r.{_q('status')} = %s RETURNING r.{_q('id')}, r.{_q('payment_id')})"
        )
        params += move_params + known_params + [Refund.Status.PENDING]
        moved = reactions.new_transition(
            services.REFUND_TRANSITIONS[status], payment=Payment(), event=event, now=now
        )
        deferred.append(
            _transition_insert("moved_noted", moved, "moved.payment_id", "moved.id", "moved")
        )
        transitions.append(moved)
        selects.append("(SELECT id FROM moved_noted)")
        changed.append("EXISTS (SELECT 1 FROM moved)")

    # Nothing new: the status is the event's (or the event names none), the rest matches.
    same_status, same_params = "", []
    if status is not None:
        same_status = f" AND r.{_q('status')} = %s"
        same_params = [status]
    parts.append(
        f"same AS (SELECT r.{_q('id')} FROM {refunds} r WHERE {known_where}"
        f"{same_others_sql}{same_status})"
    )
    params += [*known_params, *same_others_params, *same_params]
    changed.append("EXISTS (SELECT 1 FROM same)")

    if "amount" in facts:
        # A refund never seen: created under its payment, whose row is written with it.
        new = Refund(
            ledgepay_id=data["id"],
            payment_id=0,
            updated_at=now,
            status=status or Refund.Status.PENDING,
            **facts,
            **others,
        )
        skip = frozenset({"payment", "currency"})
        names, new_values = _columns(new, skip=skip)
        currency = facts.get("currency")
        parts.append(
            f"created AS (INSERT INTO {refunds} ({', '.join(names)}, {_q('payment_id')}, "
            f"{_q('currency')}) SELECT {', '.join(['%s'] * len(new_values))}, pay.id, "
            f"COALESCE(%s, pay.currency) FROM pay "
            f"WHERE NOT EXISTS (SELECT 1 FROM current) "
            f"ON CONFLICT ({_q('ledgepay_id')}) DO NOTHING "
            f"RETURNING {_q('id')}, {_q('payment_id')}, {_q('status')})"
        )
        params += [*new_values, currency]
        parts.append(
            f"touched AS (UPDATE {payments} SET {_q('updated_at')} = %s "
            f"WHERE {_q('id')} = (SELECT payment_id FROM created) RETURNING {_q('id')})"
        )
        params.append(_value(Payment, "updated_at", now))
        first = reactions.new_transition(
            Transition.Signal.REFUND_CREATED, payment=Payment(), event=event, now=now
        )
        deferred.append(
            _transition_insert(
                "created_noted", first, "created.payment_id", "created.id", "created"
            )
        )
        transitions.append(first)
        selects.append("(SELECT id FROM created_noted)")
        if status in services.REFUND_TRANSITIONS:
            then = reactions.new_transition(
                services.REFUND_TRANSITIONS[status], payment=Payment(), event=event, now=now
            )
            deferred.append(
                _transition_insert(
                    "created_final", then, "created.payment_id", "created.id", "created"
                )
            )
            transitions.append(then)
            selects.append("(SELECT id FROM created_final)")
        changed.append("EXISTS (SELECT 1 FROM created)")

    stored, stored_params = _event_insert(event, "%s", "''", " OR ".join(changed))
    params += [*stored_params, WebhookEvent.Status.PROCESSED]
    parts.append(f"stored AS ({stored})")
    for sql, noted_params in deferred:
        parts.append(sql)
        params += noted_params
    sql = (
        "WITH "
        + ", ".join(parts)
        + " SELECT (SELECT id FROM stored), (SELECT status FROM stored)"
        + "".join(f", {select}" for select in selects)
    )
    return sql, params, transitions


def _unseen_payment(
    data: Mapping[str, Any], facts: Mapping[str, Any], now: Any
) -> tuple[str, list[Any], Transition | None] | None:
    """``pay`` for a refund whose payment the mirror lacks: the payment fetched from
    LedgePay (outside any transaction: no lock is held over HTTP) and recorded as
    ``sync_payment`` records it, with its transition, unless a rival recorded it first or
    the mirror knows the refund (under another payment: the general path notes that).
    None when the refund cannot be recorded from the event (no amount), or the payment
    cannot be fetched or recorded: the general path then does what it does."""
    if "amount" not in facts:
        return None
    ledgepay_id = data["payment_id"]
    try:
        remote = services.get_client().retrieve_payment(ledgepay_id)
    except LedgePayError:
        return None  # The general path asks again, and keeps the delivery failed.
    values = services.payment_values({**remote, "id": remote.get("id") or ledgepay_id})
    if not values.keys() >= services.FIXED_FACTS or remote.get("id", ledgepay_id) != ledgepay_id:
        return None
    new = Payment(ledgepay_id=ledgepay_id, updated_at=now, **services._new_payment(values))
    names, new_values = _columns(new)
    table, refunds = _q(Payment._meta.db_table), _q(Refund._meta.db_table)
    sql = (
        f"pay AS (INSERT INTO {table} ({', '.join(names)}) "
        f"SELECT {', '.join(['%s'] * len(new_values))} "
        f"WHERE NOT EXISTS (SELECT 1 FROM {refunds} WHERE {_q('ledgepay_id')} = %s) "
        f"ON CONFLICT ({_q('ledgepay_id')}) DO NOTHING "
        f"RETURNING {_q('id')}, {_q('currency')})"
    )
    synced = None
    if new.status in services.PAYMENT_TRANSITIONS:
        with reactions.origin(Transition.Source.SYNC):
            synced = reactions.new_transition(
                services.PAYMENT_TRANSITIONS[new.status], payment=Payment(), now=now
            )
    return sql, [*new_values, data["id"]], synced
