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

import functools
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar, cast

from django.db import connection
from django.db.models import Field, Model
from django.utils import timezone

from django_ledgepay import reactions, services
from django_ledgepay.exceptions import LedgePayError
from django_ledgepay.models import Payment, Refund, Transition, WebhookEvent

logger = logging.getLogger("django_ledgepay.webhooks")

_Built = TypeVar("_Built")


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


class KnownRefund(NamedTuple):
    """The mirror's refund, as the look-up found it."""

    id: int
    status: str
    payment_id: int
    amount: int
    currency: str
    reason: str
    created_at: Any


def apply(
    payload: Mapping[str, Any], digest: str, *, signed_at: float | None = None
) -> FastOutcome | None:
    """Apply a validated event in at most two statements; None when the event is of no
    type handled here (take the general path). PostgreSQL and SQLite only.

    ``signed_at``: the signature's timestamp. A payment event signed :data:`LATE_AFTER`
    seconds or more after its own ``timestamp`` is most likely a retry, and is looked up
    first (see :func:`signed_late`)."""
    from django_ledgepay.webhooks import PAYMENT_EVENTS, REFUND_EVENTS

    event_type = payload["event"]
    if event_type not in PAYMENT_EVENTS and event_type not in REFUND_EVENTS:
        return None
    data = payload["data"]
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
    known_refund = None
    if event_type in REFUND_EVENTS:
        stored, payment, known_refund = look_up(digest, data["payment_id"], data["id"])
    elif connection.vendor != "postgresql":
        stored, payment, _ = look_up(digest, data["id"])
    elif not signed_late(payload, signed_at):
        # The case that carries a sale, a known pending payment moved, is tried in the
        # look-up's own statement: one statement for it, as for a redelivery.
        decided, payment = _move_if_pending(data, PAYMENT_EVENTS[event_type], event, now)
        if decided is not None:
            return decided
        stored = None
    else:
        # A retry: most likely of a body applied before, which the plain look-up answers
        # alone, without PostgreSQL planning the move it would not make. A pending payment
        # found is then moved as above (the look-up repeated in the move's statement).
        stored, payment, _ = look_up(digest, data["id"])
        if stored is None and payment is not None and payment.status == Payment.Status.PENDING:
            decided, payment = _move_if_pending(data, PAYMENT_EVENTS[event_type], event, now)
            if decided is not None:
                return decided
    if stored is not None:
        return FastOutcome(settled=None, stored=stored)
    try:
        statement = _statement(data, event_type, event, now, payment, known_refund)
    except _Unreachable as unreachable:
        # A refund's payment could not be fetched: the event is kept failed, as the general
        # path keeps it, without asking LedgePay a second time.
        return _failed(event, unreachable.error)
    if statement is None:
        return FastOutcome(settled=None, stored=None)
    sql, params, transitions = statement
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        # An event's INSERT alone returns no row when a rival stored the body first.
        row = cursor.fetchone() or (None, None)
    return _settled(row, transitions, event, digest)


def _move_if_pending(
    data: Mapping[str, Any], announced: str, event: WebhookEvent, now: Any
) -> tuple[FastOutcome | None, KnownPayment | None]:
    """The look-up in the statement that moves a known pending payment
    (:func:`_pending_payment_statement`); the outcome when that decided the delivery, and
    the payment found (None when never seen)."""
    sql, params, transitions = _pending_payment_statement(data, announced, event, now)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
    stored, payment = _found(row[:6], event.body_sha256)
    if stored is not None:
        return FastOutcome(settled=None, stored=stored), payment
    if row[-1] is not None:
        return _settled(row[6:], transitions, event, event.body_sha256), payment
    if payment is not None and payment.status == Payment.Status.PENDING:
        # Not moved: its fixed facts contradict the event, or a rival moved it after the
        # look-up. The general path decides.
        return FastOutcome(settled=None, stored=None), payment
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
    happened = services._datetime(payload.get("timestamp"))
    if signed_at is None or happened is None:
        return False
    return signed_at - happened.timestamp() >= LATE_AFTER


