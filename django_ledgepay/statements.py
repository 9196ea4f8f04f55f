"""Webhook deliveries applied in one SQL statement on PostgreSQL.

Each statement mirrors the general path of :mod:`django_ledgepay.services` for the cases it
can decide alone, and leaves every other case to it untouched (it then changes nothing and
stores nothing). In one statement, atomically: the event already stored for the body (a
redelivery) is found; or the change is made, the event stored with its outcome, and the
change's :class:`~django_ledgepay.models.Transition` written. A rival worker, a redelivery
or a concurrent refund then finds the change made and the event stored.

- ``payment.*``: a known pending payment moves to the announced status; a payment never
  seen is created from the event's data when it holds an amount and a currency; a final
  payment records the event's outcome (processed, or ignored when the news contradicts it).
- ``refund.*`` for a known payment: a refund never seen is created (its payment's row
  written, as under its lock in the general path); a known pending refund moves to the
  announced status; a known refund the event says nothing new about records the outcome.

A fixed fact (amount, currency, a refund's payment) that differs from the mirror's, a status
moved meanwhile, or a field the general path would change leave the case to the general
path, which asks LedgePay where it must. ``tests/test_statements.py`` runs both paths on the
same deliveries and compares the rows they leave.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

from django.db import connection
from django.db.models import Field, Model
from django.utils import timezone

from django_ledgepay import reactions, services
from django_ledgepay.models import Payment, Refund, Transition, WebhookEvent


@dataclass(frozen=True)
class FastOutcome:
    """What a statement did: the stored event when it applied the delivery, else the event
    already stored for this body (a redelivery), if any."""

    settled: WebhookEvent | None
    stored: WebhookEvent | None


def apply(payload: Mapping[str, Any], digest: str) -> FastOutcome | None:
    """Apply a validated event in one statement; None when the event is of no type handled
    here (take the general path)."""
    from django_ledgepay.webhooks import PAYMENT_EVENTS, REFUND_EVENTS

    event_type = payload["event"]
    if event_type not in PAYMENT_EVENTS and event_type not in REFUND_EVENTS:
        return None
    now = timezone.now()
    event = WebhookEvent(
        event_type=event_type,
        object_id=payload["data"]["id"],
        payload=dict(payload),
        body_sha256=digest,
        status=WebhookEvent.Status.PROCESSED,
        attempts=1,
        received_at=now,
        processed_at=now,
    )
    if event_type in PAYMENT_EVENTS:
        statement = _payment_statement(payload["data"], PAYMENT_EVENTS[event_type], event, now)
    else:
        statement = _refund_statement(payload["data"], REFUND_EVENTS[event_type], event, now)
    sql, params, transitions = statement
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
    existing_id, existing_status, stored_id, stored_status, *transition_ids = row
    if stored_id is None:
        stored = None
        if existing_id is not None:
            stored = WebhookEvent(pk=existing_id, status=existing_status, body_sha256=digest)
            stored._state.adding = False
        return FastOutcome(settled=None, stored=stored)
    event.pk, event.status = stored_id, stored_status
    event._state.adding = False
    for transition, transition_id in zip(transitions, transition_ids, strict=True):
        if transition_id is not None:
            transition.pk = transition_id
            transition._state.adding = False
            reactions.deliver_on_commit(transition)
    return FastOutcome(settled=event, stored=event)


# SQL helpers


def _q(name: str) -> str:
    return connection.ops.quote_name(name)


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
    """``stored``: the event's INSERT with its status and error decided in SQL, only
    ``when``; a rival that stored the same body first wins (ON CONFLICT)."""
    names, values = _columns(event, skip=frozenset({"status", "error"}))
    sql = (
        f"stored AS (INSERT INTO {_q(WebhookEvent._meta.db_table)} "
        f"({', '.join(names)}, {_q('status')}, {_q('error')}) "
        f"SELECT {', '.join(['%s'] * len(values))}, {status_sql}, {error_sql} "
        f"WHERE {when} ON CONFLICT ({_q('body_sha256')}) DO NOTHING "
        f"RETURNING {_q('id')}, {_q('status')})"
    )
    return sql, values


def _transition_insert(
    alias: str, transition: Transition, payment_sql: str, refund_sql: str, source: str
) -> tuple[str, list[Any]]:
    """``alias``: a transition's INSERT for each row of ``source`` (with the event stored)."""
    names, values = _columns(transition, skip=frozenset({"payment", "refund", "event"}))
    sql = (
        f"{alias} AS (INSERT INTO {_q(Transition._meta.db_table)} "
        f"({', '.join(names)}, {_q('payment_id')}, {_q('refund_id')}, {_q('event_id')}) "
        f"SELECT {', '.join(['%s'] * len(values))}, {payment_sql}, {refund_sql}, "
        f"stored.{_q('id')} FROM {source}, stored RETURNING {_q('id')})"
    )
    return sql, values


