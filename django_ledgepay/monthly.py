"""A month's statement: per currency, what succeeded, from the mirror, checked against LedgePay.

:func:`monthly_statement` adds up, per currency, the payments that succeeded and the refunds
that succeeded among those created in a calendar month (UTC), and the net. It then walks
LedgePay's list of the payments created in that month, page by page within the rate-limit
budget (as background work, leaving the reserve to checkout and refunds), adds up those
LedgePay says succeeded, and compares each page with the mirror's rows for its ids (one
query a page). Each difference is named, one entry per payment:

- ``missing``: succeeded at LedgePay, not in the mirror;
- ``status``: succeeded on one side only (the other says pending, failed or canceled);
- ``amount``: succeeded on both sides, but the amount or the currency differ;
- ``created_at``: succeeded on both sides, but the mirror's creation time falls in another
  month, so the two statements count it in different months;
- ``not_listed``: succeeded in the mirror's month, but LedgePay's list of the month did not
  show it (a stretch of the month is looked up once LedgePay's list has covered it, one
  query);
- ``unlisted``: a second holding more succeeded payments than LedgePay's list can page
  through (see :func:`django_ledgepay.services.payment_pages`): what lies beyond cannot be
  counted, so the statement cannot agree.

LedgePay's API lists payments only: the refunds are the mirror's (kept by webhooks and by
``ledgepay_reconcile``'s ``unresolved_refund``), not checked against a list of LedgePay's.
A month is that of a payment's or a refund's creation, as LedgePay's list selects and as
``ledgepay_export`` windows: a payment created on 31 January and paid on 1 February counts
in January.
"""

from __future__ import annotations

import dataclasses
import datetime
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

from django.core.exceptions import ImproperlyConfigured
from django.db.models import Count, Sum
from django.template.defaultfilters import pluralize

from django_ledgepay import services
from django_ledgepay.client import background
from django_ledgepay.currencies import format_amount
from django_ledgepay.exceptions import LedgePayError
from django_ledgepay.exports import check_account
from django_ledgepay.mirror.values import created_second, item_id
from django_ledgepay.models import Payment, Refund

MISSING: Final = "missing"
STATUS: Final = "status"
AMOUNT: Final = "amount"
CREATED_AT: Final = "created_at"
NOT_LISTED: Final = "not_listed"
UNLISTED: Final = "unlisted"
KINDS: Final = (MISSING, STATUS, AMOUNT, CREATED_AT, NOT_LISTED, UNLISTED)

ONE_SECOND: Final = datetime.timedelta(seconds=1)
SUCCEEDED: Final = Payment.Status.SUCCEEDED
MONTH: Final = re.compile(r"([0-9]{4})-([0-9]{2})")


def month_window(month: str) -> tuple[datetime.datetime, datetime.datetime]:
    """The first moment of ``month`` (``"2026-01"``) and of the month after, in UTC;
    ValueError for anything but a month from 0001-01 to 9998-12 in that form."""
    found = MONTH.fullmatch(month) if isinstance(month, str) else None
    year, number = (int(found[1]), int(found[2])) if found else (0, 0)
    if not found or not 1 <= number <= 12 or not 1 <= year <= 9998:
        raise ValueError(f"--month must be a month like 2026-01 (YYYY-MM), not {month!r}.")
    start = datetime.datetime(year, number, 1, tzinfo=datetime.timezone.utc)
    year, number = (year + 1, 1) if number == 12 else (year, number + 1)
    return start, datetime.datetime(year, number, 1, tzinfo=datetime.timezone.utc)


@dataclasses.dataclass
class Totals:
    """A count and a sum in minor units."""

    count: int = 0
    amount: int = 0

    def add(self, amount: int, count: int = 1) -> None:
        self.count += count
        self.amount += amount

    def as_dict(self) -> dict[str, int]:
        return {"count": self.count, "amount": self.amount}


@dataclasses.dataclass
class CurrencyStatement:
    """One currency's line: the mirror's succeeded payments and refunds, the net, and the
    succeeded payments on LedgePay's list."""

    currency: str
    payments: Totals = dataclasses.field(default_factory=Totals)
    refunds: Totals = dataclasses.field(default_factory=Totals)
    ledgepay: Totals = dataclasses.field(default_factory=Totals)
    #: How many differences are about a payment in this currency.
    differences: int = 0

    @property
    def net(self) -> int:
        return self.payments.amount - self.refunds.amount

    @property
    def agrees(self) -> bool:
        return self.payments == self.ledgepay and not self.differences

    def as_dict(self) -> dict[str, Any]:
        return {
            "currency": self.currency,
            "payments": self.payments.as_dict(),
            "refunds": self.refunds.as_dict(),
            "net": self.net,
            "agrees": self.agrees,
            "ledgepay": {"payments": self.ledgepay.as_dict()},
        }

    def __str__(self) -> str:
        currency = self.currency
        text = (
            f"{currency}: payments {self.payments.count}, "
            f"{format_amount(self.payments.amount, currency)}; refunds {self.refunds.count}, "
            f"{format_amount(self.refunds.amount, currency)}; net "
            f"{format_amount(self.net, currency)}"
        )
        if self.agrees:
            return f"{text}. Agrees with LedgePay."
        return (
            f"{text}. LedgePay: payments {self.ledgepay.count}, "
            f"{format_amount(self.ledgepay.amount, currency)}; differs."
        )