def _settled(
    row: tuple[Any, ...], transitions: list[Transition], event: WebhookEvent, digest: str
) -> FastOutcome:
    """The outcome of a statement whose ``row`` is the stored event's id and status (None
    when a rival stored the body first), then the id of each of ``transitions`` written."""
    stored_id, stored_status, *transition_ids = row
    written = []
    for transition, transition_id in zip(transitions, transition_ids, strict=True):
        if transition_id is not None:
            transition.pk = transition_id
            transition._state.adding = False
            written.append(transition)
    of_the_event = [t for t in written if t.event is not None]  # Not a sync's: it has none.
    if stored_id is None and of_the_event:
        # The change was made, but a delivery of the same body on the general path stored
        # the event after the look-up (its INSERT is committed: ours waited for it, then
        # yielded). The transitions name that event; the general path records its outcome.
        _name_stored_event(of_the_event, digest)
    for transition in written:
        reactions.deliver_on_commit(transition)
    if stored_id is None:
        return FastOutcome(settled=None, stored=None)
    event.pk, event.status = stored_id, stored_status
    event._state.adding = False
    return FastOutcome(settled=event, stored=event)


def _name_stored_event(transitions: list[Transition], digest: str) -> None:
    stored = WebhookEvent.objects.filter(body_sha256=digest).values("pk")[:1]
    Transition.objects.filter(pk__in=[t.pk for t in transitions]).update(event=stored)


def _statement(
    data: Mapping[str, Any],
    event_type: str,
    event: WebhookEvent,
    now: Any,
    payment: KnownPayment | None,
    refund: KnownRefund | None,
) -> tuple[str, list[Any], list[Transition]] | None:
    """The statement for the case the look-up found, or None (take the general path)."""
    from django_ledgepay.webhooks import PAYMENT_EVENTS, REFUND_EVENTS

    known_final = (
        payment if payment is not None and payment.status != Payment.Status.PENDING else None
    )
    if event_type in PAYMENT_EVENTS and known_final is not None:
        return _final_payment_statement(data, PAYMENT_EVENTS[event_type], event, known_final)
    if connection.vendor != "postgresql":
        return None  # A change with its transition: a data-modifying CTE, PostgreSQL's.
    if event_type in REFUND_EVENTS:
        return _refund_statement(data, REFUND_EVENTS[event_type], event, now, payment, refund)
    if payment is not None:
        return None  # Pending: the look-up's own statement tried it (see apply()).
    return _unseen_payment_statement(data, PAYMENT_EVENTS[event_type], event, now)


class _Unreachable(Exception):
    """LedgePay could not give a refund's payment (``error`` says why)."""

    def __init__(self, error: LedgePayError) -> None:
        super().__init__(str(error))
        self.error = error


def _failed(event: WebhookEvent, error: LedgePayError) -> FastOutcome:
    """Store the event failed with the error, as ``webhooks.process_event`` does; leave it
    to the general path when a rival stored the body first."""
    event.status, event.error, event.processed_at = WebhookEvent.Status.FAILED, str(error), None
    sql, params = _event_insert(event, "%s", "%s", "TRUE")
    with connection.cursor() as cursor:
        cursor.execute(sql, [*params, event.status, event.error])
        row = cursor.fetchone()
    if row is None:
        return FastOutcome(settled=None, stored=None)
    event.pk = row[0]
    event._state.adding = False
    logger.warning("Webhook event %s (%s) failed: %s", event.pk, event.event_type, event.error)
    return FastOutcome(settled=event, stored=event)


def look_up(
    digest: str, payment_id: str, refund_id: str | None = None
) -> tuple[WebhookEvent | None, KnownPayment | None, KnownRefund | None]:
    """The event stored for this body, if any, the payment ``payment_id`` and the refund
    ``refund_id``, if known: one statement, an index look-up each."""
    params = [digest, payment_id] if refund_id is None else [digest, payment_id, refund_id]
    with connection.cursor() as cursor:
        cursor.execute(_look_up_sql(refund=refund_id is not None), params)
        row = cursor.fetchone()
    stored, payment = _found(row[:6], digest)
    refund = KnownRefund(*row[6:]) if refund_id is not None and row[6] is not None else None
    return stored, payment, refund


