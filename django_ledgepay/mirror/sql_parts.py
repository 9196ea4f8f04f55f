"""The parts the SQL statements of :mod:`django_ledgepay.mirror.sql` are built from: one
delivery's draft, what the look-up found, quoting, the event's and a transition's INSERT,
and the rulebook's guards compiled to SQL."""

from __future__ import annotations

import datetime
import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeVar, cast

from django.db import connection
from django.db.models import Field, Model

from django_ledgepay.exceptions import LedgePayError
from django_ledgepay.models import Payment, Refund, Transition, WebhookEvent

Built = TypeVar("Built")
_M = TypeVar("_M", bound=Model)


@dataclass
class Draft:
    """One delivery on its way into the database: the event to store, the moment, and the
    parts built for it, kept so that a delivery's second statement (a payment never seen or
    final, looked up in the move's statement) stores the same event, with the same
    transition, as its first would have."""

    event: WebhookEvent
    now: datetime.datetime
    built: dict[str, Any] = field(default_factory=dict)

    def part(self, key: str, build: Callable[[], Built]) -> Built:
        """``build()``, made once per delivery under ``key``."""
        if key not in self.built:
            self.built[key] = build()
        return cast(Built, self.built[key])


@dataclass(frozen=True)
class Settlement:
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


class KnownRefund(NamedTuple):
    """The mirror's refund, as the look-up found it."""

    id: int
    status: str
    payment_id: int
    amount: int
    currency: str
    reason: str
    created_at: Any


class Unreachable(Exception):
    """LedgePay could not give a refund's payment (``error`` says why)."""

    def __init__(self, error: LedgePayError) -> None:
        super().__init__(str(error))
        self.error = error


def loaded(model: type[_M], **values: Any) -> _M:
    """An instance of a row the statements wrote or found, as the ORM loads one (its
    unnamed fields deferred)."""
    names = [f.attname for f in model._meta.concrete_fields if f.attname in values]
    return model.from_db(connection.alias, names, [values[name] for name in names])


def saved(instance: _M, pk: int, **values: Any) -> _M:
    """``instance``, unsaved, as the row the statements inserted for it with ``pk``."""
    fields = instance._meta.concrete_fields
    row = {f.attname: getattr(instance, f.attname) for f in fields if not f.primary_key}
    return loaded(type(instance), **{instance._meta.pk.attname: pk, **row, **values})


_QUOTED: dict[str, str] = {}


def q(name: str) -> str:
    """``name`` quoted for the database (remembered: the statements are built per delivery)."""
    quoted = _QUOTED.get(name)
    if quoted is None:
        quoted = _QUOTED[name] = connection.ops.quote_name(name)
    return quoted


def model_field(model: type[Model], name: str) -> Field[Any, Any]:
    return cast("Field[Any, Any]", model._meta.get_field(name))


def column(model: type[Model], name: str) -> str:
    return q(model_field(model, name).column)


def db_value(model: type[Model], name: str, value: Any) -> Any:
    return model_field(model, name).get_db_prep_save(value, connection)


def columns(instance: Model, skip: frozenset[str] = frozenset()) -> tuple[list[str], list[Any]]:
    """The columns of ``instance`` but its id and ``skip``, and their values for the
    database: every column, so none is left to a default the schema does not know."""
    names, values = [], []
    for each in type(instance)._meta.concrete_fields:
        if each.primary_key or each.name in skip:
            continue
        names.append(q(each.column))
        values.append(each.get_db_prep_save(getattr(instance, each.attname), connection))
    return names, values


def assignments(
    model: type[Model], writes: Mapping[str, Any], defaults: Mapping[str, Any]
) -> tuple[list[str], list[Any]]:
    """A decision's SET list: each write, and each default only where the row holds none."""
    sql, params = [], []
    for name, value in writes.items():
        sql.append(f"{column(model, name)} = %s")
        params.append(db_value(model, name, value))
    for name, value in defaults.items():
        sql.append(f"{column(model, name)} = COALESCE({column(model, name)}, %s)")
        params.append(db_value(model, name, value))
    return sql, params


