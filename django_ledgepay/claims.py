"""Claims: which deliverer runs a receiver of a transition now.

Before it runs them, a deliverer (:func:`django_ledgepay.delivery.deliver`, in a task worker,
in ``ledgepay_deliver`` or in the admin) claims the receivers it is to run, each on its
:class:`~django_ledgepay.models.Reaction` row: ``claimed_until`` set to the end of a lease
(``LEDGEPAY_DELIVERY_LEASE`` seconds) where the receiver has not succeeded and no lease
holds, committed before any receiver runs. Another deliverer skips a receiver while its
claim holds. A claim ends with the receiver's success (recorded in the receiver's own
transaction) or its failure, and the claim of a deliverer that crashed with its lease.

On PostgreSQL, the statement that reads the transition for its delivery claims its
receivers too (:func:`read`); elsewhere :func:`claim` is one more statement.
"""

from __future__ import annotations

import datetime
import functools
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from django.db import IntegrityError, connection, connections, transaction
from django.db.models import Model, Q

from django_ledgepay.models import Payment, Reaction, Refund, Transition, WebhookEvent


@dataclass(frozen=True)
class Found:
    """What :func:`read` found: the transition, with what it tells of its receivers."""

    transition: Transition
    #: Whether any receiver had succeeded for it (what ``done`` holds, when not None).
    succeeded_before: bool
    #: The receivers that had succeeded, where the read names them (PostgreSQL).
    done: frozenset[str] | None = None
    #: The receivers the read claimed, where it claims them (PostgreSQL).
    claimed: frozenset[str] | None = None


def read(
    transition_id: int,
    *,
    until: datetime.datetime,
    now: datetime.datetime,
    receivers: Sequence[tuple[str, str]] = (),
) -> Found | None:
    """The transition with its payment, refund and event, in one query, with whether any
    receiver succeeded for it before.

    On PostgreSQL the same statement claims, until ``until``, the transition's receivers
    among ``receivers`` (pairs of a signal's name and a receiver's) that have not succeeded
    and that no claim holds at ``now``, and names them and those that had succeeded. Its
    SQL is composed once per database: the ORM would compose the three joins and the
    subqueries again on every delivery, at several times the cost of running them.
    """
    claiming = connection.vendor == "postgresql"
    sql, parts = _read_plan(connection.alias, claiming)
    params: list[Any] = [transition_id]
    if claiming:
        signal_names = [signal_name for signal_name, _ in receivers]
        receiver_names = [name for _, name in receivers]
        params = [db_time(until), signal_names, receiver_names, transition_id, db_time(now)]
        params.append(transition_id)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
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
    if claiming:
        done, claimed = frozenset(row[start]), frozenset(row[start + 1])
        return Found(transition, bool(done), done, claimed)
    return Found(transition, bool(row[start]))


@dataclass(frozen=True)
class _ReadPart:
    """One object :func:`read` builds from a slice of its row."""

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
def _read_plan(db: str, claiming: bool) -> tuple[str, list[_ReadPart]]:
    """:func:`read`'s SQL on the database ``db``, and its parts, the transition first;
    with ``claiming``, PostgreSQL's, which claims the receivers too."""
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
    transitions = quote(Transition._meta.db_table)
    reactions = quote(Reaction._meta.db_table)
    succeeded = (
        f"FROM {reactions} x WHERE x.{quote('transition_id')} = t.{quote('id')} "
        f"AND x.{quote('succeeded_at')} IS NOT NULL"
    )
    read = f"FROM {transitions} t {joins} WHERE t.{quote('id')} = %s"
    if not claiming:
        flag = f"CASE WHEN EXISTS (SELECT 1 {succeeded}) THEN 1 ELSE 0 END"
        return f"SELECT {', '.join(selected)}, {flag} {read}", parts
    # The pairs (signal, receiver) of every signal, those of the transition's signal
    # claimed where none succeeded and no claim holds. The SELECT reads the rows as they
    # were before the claim (one snapshot); the claims are in its last column.
    claim = (
        f"INSERT INTO {reactions} AS r (transition_id, receiver, attempts, error, "
        "claimed_until) SELECT t.id, x.receiver, 0, '', %s "
        f"FROM {transitions} t CROSS JOIN unnest(%s::varchar[], %s::varchar[]) "
        "AS x(signal, receiver) "
        "WHERE t.id = %s AND t.delivered_at IS NULL AND x.signal = t.signal "
        "ON CONFLICT (transition_id, receiver) DO UPDATE "
        "SET claimed_until = EXCLUDED.claimed_until "
        "WHERE r.succeeded_at IS NULL AND (r.claimed_until IS NULL OR r.claimed_until <= %s) "
        "RETURNING r.receiver"
    )
    sql = (
        f"WITH claimed AS ({claim}) SELECT {', '.join(selected)}, "
        f"ARRAY(SELECT x.{quote('receiver')} {succeeded}), "
        f"ARRAY(SELECT receiver FROM claimed) {read}"
    )
    return sql, parts