def _found(row: tuple[Any, ...], digest: str) -> tuple[WebhookEvent | None, KnownPayment | None]:
    """The stored event and the payment of a look-up's first six columns."""
    event_id, event_status = row[:2]
    stored = None
    if event_id is not None:
        stored = WebhookEvent(pk=event_id, status=event_status, body_sha256=digest)
        stored._state.adding = False
    payment = KnownPayment(*row[2:6]) if row[2] is not None else None
    return stored, payment


@functools.cache
def _look_up_sql(*, refund: bool, also: str = "") -> str:
    """The look-up's SELECT; ``also``: more columns after the refund's (or the payment's)."""
    events, payments = _q(WebhookEvent._meta.db_table), _q(Payment._meta.db_table)
    columns = [f"e.{_q('id')}", f"e.{_q('status')}"]
    columns += [f"p.{_q(name)}" for name in KnownPayment._fields]
    joins = (
        f"LEFT JOIN {events} e ON e.{_q('body_sha256')} = %s "
        f"LEFT JOIN {payments} p ON p.{_q('ledgepay_id')} = %s"
    )
    if refund:
        columns += [f"r.{_q(_field(Refund, name).column)}" for name in KnownRefund._fields]
        joins += f" LEFT JOIN {_q(Refund._meta.db_table)} r ON r.{_q('ledgepay_id')} = %s"
    if also:
        columns.append(also)
    return f"SELECT {', '.join(columns)} FROM (SELECT 1) AS one {joins}"


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


def _once(event: WebhookEvent, key: str, build: Callable[[], _Built]) -> _Built:
    """``build()``, made once per delivery and kept on its ``event`` under ``key``: a
    delivery's second statement (a payment never seen or final, looked up in the move's
    statement) stores the same event, with the same transition, as its first would have."""
    kept: _Built | None = event.__dict__.get(key)
    if kept is None:
        kept = event.__dict__[key] = build()
    return kept


def _event_insert(
    event: WebhookEvent, status_sql: str, error_sql: str, when: str
) -> tuple[str, list[Any]]:
    """The event's INSERT with its status and error decided in SQL, only ``when``; a rival
    that stored the same body first wins (ON CONFLICT), and then nothing is returned."""
    names, values = _once(
        event, "_ledgepay_columns", lambda: _columns(event, skip=frozenset({"status", "error"}))
    )
    values = list(values)
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
    event_sql: str = "(SELECT id FROM stored)",
) -> tuple[str, list[Any]]:
    """``alias``: a transition's INSERT for each row of ``source``, the change it records.

    It follows the change, not the event's INSERT: when a delivery of the same body on the
    general path stored the event after the look-up, the event's INSERT yields to it, but
    the change is made here and must not go without its transition (see :func:`apply`)."""
    names, values = _columns(transition, skip=frozenset({"payment", "refund", "event"}))
    sql = (
        f"{alias} AS (INSERT INTO {_q(Transition._meta.db_table)} "
        f"({', '.join(names)}, {_q('payment_id')}, {_q('refund_id')}, {_q('event_id')}) "
        f"SELECT {', '.join(['%s'] * len(values))}, {payment_sql}, {refund_sql}, "
        f"{event_sql} FROM {source} RETURNING {_q('id')})"
    )
    return sql, values


def _contradicts(said: Mapping[str, Any], known: KnownPayment | KnownRefund) -> bool:
    """Whether the event's values ``said`` hold a fixed fact other than the mirror's."""
    return any(
        name in said and said[name] != getattr(known, name) for name in services.FIXED_FACTS
    )


# payment.*