def facts_guard(facts: Mapping[str, Any], prefix: str = "") -> tuple[list[str], list[Any]]:
    """The rulebook's guard on a payment's fixed facts, in SQL: each recorded as said."""
    sql, params = [], []
    for name, value in facts.items():
        sql.append(f"{prefix}{column(Payment, name)} = %s")
        params.append(db_value(Payment, name, value))
    return sql, params


def event_insert(
    draft: Draft, status_sql: str, error_sql: str, when: str
) -> tuple[str, list[Any]]:
    """The event's INSERT with its status and error decided in SQL, only ``when``; a rival
    that stored the same body first wins (ON CONFLICT), and then nothing is returned."""
    event = draft.event
    names, values = draft.part(
        "event columns", lambda: columns(event, skip=frozenset({"status", "error"}))
    )
    sql = (
        f"INSERT INTO {q(WebhookEvent._meta.db_table)} "
        f"({', '.join(names)}, {q('status')}, {q('error')}) "
        f"SELECT {', '.join(['%s'] * len(values))}, {status_sql}, {error_sql} "
        f"WHERE {when} ON CONFLICT ({q('body_sha256')}) DO NOTHING "
        f"RETURNING {q('id')}, {q('status')}"
    )
    return sql, list(values)


def transition_insert(
    alias: str,
    transition: Transition,
    payment_sql: str,
    refund_sql: str,
    source: str,
    event_sql: str = "(SELECT id FROM stored)",
) -> tuple[str, list[Any]]:
    """``alias``: a transition's INSERT for each row of ``source``, the change it records.

    It follows the change, not the event's INSERT: when a delivery of the same body on the
    general path stored the event after the look-up, the event's INSERT yields to it, but
    the change is made here and must not go without its transition."""
    names, values = columns(transition, skip=frozenset({"payment", "refund", "event"}))
    sql = (
        f"{alias} AS (INSERT INTO {q(Transition._meta.db_table)} "
        f"({', '.join(names)}, {q('payment_id')}, {q('refund_id')}, {q('event_id')}) "
        f"SELECT {', '.join(['%s'] * len(values))}, {payment_sql}, {refund_sql}, "
        f"{event_sql} FROM {source} RETURNING {q('id')})"
    )
    return sql, values


@functools.cache
def look_up_sql(*, refund: bool, also: str = "") -> str:
    """The look-up's SELECT: the event stored for the body, the payment and (``refund``) the
    refund; ``also``: more columns after them."""
    events, payments = q(WebhookEvent._meta.db_table), q(Payment._meta.db_table)
    selected = [f"e.{q('id')}", f"e.{q('status')}"]
    selected += [f"p.{q(name)}" for name in KnownPayment._fields]
    joins = (
        f"LEFT JOIN {events} e ON e.{q('body_sha256')} = %s "
        f"LEFT JOIN {payments} p ON p.{q('ledgepay_id')} = %s"
    )
    if refund:
        selected += [f"r.{column(Refund, name)}" for name in KnownRefund._fields]
        joins += f" LEFT JOIN {q(Refund._meta.db_table)} r ON r.{q('ledgepay_id')} = %s"
    if also:
        selected.append(also)
    return f"SELECT {', '.join(selected)} FROM (SELECT 1) AS one {joins}"


def found(row: tuple[Any, ...], digest: str) -> tuple[WebhookEvent | None, KnownPayment | None]:
    """The stored event and the payment of a look-up's first six columns."""
    event_id, event_status = row[:2]
    stored = None
    if event_id is not None:
        stored = loaded(WebhookEvent, id=event_id, status=event_status, body_sha256=digest)
    payment = KnownPayment(*row[2:6]) if row[2] is not None else None
    return stored, payment
