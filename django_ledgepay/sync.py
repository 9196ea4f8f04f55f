"""Syncing: LedgePay's payments listed page by page, or fetched one by one, into the mirror."""

from __future__ import annotations

import dataclasses
import datetime
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from django.db import IntegrityError
from django.db.models import QuerySet
from django.template.defaultfilters import pluralize
from django.utils import timezone

from django_ledgepay import transitions
from django_ledgepay.client import (
    MAX_PAGE_SIZE,
    LedgePayClient,
    get_client,
)
from django_ledgepay.exceptions import (
    APIError,
    InvalidRequestError,
    NotFoundError,
)
from django_ledgepay.mirror.orm import fetch_payment, write_payment_page
from django_ledgepay.mirror.values import (
    api_time,
    created_second,
    iso_z,
    item_id,
    ledgepay_id_of,
    parse_time,
    payment_values,
)
from django_ledgepay.models import (
    Payment,
    Transition,
)

logger = logging.getLogger("django_ledgepay.services")


def sync_payment(payment_or_ledgepay_id: Payment | str) -> Payment:
    """Fetch one payment from LedgePay and apply it to the mirror."""
    return fetch_payment(ledgepay_id_of(payment_or_ledgepay_id))


ONE_SECOND: Final = datetime.timedelta(seconds=1)
#: How far back ``ledgepay_sync --stale`` looks by default, in days, as does the health
#: check ``pending``: a payment created earlier is left to ``ledgepay_reconcile``.
STALE_DAYS: Final = 7


@dataclass(frozen=True)
class UnlistedSecond:
    """A second holding more payments of one status than LedgePay's list can page through.

    ``listed`` of them could be listed; at least one more could not. LedgePay's list
    gives no count, so that is all that is known of the rest.
    """

    second: datetime.datetime
    status: str
    listed: int

    def __str__(self) -> str:
        second, status, listed = api_time(self.second, "second"), self.status, self.listed
        return (
            f"{second} holds more than {listed} {status} payment{pluralize(listed)}: "
            f"{listed} could be listed, at least 1 more could not"
        )


@dataclass
class SyncResult:
    """What :func:`sync_payments` did: counts of payments by outcome, and pages read.

    ``unlisted`` holds the seconds LedgePay's list could not page through, even by status:
    their payments beyond the first page of each status were not mirrored.
    """

    created: int = 0
    updated: int = 0
    unchanged: int = 0
    skipped: int = 0
    pages: int = 0
    unlisted: list[UnlistedSecond] = dataclasses.field(default_factory=list)

    @property
    def total(self) -> int:
        return self.created + self.updated + self.unchanged + self.skipped

    @property
    def complete(self) -> bool:
        """Whether every matching payment could be listed."""
        return not self.unlisted

    def __str__(self) -> str:
        total, pages = self.total, self.pages
        return (
            f"{total} payment{pluralize(total)} in {pages} page{pluralize(pages)}: "
            f"{self.created} created, {self.updated} updated, {self.unchanged} unchanged, "
            f"{self.skipped} skipped"
        )


def sync_payments(
    *,
    status: str | None = None,
    created_after: datetime.datetime | str | None = None,
    created_before: datetime.datetime | str | None = None,
    progress: Callable[[SyncResult], None] | None = None,
) -> SyncResult:
    """Mirror every payment that matches, newest first, a page of 100 at a time.

    The pages come from :func:`payment_pages`. A second it cannot page through, even by
    status, is logged and kept in the result's ``unlisted``, and the sync goes on: what it
    mirrored stays. ``progress`` is called with the running result after each page.
    """
    result = SyncResult()
    with transitions.origin(Transition.Source.SYNC):
        pages = payment_pages(
            status=status, created_after=created_after, created_before=created_before
        )
        for page in pages:
            result.pages += 1
            _apply_payment_page(page.items, result)
            for unlisted in page.unlisted:
                logger.warning("LedgePay's list cannot page through a second: %s.", unlisted)
                result.unlisted.append(unlisted)
            if progress is not None:
                progress(result)
    return result


@dataclass
class PaymentPage:
    """What one list call of :func:`payment_pages` brought."""

    #: The payments not on an earlier page.
    items: list[dict[str, Any]]
    #: Every payment created at or after this moment has now been listed (the seconds in
    #: ``unlisted`` aside); None when this page closes no further second.
    listed_down_to: datetime.datetime | None = None
    #: Seconds found to hold more payments of one status than a page.
    unlisted: list[UnlistedSecond] = dataclasses.field(default_factory=list)
    #: Whether this is the listing's last page: every payment has been listed.
    last: bool = False


