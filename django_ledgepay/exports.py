"""The mirror's payments and refunds as rows for the accountant: CSV or JSON Lines, streamed.

Read from the mirror only: an export never calls LedgePay. Rows are read with
``QuerySet.iterator(chunk_size=...)`` and encoded one at a time, so memory stays flat
however many rows there are (on PostgreSQL through a server-side cursor, Django's default;
with ``DISABLE_SERVER_SIDE_CURSORS`` the driver fetches the whole result at once).

The columns, in order, are :data:`PAYMENT_COLUMNS` and :data:`REFUND_COLUMNS`. Amounts are
exact: ``amount`` in minor units (an integer), ``amount_major`` the same amount in major
units as a decimal string from the currency's exponent (``"12.50"`` EUR, ``"500"`` JPY,
``"1.250"`` KWD), never a float. Times are ISO 8601 in UTC (``2024-01-15T10:30:00Z``), empty
(CSV) or null (JSON Lines) when the mirror has none.
"""

from __future__ import annotations

import csv
import datetime
import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Final

from django.db.models import F, OuterRef, QuerySet, Subquery, Sum
from django.db.models.functions import Coalesce
from django.http import StreamingHttpResponse
from django.utils import timezone

from django_ledgepay.currencies import to_major
from django_ledgepay.mirror.values import iso_z
from django_ledgepay.models import Payment, Refund

PAYMENTS: Final = "payments"
REFUNDS: Final = "refunds"
KINDS: Final = (PAYMENTS, REFUNDS)
CSV: Final = "csv"
JSONL: Final = "jsonl"
FORMATS: Final = (CSV, JSONL)

PAYMENT_COLUMNS: Final = (
    "ledgepay_id",
    "account",
    "status",
    "amount",
    "currency",
    "amount_major",
    "amount_refunded",
    "description",
    "customer_email",
    "created_at",
    "completed_at",
)
REFUND_COLUMNS: Final = (
    "ledgepay_id",
    "payment",
    "account",
    "status",
    "amount",
    "currency",
    "amount_major",
    "reason",
    "created_at",
)
COLUMNS: Final[Mapping[str, tuple[str, ...]]] = {
    PAYMENTS: PAYMENT_COLUMNS,
    REFUNDS: REFUND_COLUMNS,
}

#: The one LedgePay account this version knows: the ``account`` column of every row. (Several
#: accounts in one project are not built yet; ``--account`` takes only this name.)
DEFAULT_ACCOUNT: Final = "default"
ACCOUNTS: Final = (DEFAULT_ACCOUNT,)
#: Rows read per round trip to the database.
CHUNK_SIZE: Final = 2000
#: The name of the refunded total each exported payment is read with; the one
#: :attr:`Payment.amount_refunded` reads, so that a list annotated with it already (the
#: admin's) is not annotated twice.
REFUNDED: Final = "annotated_amount_refunded"
#: What a spreadsheet takes for the start of a formula, in a text cell's first character.
FORMULA_STARTS: Final = ("=", "+", "-", "@", "\t", "\r")
#: The CSV columns holding text from outside (the shop's description, the customer's
#: address): a cell starting like a formula is written with a leading ``'`` (see
#: :func:`spreadsheet_safe`).
FREE_TEXT: Final = frozenset({"description", "customer_email"})


class UnknownAccountError(ValueError):
    """An account this version does not know (only ``"default"``)."""


def check_account(name: str | None) -> str | None:
    """``name`` when it is an account this version knows, or None (every account)."""
    if name is None or name in ACCOUNTS:
        return name
    raise UnknownAccountError(
        f"Unknown account {name!r}: this version has one LedgePay account, "
        f"{DEFAULT_ACCOUNT!r} (several accounts are not supported yet)."
    )


# What is read


def refunded_total() -> Coalesce:
    """The outer payment's refunded total (its refunds that have not failed), as a
    correlated subquery: computed row by row as the rows stream, with no grouping of the
    whole window first."""
    refunds = (
        Refund.objects.filter(payment=OuterRef("pk"))
        .exclude(status=Refund.Status.FAILED)
        .order_by()
        .values("payment")
        .annotate(total=Sum("amount"))
        .values("total")
    )
    return Coalesce(Subquery(refunds), 0)


def in_window(
    queryset: QuerySet[Any],
    since: datetime.datetime | None = None,
    until: datetime.datetime | None = None,
) -> QuerySet[Any]:
    """The rows created from ``since`` (included) to ``until`` (excluded); either may be
    open. Without either, rows without a creation time are exported too, last."""
    if since is not None:
        queryset = queryset.filter(created_at__gte=since)
    if until is not None:
        queryset = queryset.filter(created_at__lt=until)
    return queryset.order_by(F("created_at").asc(nulls_last=True), "pk")


def payments(
    since: datetime.datetime | None = None, until: datetime.datetime | None = None
) -> QuerySet[Payment]:
    """The payments created in the window, oldest first."""
    return in_window(Payment.objects.all(), since, until)


def refunds(
    since: datetime.datetime | None = None, until: datetime.datetime | None = None
) -> QuerySet[Refund]:
    """The refunds created in the window, oldest first."""
    return in_window(Refund.objects.all(), since, until)


def window(
    kind: str, since: datetime.datetime | None = None, until: datetime.datetime | None = None
) -> QuerySet[Any]:
    return payments(since, until) if kind == PAYMENTS else refunds(since, until)


