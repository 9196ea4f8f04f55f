"""The dashboard's figures per day, kept in a small table: a row per local day
(:class:`~django_ledgepay.models.DayFigures`), computed again only when a payment or refund
created that day has changed since.

A day's figures are, per currency, the count and amount of its payments by status and of its
refunds that have not failed. Nothing but :func:`figures_for` writes them: every writer of the
mirror already stamps ``updated_at`` on the payments and refunds it writes, and a day is
computed again when one of them was stamped less than :data:`LAG` before the day's figures
were last checked. So whatever the size of the tables, a dashboard reads its window's rows,
the payments and refunds changed since the last look (on an index of ``updated_at``), and
computes again only the days those were created on.
"""

from __future__ import annotations

import datetime
from typing import Any, Final

from django.db.models import Count, Q, QuerySet, Sum
from django.db.models.functions import TruncDate
from django.utils import timezone

from django_ledgepay.models import DayFigures, Payment, Refund

#: How long before its commit a change may be stamped and still be seen: the longest a
#: transaction that writes a payment or a refund may last, with the clocks' drift.
LAG: Final = datetime.timedelta(minutes=10)
#: The key of the refunds among a currency's figures (the others are payment statuses).
REFUNDS: Final = "refunds"

#: A day's figures: currency -> payment status or ``"refunds"`` -> [count, amount].
Figures = dict[str, dict[str, list[int]]]


def figures_for(
    since: datetime.datetime, days: list[datetime.date]
) -> dict[datetime.date, Figures]:
    """The figures of ``days`` (consecutive local days, oldest first, the first starting at
    ``since``) in the current time zone, computing again those that changed.

    Three queries when none changed: the stored days, the days changed since they were
    checked, and storing them as checked now. Two more, their payments and their refunds,
    when some did or were never stored (the first look then skips the second query).
    """
    zone = timezone.get_current_timezone_name()
    now = timezone.now()
    stored = {row.day: row for row in DayFigures.objects.filter(time_zone=zone, day__in=days)}
    stale = set(days) - set(stored)
    if stored:
        checked = min(row.computed_at for row in stored.values())
        # A creation time ahead of this server's clock is no day of the window.
        stale.update(set(days) & changed_days(since, checked - LAG))
    figures = {day: stored[day].figures for day in days if day not in stale}
    if stale:
        figures.update(compute(sorted(stale)))
    # Every day of the window as checked now: the next look reads only the changes from
    # now on (less LAG).
    DayFigures.objects.bulk_create(
        [
            DayFigures(day=day, time_zone=zone, figures=figures[day], computed_at=now)
            for day in days
        ],
        update_conflicts=True,
        unique_fields=["time_zone", "day"],
        update_fields=["figures", "computed_at"],
    )
    return figures


def start_of(day: datetime.date) -> datetime.datetime:
    """The first moment of the local ``day``."""
    return timezone.make_aware(datetime.datetime.combine(day, datetime.time.min))


def changed_days(since: datetime.datetime, stamped_from: datetime.datetime) -> set[Any]:
    """The local days, from ``since`` on, of the payments and refunds stamped from
    ``stamped_from`` on: one query, on the indexes of ``updated_at``."""
    payments = _created_days(Payment.objects.all(), since, stamped_from)
    refunds = _created_days(Refund.objects.all(), since, stamped_from)
    return set(payments.union(refunds).values_list("day", flat=True))


def _created_days(
    rows: QuerySet[Any], since: datetime.datetime, stamped_from: datetime.datetime
) -> QuerySet[Any]:
    days: QuerySet[Any] = (
        rows.filter(updated_at__gte=stamped_from, created_at__gte=since)
        .annotate(day=TruncDate("created_at"))
        .order_by()
        .values("day")
    )
    return days


def compute(days: list[datetime.date]) -> dict[datetime.date, Figures]:
    """The figures of ``days`` (sorted) from the payments and refunds created on them: two
    queries, each grouped by local day and currency (and status) in the database."""
    created = _within(days)
    payments = (
        Payment.objects.filter(created)
        .annotate(day=TruncDate("created_at"))
        .order_by()
        .values("day", "currency", "status")
        .annotate(count=Count("id"), total=Sum("amount"))
    )
    refunds = (
        Refund.objects.filter(created)
        .exclude(status=Refund.Status.FAILED)
        .annotate(day=TruncDate("created_at"))
        .order_by()
        .values("day", "currency")
        .annotate(count=Count("id"), total=Sum("amount"))
    )
    figures: dict[datetime.date, Figures] = {day: {} for day in days}
    for kind, rows in ((None, payments), (REFUNDS, refunds)):
        for row in rows:
            if row["day"] in figures:
                currency = figures[row["day"]].setdefault(row["currency"], {})
                currency[kind or row["status"]] = [row["count"], row["total"]]
    return figures


def _within(days: list[datetime.date]) -> Q:
    """``created_at`` within ``days``, one range per run of consecutive days."""
    condition = Q()
    start = end = days[0]
    for day in [*days[1:], None]:
        if day is not None and day == end + datetime.timedelta(days=1):
            end = day
            continue
        condition |= Q(
            created_at__gte=start_of(start),
            created_at__lt=start_of(end + datetime.timedelta(days=1)),
        )
        if day is not None:
            start = end = day
    return condition