def payment_pages(
    *,
    status: str | None = None,
    created_after: datetime.datetime | str | None = None,
    created_before: datetime.datetime | str | None = None,
) -> Iterable[PaymentPage]:
    """LedgePay's payments that match, newest first, one page per list call.

    LedgePay names no cursor, so pages follow ``created_before``. Several payments can share
    one second, and whether ``created_before`` includes its own instant is not documented:
    each next page starts one second after the oldest ``created_at`` seen and the payments
    already seen are dropped, so none is lost or repeated either way. A second holding more
    than a page is listed again once per status; one that still holds more than a page of
    one status is reported in the page's ``unlisted`` and the listing goes on past it. Only
    the ids of the last seconds seen are remembered, so memory stays flat.
    """
    if status is not None and status not in Payment.Status.values:
        raise InvalidRequestError(
            f"status must be one of {', '.join(Payment.Status.values)}.", param="status"
        )
    after = api_time(created_after, "created_after")
    before = api_time(created_before, "created_before")
    client = get_client()
    seen: dict[str, datetime.datetime | None] = {}
    split: set[datetime.datetime] = set()
    while True:
        items, has_more = client.list_payments(
            limit=MAX_PAGE_SIZE, status=status, created_after=after, created_before=before
        )
        fresh = _fresh(items, seen)
        oldest = min(filter(None, map(created_second, items)), default=None)
        if not has_more:
            yield PaymentPage(fresh, last=True)
            return
        if oldest is None:
            # More to list and nothing to page by: stopping here would end silently partial.
            yield PaymentPage(fresh)
            raise APIError(
                "LedgePay's page says there is more, but none of its payments has a "
                "created_at to page by; the listing cannot go on."
            )
        next_before = oldest + ONE_SECOND
        current = parse_time(before) if before else None
        if current is None or next_before < current:
            yield PaymentPage(fresh, next_before)
        elif fresh:
            yield PaymentPage(fresh)
            continue  # Same window again: the payments already seen are dropped.
        elif any(created_second(item) != oldest for item in items):
            # Payments of later seconds share the page (created_before includes its own
            # instant): the next page starts at the oldest second alone.
            yield PaymentPage(fresh)
            next_before = current - ONE_SECOND
        elif status is None and oldest not in split:
            # A full page of one second, all seen already: list that second by status.
            yield PaymentPage(fresh)
            split.add(oldest)
            yield from _second_pages(client, oldest, after, seen)
            next_before = current - ONE_SECOND
        else:
            # Listed by status already: nothing finer can be asked for. Step past it.
            listed = sum(1 for second in seen.values() if second == oldest)
            unlisted = [] if oldest in split else [UnlistedSecond(oldest, str(status), listed)]
            split.add(oldest)
            yield PaymentPage(fresh, oldest, unlisted)
            next_before = current - ONE_SECOND
        before = api_time(next_before, "created_before")
        # Only the seconds the next page can show again need to be remembered: pages go
        # back in time, and the next shows nothing created after ``next_before``.
        for ledgepay_id, second in list(seen.items()):
            if second is not None and second > next_before:
                del seen[ledgepay_id]


def _second_pages(
    client: LedgePayClient,
    second: datetime.datetime,
    after: str | None,
    seen: dict[str, datetime.datetime | None],
) -> Iterable[PaymentPage]:
    """The payments created in ``second``, listed once per status, for :func:`payment_pages`.

    Each list brackets the second: ``created_after`` one second before it, ``created_before``
    one second after it (or the second itself, when LedgePay turns out to include
    ``created_before``'s own instant); only the payments of that second are kept.
    """
    bracket_after = api_time(second - ONE_SECOND, "created_after")
    if after is not None and bracket_after is not None and after > bracket_after:
        bracket_after = after
    statuses = Payment.Status.values
    for number, status in enumerate(statuses, start=1):
        before = second + ONE_SECOND
        while True:
            items, has_more = client.list_payments(
                limit=MAX_PAGE_SIZE,
                status=status,
                created_after=bracket_after,
                created_before=api_time(before, "created_before"),
            )
            moments = [created_second(item) for item in items]
            ours = [item for item, moment in zip(items, moments, strict=True) if moment == second]
            complete = not has_more or any(m is not None and m < second for m in moments)
            # Payments of the next second fill the page: created_before includes its own
            # instant, so ask again from the second itself.
            again = (
                not complete
                and before > second
                and any(m is not None and m > second for m in moments)
            )
            unlisted = [] if complete or again else [UnlistedSecond(second, status, len(ours))]
            done = number == len(statuses) and not again
            yield PaymentPage(_fresh(ours, seen), second if done else None, unlisted)
            if not again:
                break
            before = second