def payment_rows(
    queryset: QuerySet[Payment], *, chunk_size: int = CHUNK_SIZE
) -> Iterator[dict[str, Any]]:
    """One row per payment of ``queryset``, in its order, read ``chunk_size`` at a time."""
    if REFUNDED not in queryset.query.annotations:
        queryset = queryset.annotate(**{REFUNDED: refunded_total()})
    fields = [name for name in PAYMENT_COLUMNS if name not in COMPUTED]
    for payment in queryset.only(*fields).iterator(chunk_size=chunk_size):
        yield {
            "ledgepay_id": payment.ledgepay_id,
            "account": DEFAULT_ACCOUNT,
            "status": payment.status,
            "amount": payment.amount,
            "currency": payment.currency,
            "amount_major": str(to_major(payment.amount, payment.currency)),
            "amount_refunded": payment.amount_refunded,
            "description": payment.description,
            "customer_email": payment.customer_email,
            "created_at": utc(payment.created_at),
            "completed_at": utc(payment.completed_at),
        }


def refund_rows(
    queryset: QuerySet[Refund], *, chunk_size: int = CHUNK_SIZE
) -> Iterator[dict[str, Any]]:
    """One row per refund of ``queryset``, in its order, read ``chunk_size`` at a time."""
    fields = [name for name in REFUND_COLUMNS if name not in COMPUTED and name != "payment"]
    rows = queryset.select_related("payment").only(*fields, "payment__ledgepay_id")
    for refund in rows.iterator(chunk_size=chunk_size):
        yield {
            "ledgepay_id": refund.ledgepay_id,
            "payment": refund.payment.ledgepay_id,
            "account": DEFAULT_ACCOUNT,
            "status": refund.status,
            "amount": refund.amount,
            "currency": refund.currency,
            "amount_major": str(to_major(refund.amount, refund.currency)),
            "reason": refund.reason,
            "created_at": utc(refund.created_at),
        }


#: The columns that are not a model field of the same name.
COMPUTED: Final = frozenset({"account", "amount_major", "amount_refunded"})

ROWS: Final[Mapping[str, Callable[..., Iterator[dict[str, Any]]]]] = {
    PAYMENTS: payment_rows,
    REFUNDS: refund_rows,
}


def rows(
    kind: str, queryset: QuerySet[Any], *, chunk_size: int = CHUNK_SIZE
) -> Iterator[dict[str, Any]]:
    """The rows of ``kind`` (:data:`PAYMENTS` or :data:`REFUNDS`) for ``queryset``."""
    return ROWS[kind](queryset, chunk_size=chunk_size)


def utc(moment: datetime.datetime | None) -> str | None:
    """``moment`` in ISO 8601, UTC, to the second; None for none."""
    if moment is None:
        return None
    if timezone.is_naive(moment):
        moment = timezone.make_aware(moment, datetime.timezone.utc)
    return iso_z(moment)


# How it is written


class _Echo:
    """A file that hands back what is written to it: :mod:`csv` then encodes one row at a
    time (Django's pattern for streaming large CSV files)."""

    def write(self, value: str) -> str:
        return value


def spreadsheet_safe(value: str) -> str:
    """A text cell a spreadsheet shows as text: one that starts as a formula does
    (``=``, ``+``, ``-``, ``@``, a tab or a carriage return) gets a leading ``'``, as
    OWASP advises against CSV injection. Only in CSV, only in :data:`FREE_TEXT` columns."""
    return f"'{value}" if value.startswith(FORMULA_STARTS) else value


def csv_lines(columns: Iterable[str], rows: Iterable[Mapping[str, Any]]) -> Iterator[str]:
    """The header, then one CSV line per row (RFC 4180: commas, ``\\r\\n``, quotes doubled);
    a None is an empty cell."""
    columns = tuple(columns)
    writer = csv.writer(_Echo())
    yield writer.writerow(columns)
    for row in rows:
        cells = []
        for name in columns:
            value = row[name]
            if value is None:
                value = ""
            elif name in FREE_TEXT and isinstance(value, str):
                value = spreadsheet_safe(value)
            cells.append(value)
        yield writer.writerow(cells)


def jsonl_lines(columns: Iterable[str], rows: Iterable[Mapping[str, Any]]) -> Iterator[str]:
    """One JSON object per line, its keys in the columns' order; amounts in minor units are
    numbers, ``amount_major`` a string (exact), a missing time null."""
    columns = tuple(columns)
    for row in rows:
        yield json.dumps({name: row[name] for name in columns}, ensure_ascii=False) + "\n"


ENCODERS: Final[Mapping[str, Callable[..., Iterator[str]]]] = {CSV: csv_lines, JSONL: jsonl_lines}


def lines(
    kind: str, queryset: QuerySet[Any], *, fmt: str = CSV, chunk_size: int = CHUNK_SIZE
) -> Iterator[str]:
    """The export of ``queryset`` as text, a line at a time (CSV starts with its header)."""
    return ENCODERS[fmt](COLUMNS[kind], rows(kind, queryset, chunk_size=chunk_size))


def filename(kind: str, fmt: str = CSV, now: datetime.datetime | None = None) -> str:
    """``ledgepay-payments-20240115T103000Z.csv``."""
    stamp = (now or timezone.now()).astimezone(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"ledgepay-{kind}-{stamp}.{fmt}"


def csv_response(kind: str, queryset: QuerySet[Any]) -> StreamingHttpResponse:
    """The admin's download: ``queryset``'s rows as CSV, streamed as they are read (oldest
    first), as an attachment."""
    ordered = queryset.order_by(F("created_at").asc(nulls_last=True), "pk")
    response = StreamingHttpResponse(
        lines(kind, ordered, fmt=CSV), content_type="text/csv; charset=utf-8"
    )
    response["Content-Disposition"] = f'attachment; filename="{filename(kind)}"'
    return response