@dataclasses.dataclass
class Statement:
    """A month's statement, and how it compares with LedgePay's list (``error`` says why
    LedgePay could not be read, when it could not: then nothing is known to agree)."""

    month: str
    since: datetime.datetime
    until: datetime.datetime
    account: str | None = None
    lines: dict[str, CurrencyStatement] = dataclasses.field(default_factory=dict)
    differences: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    pages: int = 0
    listed: int = 0
    error: str = ""

    @property
    def currencies(self) -> list[CurrencyStatement]:
        return [self.lines[currency] for currency in sorted(self.lines)]

    @property
    def agrees(self) -> bool:
        return (
            not self.error and not self.differences and all(c.agrees for c in self.lines.values())
        )

    def line(self, currency: str) -> CurrencyStatement:
        if currency not in self.lines:
            self.lines[currency] = CurrencyStatement(currency)
        return self.lines[currency]

    def as_dict(self) -> dict[str, Any]:
        """The statement as JSON-ready data: ``{"month": ..., "currencies": [...], ...}``;
        amounts in minor units."""
        return {
            "month": self.month,
            "currencies": [line.as_dict() for line in self.currencies],
            "agrees": self.agrees,
            "differences": self.differences,
            "account": self.account,
            "since": services.iso_z(self.since),
            "until": services.iso_z(self.until),
            "pages": self.pages,
            "listed": self.listed,
            "error": self.error,
        }

    def __str__(self) -> str:
        listed, pages = self.listed, self.pages
        return (
            f"{self.month} ({services.iso_z(self.since)} to {services.iso_z(self.until)}): "
            f"{listed} payment{pluralize(listed)} listed by LedgePay in {pages} "
            f"page{pluralize(pages)}, {len(self.differences)} "
            f"difference{pluralize(len(self.differences))}"
        )


def monthly_statement(
    month: str,
    *,
    account: str | None = None,
    progress: Callable[[Statement], None] | None = None,
) -> Statement:
    """The statement of ``month`` (``"2026-01"``), checked against LedgePay's list of the
    payments created in it.

    LedgePay's list is read as background work (:func:`django_ledgepay.client.background`).
    When LedgePay cannot be read (or the API key is not configured), the statement keeps the
    mirror's totals and says why in ``error``; nothing is raised. ``progress`` is called with
    the running statement after each page. ``account``: only ``"default"`` (or None, every
    account) in this version.
    """
    since, until = month_window(month)
    statement = Statement(month, since, until, check_account(account))
    try:
        with background():
            _Check(statement, progress).run()
    except (LedgePayError, ImproperlyConfigured) as err:
        # ImproperlyConfigured names the setting to fix (LEDGEPAY_API_KEY), never its value.
        statement.error = str(err)
    # The mirror's totals last: the ones the differences named above explain.
    _add_mirror_totals(statement)
    return statement


def _add_mirror_totals(statement: Statement) -> None:
    """The mirror's succeeded payments and refunds of the month, per currency: two queries."""
    window = {"created_at__gte": statement.since, "created_at__lt": statement.until}
    for model, attribute in ((Payment, "payments"), (Refund, "refunds")):
        rows = (
            model.objects.filter(status=SUCCEEDED, **window)
            .order_by()
            .values("currency")
            .annotate(count=Count("id"), amount=Sum("amount"))
        )
        for row in rows:
            getattr(statement.line(row["currency"]), attribute).add(row["amount"], row["count"])