def _fresh(
    items: Iterable[dict[str, Any]], seen: dict[str, datetime.datetime | None]
) -> list[dict[str, Any]]:
    """The ``items`` not in ``seen``, which they join with their second."""
    fresh = []
    for item in items:
        ledgepay_id = item_id(item)
        if ledgepay_id in seen:
            continue
        if ledgepay_id:
            seen[ledgepay_id] = created_second(item)
        fresh.append(item)
    return fresh


def _apply_payment_page(items: Iterable[Mapping[str, Any]], result: SyncResult) -> None:
    """Write one page in a constant number of queries: one locking read, one insert, one
    update, whatever the page holds."""
    values_by_id: dict[str, dict[str, Any]] = {}
    for item in items:
        ledgepay_id = item_id(item)
        if ledgepay_id:
            values_by_id[ledgepay_id] = payment_values(item)
        else:
            result.skipped += 1
    if not values_by_id:
        return
    for attempt in range(2):
        try:
            with transitions.origin(Transition.Source.SYNC):
                counts = write_payment_page(values_by_id)
        except IntegrityError:
            # Another process inserted one of these payments meanwhile: read them again.
            if attempt:
                raise
            continue
        break
    result.created += counts[0]
    result.updated += counts[1]
    result.unchanged += counts[2]
    result.skipped += counts[3]


# Stale payments: pending for longer than they should be, asked about by id


def stale_payments(
    *, minutes: float, days: float = STALE_DAYS, now: datetime.datetime | None = None
) -> QuerySet[Payment]:
    """The payments pending for longer than ``minutes`` and created within the last
    ``days``, oldest first (on the index of status and creation time)."""
    now = now or timezone.now()
    return Payment.objects.filter(
        status=Payment.Status.PENDING,
        created_at__gte=now - datetime.timedelta(days=days),
        created_at__lt=now - datetime.timedelta(minutes=minutes),
    ).order_by("created_at", "pk")


@dataclass
class StaleResult:
    """What :func:`sync_stale_payments` did: the stale payments found, and what LedgePay
    said of those asked so far, by the status each has now."""

    #: The payments created from this moment on were looked at.
    since: datetime.datetime
    #: Those pending since before this moment were asked about.
    before: datetime.datetime
    found: int = 0
    statuses: dict[str, int] = dataclasses.field(
        default_factory=lambda: dict.fromkeys(Payment.Status.values, 0)
    )
    #: The payments LedgePay refused to answer for (not found, say), with its message.
    refused: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def asked(self) -> int:
        return sum(self.statuses.values()) + len(self.refused)

    @property
    def settled(self) -> int:
        return self.asked - len(self.refused) - self.statuses[Payment.Status.PENDING]

    def __str__(self) -> str:
        found, asked = self.found, self.asked
        statuses = self.statuses
        counts = (
            f"{statuses['succeeded']} succeeded, {statuses['failed']} failed, "
            f"{statuses['canceled']} canceled, {statuses['pending']} still pending"
        )
        text = (
            f"{found} payment{pluralize(found)} pending since before {iso_z(self.before)} "
            f"(created since {iso_z(self.since)}); asked LedgePay about {asked}: {counts}"
        )
        if self.refused:
            text += f", {len(self.refused)} not answered"
        return text


def sync_stale_payments(
    *,
    minutes: float,
    days: float = STALE_DAYS,
    progress: Callable[[StaleResult], None] | None = None,
) -> StaleResult:
    """Ask LedgePay about each payment pending for longer than ``minutes`` and created
    within the last ``days``, one ``GET /payments/{id}`` each (no list call), and apply
    its answer as :func:`sync_payment` does: a payment LedgePay has settled sends its
    signal once, with source ``sync``.

    A payment LedgePay will not answer for (404, 400) is kept in the result's ``refused``
    and the others are asked; any other failure (LedgePay out of reach, the circuit
    breaker open, the key refused) is raised at once, the answers applied so far staying.
    ``progress`` is called with the running result after each payment.
    """
    now = timezone.now()
    stale = stale_payments(minutes=minutes, days=days, now=now)
    result = StaleResult(
        since=now - datetime.timedelta(days=days),
        before=now - datetime.timedelta(minutes=minutes),
    )
    # Only the ids in memory; each payment is read again as its answer is applied.
    ledgepay_ids = list(stale.values_list("ledgepay_id", flat=True))
    result.found = len(ledgepay_ids)
    for ledgepay_id in ledgepay_ids:
        try:
            payment = sync_payment(ledgepay_id)
        except (NotFoundError, InvalidRequestError) as err:
            logger.warning(
                "LedgePay did not answer for the stale payment %s: %s",
                ledgepay_id,
                err,
                extra={"ledgepay_payment": ledgepay_id},
            )
            result.refused[ledgepay_id] = str(err)
        else:
            result.statuses[payment.status] = result.statuses.get(payment.status, 0) + 1
        if progress is not None:
            progress(result)
    return result