def _final_payment_statement(
    data: Mapping[str, Any], announced: str, event: WebhookEvent, known: KnownPayment
) -> tuple[str, list[Any], list[Transition]] | None:
    """A final payment never changes: the event's outcome alone, as services' _outcome
    decides it, in one INSERT. None when the event contradicts its fixed facts."""
    if _contradicts(services.payment_values(data), known):
        return None
    status, error = WebhookEvent.Status.PROCESSED, ""
    if known.status != announced:
        status = WebhookEvent.Status.IGNORED
        error = f"The payment is already {known.status}."
    sql, params = _event_insert(event, "%s", "%s", "TRUE")
    return sql, [*params, status, error], []


def _pending_payment_statement(
    data: Mapping[str, Any], announced: str, event: WebhookEvent, now: Any
) -> tuple[str, list[Any], list[Transition]]:
    """The look-up, in the statement that moves a known pending payment to the announced
    status when the body is new and the event's fixed facts are the payment's.

    Its row: the look-up's columns, then the stored event's id and status and the
    transition's id (None when nothing moved: a redelivery, a payment never seen or final,
    facts that contradict the mirror's, or a rival that moved it first). The look-up reads
    the rows as they were before the statement, as PostgreSQL's data-modifying ``WITH``
    does."""
    values = {**services.payment_values(data), "status": announced}
    facts = {name: values.pop(name) for name in sorted(services.FIXED_FACTS) if name in values}
    moved_values = {**values, "updated_at": now}
    moved_values.setdefault("completed_at", now)
    assignments, params = [], []
    for name, value in moved_values.items():
        assignments.append(f"{_q(_field(Payment, name).column)} = %s")
        params.append(_value(Payment, name, value))
    conditions = [f"{_q('ledgepay_id')} = %s", f"{_q('status')} = %s"]
    params += [data["id"], Payment.Status.PENDING]
    for name, value in facts.items():
        conditions.append(f"{_q(_field(Payment, name).column)} = %s")
        params.append(_value(Payment, name, value))
    events = _q(WebhookEvent._meta.db_table)
    conditions.append(f"NOT EXISTS (SELECT 1 FROM {events} WHERE {_q('body_sha256')} = %s)")
    params.append(event.body_sha256)
    changed = (
        f"changed AS (UPDATE {_q(Payment._meta.db_table)} SET {', '.join(assignments)} "
        f"WHERE {' AND '.join(conditions)} RETURNING {_q('id')})"
    )
    recorded, recorded_params, transition = _stored_and_noted(event, announced, now)
    params += [*recorded_params, event.body_sha256, data["id"]]
    look_up_sql = _look_up_sql(
        refund=False,
        also="(SELECT id FROM stored), (SELECT status FROM stored), (SELECT id FROM noted)",
    )
    return f"WITH {changed}, {recorded} {look_up_sql}", params, [transition]


def _stored_and_noted(
    event: WebhookEvent, announced: str, now: Any
) -> tuple[str, list[Any], Transition]:
    """``stored`` and ``noted``, after a ``changed`` that returns the payment it moved or
    recorded: the event's INSERT and its transition's, made only when there is one."""

    def build() -> tuple[str, list[Any], Transition]:
        stored, params = _event_insert(event, "%s", "''", "EXISTS (SELECT 1 FROM changed)")
        transition = reactions.new_transition(
            services.PAYMENT_TRANSITIONS[announced], payment=Payment(), event=event, now=now
        )
        noted, noted_params = _transition_insert(
            "noted", transition, "changed.id", "NULL", "changed"
        )
        sql = f"stored AS ({stored}), {noted}"
        return sql, [*params, WebhookEvent.Status.PROCESSED, *noted_params], transition

    sql, params, transition = _once(event, f"_ledgepay_noted_{announced}", build)
    return sql, list(params), transition