class _Check:
    def __init__(self, statement: Statement, progress: Callable[[Statement], None] | None):
        self.statement = statement
        self.progress = progress
        #: The ``unlisted`` entries of succeeded payments by second, to count the mirror's
        #: payments there that could not be verified.
        self.unlisted: dict[datetime.datetime, dict[str, Any]] = {}

    def run(self) -> None:
        since, until = self.statement.since, self.statement.until
        open_ids: dict[str, datetime.datetime] = {}
        top = until  # Everything from here to ``until`` has been listed and looked up.
        # One second before ``since`` and ``until`` itself: whether LedgePay's bounds
        # include their own instant or not, the month is covered; the rest is dropped here.
        pages = services.payment_pages(created_after=since - ONE_SECOND, created_before=until)
        for page in pages:
            self.statement.pages += 1
            items = [item for item in page.items if self._in_month(item)]
            self._compare(items)
            for item in items:
                second = created_second(item)
                assert second is not None  # _in_month() saw it.
                open_ids[item_id(item)] = second
            for unlisted in page.unlisted:
                if unlisted.status == SUCCEEDED and since <= unlisted.second < until:
                    self._unlisted(unlisted)
            bottom = since if page.last else page.listed_down_to
            if bottom is not None and max(bottom, since) < top:
                bottom = max(bottom, since)
                closed = {ledgepay_id for ledgepay_id, s in open_ids.items() if s >= bottom}
                self._close(bottom, top, closed)
                open_ids = {i: s for i, s in open_ids.items() if i not in closed}
                top = bottom
            if self.progress is not None:
                self.progress(self.statement)

    def _in_month(self, item: Mapping[str, Any]) -> bool:
        second = created_second(item)
        return (
            second is not None
            and bool(item_id(item))
            and self.statement.since <= second < self.statement.until
        )

    def _compare(self, items: Iterable[Mapping[str, Any]]) -> None:
        """Add up a page's succeeded payments and compare the page with the mirror's rows
        for its ids: one query."""
        items = list(items)
        if not items:
            return
        rows = {
            payment.ledgepay_id: payment
            for payment in Payment.objects.filter(
                ledgepay_id__in=[item_id(item) for item in items]
            ).only("ledgepay_id", "status", "amount", "currency", "created_at")
        }
        for item in items:
            self.statement.listed += 1
            values = services.payment_values(item)
            if values.get("status") == SUCCEEDED and "amount" in values and "currency" in values:
                self.statement.line(values["currency"]).ledgepay.add(values["amount"])
            self._check(item_id(item), values, rows.get(item_id(item)))

    def _check(self, ledgepay_id: str, theirs: Mapping[str, Any], mine: Payment | None) -> None:
        status = theirs.get("status")
        amount, currency = theirs.get("amount"), theirs.get("currency")
        money = format_amount(amount, currency) if amount and currency else "no amount"
        in_month = mine is not None and self._in_window(mine.created_at)
        counted = mine is not None and mine.status == SUCCEEDED and in_month
        if status != SUCCEEDED and not counted:
            return  # In neither side's statement of the month.
        if mine is None:
            detail = f"Succeeded at LedgePay ({money}), not in the mirror."
            self._add(MISSING, ledgepay_id, currency, detail, amount=amount)
        elif status != SUCCEEDED or mine.status != SUCCEEDED:
            detail = f"{status or 'no status'} at LedgePay, {mine.status} in the mirror."
            self._add(
                STATUS,
                ledgepay_id,
                mine.currency,
                detail,
                ledgepay_status=status,
                mirror_status=mine.status,
                amount=mine.amount,
            )
        elif not in_month:
            when = services.iso_z(mine.created_at) if mine.created_at else "no time"
            detail = (
                f"Created {when} in the mirror, {theirs.get('created_at')} at LedgePay: "
                "counted in another month."
            )
            self._add(CREATED_AT, ledgepay_id, mine.currency, detail, amount=mine.amount)
        elif (amount, currency) != (mine.amount, mine.currency):
            mirror = format_amount(mine.amount, mine.currency)
            detail = f"{mirror} in the mirror, {money} at LedgePay."
            self._add(
                AMOUNT,
                ledgepay_id,
                mine.currency,
                detail,
                mirror_amount=mine.amount,
                mirror_currency=mine.currency,
                ledgepay_amount=amount,
                ledgepay_currency=currency,
            )

    def _in_window(self, moment: datetime.datetime | None) -> bool:
        return moment is not None and self.statement.since <= moment < self.statement.until

    def _unlisted(self, unlisted: services.UnlistedSecond) -> None:
        entry = self._add(
            UNLISTED,
            None,
            None,
            f"{unlisted}: LedgePay's succeeded payments there could not all be counted.",
            second=services.iso_z(unlisted.second),
            listed=unlisted.listed,
            unverified=0,
        )
        self.unlisted[unlisted.second] = entry

    def _close(self, bottom: datetime.datetime, top: datetime.datetime, listed: set[str]) -> None:
        """The mirror's succeeded payments created from ``bottom`` to ``top``, a stretch
        LedgePay's list has now covered, that the list did not show: one query."""
        unseen = (
            Payment.objects.filter(status=SUCCEEDED, created_at__gte=bottom, created_at__lt=top)
            .exclude(ledgepay_id__in=listed)
            .only("ledgepay_id", "amount", "currency", "created_at")
            .order_by("-created_at", "-id")
        )
        for payment in unseen:
            assert payment.created_at is not None
            unlisted = self.unlisted.get(payment.created_at.replace(microsecond=0))
            if unlisted is not None:
                unlisted["unverified"] += 1
                continue
            detail = (
                f"Succeeded in the mirror ({format_amount(payment.amount, payment.currency)}), "
                "not on LedgePay's list of the month."
            )
            self._add(NOT_LISTED, payment.ledgepay_id, payment.currency, detail)

    def _add(
        self, kind: str, payment: str | None, currency: str | None, detail: str, **values: Any
    ) -> dict[str, Any]:
        entry = {"kind": kind, "payment": payment, "currency": currency, "detail": detail}
        entry.update(values)
        self.statement.differences.append(entry)
        if currency is not None:
            self.statement.line(currency).differences += 1
        return entry


def describe(differences: Iterable[Mapping[str, Any]]) -> Iterable[str]:
    """One line per difference, for a person reading the command's output."""
    for entry in differences:
        yield f"{entry['kind']:<11} {entry['payment'] or '-':<24} {entry['detail']}"