def claim(
    transition: Transition,
    names: Collection[str],
    *,
    until: datetime.datetime,
    now: datetime.datetime,
) -> frozenset[str]:
    """Claim until ``until`` the receivers ``names`` of ``transition`` that have not
    succeeded and that no claim holds at ``now``; the names of those claimed. One
    statement (one per receiver on databases without upserts), to commit before any of
    them runs, so that every other deliverer sees the claims."""
    if not names:
        return frozenset()
    if connection.vendor not in {"postgresql", "sqlite"}:
        won = set()
        for name in names:
            free = Reaction.objects.filter(
                Q(claimed_until__isnull=True) | Q(claimed_until__lte=now),
                transition=transition,
                receiver=name,
                succeeded_at=None,
            )
            if free.update(claimed_until=until):
                won.add(name)
                continue
            try:
                with transaction.atomic():
                    Reaction.objects.create(
                        transition=transition, receiver=name, claimed_until=until
                    )
            except IntegrityError:
                continue  # A success, or another deliverer's claim.
            won.add(name)
        return frozenset(won)
    table = connection.ops.quote_name(Reaction._meta.db_table)
    rows = ", ".join(["(%s, %s, 0, '', %s)"] * len(names))
    sql = (
        f"INSERT INTO {table} (transition_id, receiver, attempts, error, claimed_until) "
        f"VALUES {rows} ON CONFLICT (transition_id, receiver) DO UPDATE "
        "SET claimed_until = EXCLUDED.claimed_until "
        f"WHERE {table}.succeeded_at IS NULL "
        f"AND ({table}.claimed_until IS NULL OR {table}.claimed_until <= %s) "
        "RETURNING receiver"
    )
    moment = db_time(until)
    params: list[Any] = []
    for name in names:
        params += [transition.pk, name, moment]
    with connection.cursor() as cursor:
        cursor.execute(sql, [*params, db_time(now)])
        return frozenset(row[0] for row in cursor.fetchall())


def renew(
    transition: Transition, name: str, until: datetime.datetime, new: datetime.datetime
) -> bool:
    """Move the end of the claim on ``name`` that ends at ``until`` to ``new``; False when
    that claim no longer holds (the receiver succeeded, or another deliverer claimed it
    once the lease had passed)."""
    rows = Reaction.objects.filter(
        transition=transition, receiver=name, succeeded_at=None, claimed_until=until
    )
    return bool(rows.update(claimed_until=new))


def release(transition: Transition, leases: Mapping[str, datetime.datetime]) -> None:
    """End the claims in ``leases`` (a receiver's name: its claim's end) that still hold."""
    for name, until in leases.items():
        Reaction.objects.filter(
            transition=transition, receiver=name, succeeded_at=None, claimed_until=until
        ).update(claimed_until=None)


def succeeded(transition: Transition) -> frozenset[str]:
    """The names of the receivers that have succeeded for ``transition``."""
    return frozenset(
        Reaction.objects.filter(transition=transition, succeeded_at__isnull=False).values_list(
            "receiver", flat=True
        )
    )


def db_time(moment: datetime.datetime) -> Any:
    """``moment`` as the database takes it in a raw statement's parameters."""
    return Reaction._meta.get_field("claimed_until").get_db_prep_save(moment, connection)