def _unseen_payment_statement(
    data: Mapping[str, Any], announced: str, event: WebhookEvent, now: Any
) -> tuple[str, list[Any], list[Transition]] | None:
    """A payment never seen recorded; None when its event lacks its amount or currency
    (the general path fetches it)."""
    values = {**services.payment_values(data), "status": announced}
    facts = {name: values.pop(name) for name in sorted(services.FIXED_FACTS) if name in values}
    if len(facts) < len(services.FIXED_FACTS):
        return None
    # Recorded as the general path would, unless a rival recorded it first.
    table = _q(Payment._meta.db_table)
    new = Payment(
        ledgepay_id=data["id"], updated_at=now, **services._new_payment({**values, **facts})
    )
    names, params = _columns(new)
    changed = (
        f"changed AS (INSERT INTO {table} ({', '.join(names)}) "
        f"VALUES ({', '.join(['%s'] * len(params))}) "
        f"ON CONFLICT ({_q('ledgepay_id')}) DO NOTHING RETURNING {_q('id')})"
    )
    recorded, recorded_params, transition = _stored_and_noted(event, announced, now)
    params += recorded_params
    sql = (
        f"WITH {changed}, {recorded} "
        "SELECT (SELECT id FROM stored), (SELECT status FROM stored), (SELECT id FROM noted)"
    )
    return sql, params, [transition]


# refund.*


def _refund_statement(
    data: Mapping[str, Any],
    announced: str | None,
    event: WebhookEvent,
    now: Any,
    payment: KnownPayment | None,
    refund: KnownRefund | None,
) -> tuple[str, list[Any], list[Transition]] | None:
    """The statement for a refund event; None for a case left to the general path."""
    values = services.refund_values(data)
    if announced is not None:
        values["status"] = announced
    facts = {name: values.pop(name) for name in sorted(services.FIXED_FACTS) if name in values}
    status = values.pop("status", None)
    others = values  # reason, created_at: what else the general path would merge
    if refund is not None:
        return _known_refund_statement(event, now, payment, refund, facts, status, others)
    if "amount" not in facts:
        return None  # Not enough to record it: the general path says why.

    refunds, payments = _q(Refund._meta.db_table), _q(Payment._meta.db_table)
    params: list[Any] = []
    parts = []
    deferred: list[tuple[str, list[Any]]] = []  # After the event's INSERT: they name it.
    transitions: list[Transition] = []
    selects: list[str] = []
    if payment is not None:
        # The payment's row is locked first, as the general path and refund_payment() lock
        # it before its refunds: the statements below read from ``pay``, so run after it.
        parts.append(
            f"pay AS (SELECT {_q('id')}, {_q('currency')} FROM {payments} "
            f"WHERE {_q('id')} = %s FOR UPDATE)"
        )
        params.append(payment.id)
    else:
        unseen = _unseen_payment(data, now)
        if unseen is None:
            return None
        pay_sql, pay_params, synced = unseen
        parts.append(pay_sql)
        params += pay_params
        if synced is not None:
            deferred.append(_transition_insert("synced", synced, "pay.id", "NULL", "pay", "NULL"))
            transitions.append(synced)
            selects.append("(SELECT id FROM synced)")

    # A refund never seen: created under its payment, whose row is written with it.
    new = Refund(
        ledgepay_id=data["id"],
        payment_id=0,
        updated_at=now,
        status=status or Refund.Status.PENDING,
        **facts,
        **others,
    )
    names, new_values = _columns(new, skip=frozenset({"payment", "currency"}))
    parts.append(
        f"created AS (INSERT INTO {refunds} ({', '.join(names)}, {_q('payment_id')}, "
        f"{_q('currency')}) SELECT {', '.join(['%s'] * len(new_values))}, pay.id, "
        f"COALESCE(%s, pay.currency) FROM pay ON CONFLICT ({_q('ledgepay_id')}) DO NOTHING "
        f"RETURNING {_q('id')}, {_q('payment_id')}, {_q('status')})"
    )
    params += [*new_values, facts.get("currency")]
    if payment is not None:
        parts.append(
            f"touched AS (UPDATE {payments} SET {_q('updated_at')} = %s "
            f"WHERE {_q('id')} = (SELECT payment_id FROM created) RETURNING {_q('id')})"
        )
        params.append(_value(Payment, "updated_at", now))
    signals: list[str] = [Transition.Signal.REFUND_CREATED]
    if status in services.REFUND_TRANSITIONS:
        signals.append(services.REFUND_TRANSITIONS[status])
    for number, signal in enumerate(signals):
        transition = reactions.new_transition(signal, payment=Payment(), event=event, now=now)
        alias = f"created_noted_{number}"
        deferred.append(
            _transition_insert(alias, transition, "created.payment_id", "created.id", "created")
        )
        transitions.append(transition)
        selects.append(f"(SELECT id FROM {alias})")

    stored, stored_params = _event_insert(event, "%s", "''", "EXISTS (SELECT 1 FROM created)")
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
    return sql, params, transitions