def _existing(digest: str) -> tuple[str, list[Any]]:
    return (
        f"existing AS (SELECT {_q('id')}, {_q('status')} FROM "
        f"{_q(WebhookEvent._meta.db_table)} WHERE {_q('body_sha256')} = %s)",
        [digest],
    )


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


def _payment_statement(
    data: Mapping[str, Any], announced: str, event: WebhookEvent, now: Any
) -> tuple[str, list[Any], list[Transition]]:
    table = _q(Payment._meta.db_table)
    values = {**services.payment_values(data), "status": announced}
    facts = {name: values.pop(name) for name in sorted(services.FIXED_FACTS) if name in values}
    moved_values = {**values, "updated_at": now}
    moved_values.setdefault("completed_at", now)
    transition = reactions.new_transition(
        services.PAYMENT_TRANSITIONS[announced], payment=Payment(), event=event, now=now
    )
    params: list[Any] = []

    existing, existing_params = _existing(event.body_sha256)
    params += existing_params
    current = (
        f"current AS (SELECT {_q('id')}, {_q('status')} FROM {table} "
        f"WHERE {_q('ledgepay_id')} = %s)"
    )
    params.append(data["id"])

    assignments = []
    for name, value in moved_values.items():
        assignments.append(f"{_q(_field(Payment, name).column)} = %s")
        params.append(_value(Payment, name, value))
    facts_sql, facts_params = _matches(Payment, "", facts)
    settled = (
        f"settled AS (UPDATE {table} SET {', '.join(assignments)} "
        f"WHERE {_q('ledgepay_id')} = %s AND {_q('status')} = %s{facts_sql} "
        f"AND NOT EXISTS (SELECT 1 FROM existing) RETURNING {_q('id')})"
    )
    params += [data["id"], Payment.Status.PENDING, *facts_params]

    parts = [existing, current, settled]
    changed_source = "SELECT id FROM settled"
    if len(facts) == len(services.FIXED_FACTS):
        # Enough to record a payment never seen, as the general path would.
        new = Payment(
            ledgepay_id=data["id"],
            updated_at=now,
            **services._new_payment({**values, **facts}),
        )
        names, new_values = _columns(new)
        parts.append(
            f"created AS (INSERT INTO {table} ({', '.join(names)}) "
            f"SELECT {', '.join(['%s'] * len(new_values))} "
            f"WHERE NOT EXISTS (SELECT 1 FROM existing) AND NOT EXISTS (SELECT 1 FROM current) "
            f"ON CONFLICT ({_q('ledgepay_id')}) DO NOTHING RETURNING {_q('id')})"
        )
        params += new_values
        changed_source += " UNION ALL SELECT id FROM created"
    parts.append(f"changed AS ({changed_source})")

    # A final payment: the event's outcome, as services' _outcome decides it.
    final_facts_sql, final_facts_params = _matches(Payment, "p", facts)
    parts.append(
        f"final AS (SELECT p.{_q('status')} FROM {table} p "
        f"WHERE p.{_q('ledgepay_id')} = %s AND p.{_q('status')} <> %s{final_facts_sql} "
        f"AND NOT EXISTS (SELECT 1 FROM existing))"
    )
    params += [data["id"], Payment.Status.PENDING, *final_facts_params]

    status_sql = (
        "CASE WHEN EXISTS (SELECT 1 FROM changed) OR (SELECT status FROM final) = %s "
        "THEN %s ELSE %s END"
    )
    error_sql = (
        "CASE WHEN EXISTS (SELECT 1 FROM changed) OR (SELECT status FROM final) = %s "
        "THEN '' ELSE 'The payment is already ' || (SELECT status FROM final) || '.' END"
    )
    stored, stored_params = _event_insert(
        event,
        status_sql,
        error_sql,
        "EXISTS (SELECT 1 FROM changed) OR EXISTS (SELECT 1 FROM final)",
    )
    params += stored_params
    params += [announced, WebhookEvent.Status.PROCESSED, WebhookEvent.Status.IGNORED, announced]
    parts.append(stored)
    noted, noted_params = _transition_insert("noted", transition, "changed.id", "NULL", "changed")
    parts.append(noted)
    params += noted_params
    sql = (
        "WITH "
        + ", ".join(parts)
        + " SELECT (SELECT id FROM existing), (SELECT status FROM existing), "
        "(SELECT id FROM stored), (SELECT status FROM stored), (SELECT id FROM noted)"
    )
    return sql, params, [transition]