def _known_refund_statement(
    event: WebhookEvent,
    now: Any,
    payment: KnownPayment | None,
    refund: KnownRefund,
    facts: Mapping[str, Any],
    status: str | None,
    others: Mapping[str, Any],
) -> tuple[str, list[Any], list[Transition]] | None:
    """A known pending refund moved to a final status, under its payment's lock; or, when
    the event says nothing new, the event alone. None for what the general path decides:
    a fixed fact or the payment contradicted, or news the status rules weigh."""
    if payment is None or refund.payment_id != payment.id:
        return None
    if _contradicts(facts, refund):
        return None
    if status in (Refund.Status.SUCCEEDED, Refund.Status.FAILED) and (
        refund.status == Refund.Status.PENDING
    ):
        refunds, payments = _q(Refund._meta.db_table), _q(Payment._meta.db_table)
        assignments = [f"{_q('status')} = %s", f"{_q('updated_at')} = %s"]
        params: list[Any] = [payment.id, status, _value(Refund, "updated_at", now)]
        for name, value in others.items():
            assignments.append(f"{_q(_field(Refund, name).column)} = %s")
            params.append(_value(Refund, name, value))
        params += [refund.id, Refund.Status.PENDING]
        moved = reactions.new_transition(
            services.REFUND_TRANSITIONS[status], payment=Payment(), event=event, now=now
        )
        stored, stored_params = _event_insert(event, "%s", "''", "EXISTS (SELECT 1 FROM moved)")
        noted, noted_params = _transition_insert(
            "noted", moved, "moved.payment_id", "moved.id", "moved"
        )
        params += [*stored_params, WebhookEvent.Status.PROCESSED, *noted_params]
        sql = (
            # The payment's row first, as everywhere its refunds change.
            f"WITH pay AS (SELECT {_q('id')} FROM {payments} WHERE {_q('id')} = %s "
            f"FOR UPDATE), moved AS (UPDATE {refunds} SET {', '.join(assignments)} "
            f"WHERE {_q('id')} = %s AND {_q('status')} = %s "
            f"AND EXISTS (SELECT 1 FROM pay) RETURNING {_q('id')}, {_q('payment_id')}), "
            f"stored AS ({stored}), {noted} "
            "SELECT (SELECT id FROM stored), (SELECT status FROM stored), "
            "(SELECT id FROM noted)"
        )
        return sql, params, [moved]
    if status in (None, refund.status) and all(
        value == getattr(refund, name) for name, value in others.items()
    ):
        # Nothing new: the event's outcome alone.
        sql, params = _event_insert(event, "%s", "%s", "TRUE")
        return sql, [*params, WebhookEvent.Status.PROCESSED, ""], []
    return None


def _unseen_payment(
    data: Mapping[str, Any], now: Any
) -> tuple[str, list[Any], Transition | None] | None:
    """``pay`` for a refund whose payment the mirror lacks: the payment fetched from
    LedgePay (outside any transaction: no lock is held over HTTP) and recorded as
    ``sync_payment`` records it, with its transition, unless a rival recorded it first or
    the mirror knows the refund (under another payment: the general path notes that).
    None when the payment cannot be recorded (the general path then does what it does);
    _Unreachable when LedgePay cannot give it."""
    ledgepay_id = data["payment_id"]
    try:
        remote = services.get_client().retrieve_payment(ledgepay_id)
    except LedgePayError as err:
        raise _Unreachable(err) from err
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