# refund.*


def _refund_statement(
    data: Mapping[str, Any], announced: str | None, event: WebhookEvent, now: Any
) -> tuple[str, list[Any], list[Transition]]:
    refunds, payments = _q(Refund._meta.db_table), _q(Payment._meta.db_table)
    values = services.refund_values(data)
    if announced is not None:
        values["status"] = announced
    facts = {name: values.pop(name) for name in sorted(services.FIXED_FACTS) if name in values}
    status = values.pop("status", None)
    others = values  # reason, created_at: what else the general path would merge
    params: list[Any] = []
    existing, existing_params = _existing(event.body_sha256)
    params += existing_params
    parts = [existing]
    # The payment's row is locked first, as the general path and refund_payment() lock
    # it before its refunds: every statement below reads from ``pay``, so runs after it.
    parts.append(
        f"pay AS (SELECT {_q('id')}, {_q('currency')} FROM {payments} "
        f"WHERE {_q('ledgepay_id')} = %s FOR UPDATE)"
    )
    params.append(data["payment_id"])
    parts.append(
        f"current AS (SELECT r.{_q('id')}, r.{_q('status')} FROM {refunds} r "
        f"WHERE r.{_q('ledgepay_id')} = %s)"
    )
    params.append(data["id"])

    transitions: list[Transition] = []
    selects: list[str] = []
    changed = []
    # The transitions' INSERTs, which come after the event's (they name it).
    deferred: list[tuple[str, list[Any]]] = []

    # A known refund of this payment that the event says nothing new about, bar its status.
    same_facts_sql, same_facts_params = _matches(Refund, "r", facts)
    same_others_sql, same_others_params = _matches(Refund, "r", others)
    known_where = (
        f"r.{_q('ledgepay_id')} = %s "
        f"AND r.{_q('payment_id')} = (SELECT id FROM pay){same_facts_sql} "
        "AND NOT EXISTS (SELECT 1 FROM existing)"
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
            f"WHERE NOT EXISTS (SELECT 1 FROM existing) AND NOT EXISTS (SELECT 1 FROM current) "
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
    parts.append(stored)
    for sql, noted_params in deferred:
        parts.append(sql)
        params += noted_params
    sql = (
        "WITH "
        + ", ".join(parts)
        + " SELECT (SELECT id FROM existing), (SELECT status FROM existing), "
        "(SELECT id FROM stored), (SELECT status FROM stored)"
        + "".join(f", {select}" for select in selects)
    )
    return sql, params, transitions
