"""Drift between the mirror and LedgePay: compare, report, and repair through the services.

:func:`reconcile` walks LedgePay's list of the payments created in a window, page by page,
and compares each page with the mirror's rows for the same ids in one query. It finds:

- ``missing``: a payment at LedgePay that the mirror lacks;
- ``status``: a status that differs;
- ``amount``: an amount or a currency that differs (a fixed fact: never repaired here);
- ``unresolved_refund``: refund requests of a payment in the window whose outcome is unknown;
- ``unlisted``: a second holding more payments of one status than LedgePay's list can page
  through (see :func:`django_ledgepay.services.payment_pages`);
- ``unknown``: a payment in the mirror's window that LedgePay's list never showed and that
  LedgePay does not know when asked by id.

Once a stretch of the window has been listed in full, the mirror's payments in it that the
list did not show are looked up in one query (normally it finds none) and checked by id.
In an ``unlisted`` second that covers the pending ones the list could not show: a final
status never changes again, so a final one there is left as it is and counted as
``unverified`` on the ``unlisted`` entry.

With ``apply=True`` what can be repaired is repaired through the services, under
``transitions.origin(SYNC)``: :func:`~django_ledgepay.services.apply_payment` for ``missing``
and for a pending payment that LedgePay has settled (each change sends its signal once), and
``services.resolve_refund_requests`` for ``unresolved_refund``. A final status is never
moved and a fixed fact never changed: such drift stays in the report as not repairable.
"""

from __future__ import annotations

import dataclasses
import datetime
import itertools
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

from django.core.exceptions import ImproperlyConfigured
from django.template.defaultfilters import pluralize
from django.utils import timezone

from django_ledgepay import services, transitions
from django_ledgepay.currencies import format_amount
from django_ledgepay.exceptions import LedgePayError, NotFoundError
from django_ledgepay.mirror.values import created_second, item_id
from django_ledgepay.models import Payment, Reconciliation, RefundRequest, Transition

MISSING: Final = "missing"
STATUS: Final = "status"
AMOUNT: Final = "amount"
UNRESOLVED_REFUND: Final = "unresolved_refund"
UNLISTED: Final = "unlisted"
UNKNOWN: Final = "unknown"
KINDS: Final = (MISSING, STATUS, AMOUNT, UNRESOLVED_REFUND, UNLISTED, UNKNOWN)

ONE_SECOND: Final = datetime.timedelta(seconds=1)


@dataclasses.dataclass
class Report:
    """What one reconciliation checked and found.

    Each entry of ``drift`` is a dict with ``kind``, ``payment`` (a LedgePay id, or None for
    ``unlisted``), ``detail`` (a sentence), ``repairable``, ``repaired`` and the values
    compared. ``error`` says why LedgePay could not be read, when it could not.
    """

    since: datetime.datetime
    until: datetime.datetime
    applied: bool = False
    pages: int = 0
    checked: int = 0
    checked_by_id: int = 0
    drift: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    error: str = ""
    reconciliation: Reconciliation | None = None

    @property
    def remaining(self) -> list[dict[str, Any]]:
        """The drift not repaired."""
        return [entry for entry in self.drift if not entry["repaired"]]

    @property
    def repaired(self) -> int:
        return sum(1 for entry in self.drift if entry["repaired"])

    @property
    def outcome(self) -> str:
        if self.error:
            return Reconciliation.Outcome.FAILED
        return Reconciliation.Outcome.DRIFT if self.remaining else Reconciliation.Outcome.CLEAN

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data: ``{"drift": [...], ...summary}``."""
        counts = dict.fromkeys(KINDS, 0)
        for entry in self.drift:
            counts[entry["kind"]] += 1
        return {
            "drift": self.drift,
            "since": services.iso_z(self.since),
            "until": services.iso_z(self.until),
            "applied": self.applied,
            "outcome": self.outcome,
            "pages": self.pages,
            "checked": self.checked,
            "checked_by_id": self.checked_by_id,
            "found": len(self.drift),
            "repaired": self.repaired,
            "remaining": len(self.remaining),
            "kinds": counts,
            "error": self.error,
            "reconciliation": self.reconciliation.pk if self.reconciliation else None,
        }

    def __str__(self) -> str:
        checked, pages, found = self.checked, self.pages, len(self.drift)
        since, until = services.iso_z(self.since), services.iso_z(self.until)
        text = (
            f"{checked} payment{pluralize(checked)} checked in {pages} page{pluralize(pages)}"
            f" ({self.checked_by_id} by id) from {since} to {until}: {found} drift"
        )
        if self.applied:
            text += f", {self.repaired} repaired, {len(self.remaining)} remaining"
        return text


def reconcile(
    *,
    since: datetime.datetime,
    until: datetime.datetime,
    apply: bool = False,
    progress: Callable[[Report], None] | None = None,
) -> Report:
    """Compare the mirror with LedgePay for the payments created from ``since`` (included)
    to ``until`` (excluded), both taken to the second; repair what can be with ``apply``.

    The run is recorded as a :class:`~django_ledgepay.models.Reconciliation`. When LedgePay
    cannot be read (or the API key is not configured) the report keeps what was checked
    until then and says why in ``error``; nothing is raised. ``progress`` is called with
    the running report after each page.
    """
    since, until = _second(since), _second(until)
    record = Reconciliation.objects.create(since=since, until=until, applied=apply)
    report = Report(since=since, until=until, applied=apply, reconciliation=record)
    try:
        with transitions.origin(Transition.Source.SYNC):
            _Reconciler(report, apply=apply, progress=progress).run()
    except (LedgePayError, ImproperlyConfigured) as err:
        # ImproperlyConfigured names the setting to fix (LEDGEPAY_API_KEY), never its value.
        report.error = str(err)
    except BaseException as err:
        # Anything else (the database, an interrupt) is raised, once the run is recorded as
        # failed rather than left running for ever.
        report.error = f"Stopped by {type(err).__name__}."
        _finish(record, report)
        raise
    _finish(record, report)
    return report


def _finish(record: Reconciliation, report: Report) -> None:
    record.finished_at = timezone.now()
    record.outcome = report.outcome
    record.checked = report.checked
    record.repaired = report.repaired
    record.drift = report.drift
    record.error = report.error
    record.save()


class _Reconciler:
    def __init__(
        self, report: Report, *, apply: bool, progress: Callable[[Report], None] | None
    ) -> None:
        self.report = report
        self.apply = apply
        self.progress = progress
        #: The unlisted entries by (second, status), to count what they leave unverified.
        self.unlisted: dict[tuple[datetime.datetime, str], dict[str, Any]] = {}

    def run(self) -> None:
        since, until = self.report.since, self.report.until
        # The ids listed in the stretch not yet closed, with their second.
        open_ids: dict[str, datetime.datetime] = {}
        top = until  # Everything from here to ``until`` is closed.
        # One second before ``since`` and ``until`` itself: whether LedgePay's bounds
        # include their own instant or not, the window is covered; what lies outside it
        # is dropped here.
        pages = services.payment_pages(created_after=since - ONE_SECOND, created_before=until)
        for page in pages:
            self.report.pages += 1
            items = [item for item in page.items if self._in_window(item)]
            self._compare(items)
            for item in items:
                second = created_second(item)
                assert second is not None  # _in_window() saw it.
                open_ids[item_id(item)] = second
            for unlisted in page.unlisted:
                if since <= unlisted.second < until:
                    self._unlisted(unlisted)
            bottom = since if page.last else page.listed_down_to
            if bottom is not None and max(bottom, since) < top:
                bottom = max(bottom, since)
                closed = {ledgepay_id for ledgepay_id, s in open_ids.items() if s >= bottom}
                self._close(bottom, top, closed)
                open_ids = {i: s for i, s in open_ids.items() if i not in closed}
                top = bottom
            if self.progress is not None:
                self.progress(self.report)
        self._refund_requests()

    def _in_window(self, item: Mapping[str, Any]) -> bool:
        second = created_second(item)
        return (
            second is not None
            and bool(item_id(item))
            and self.report.since <= second < self.report.until
        )

    # Comparing

    def _compare(self, items: list[dict[str, Any]]) -> None:
        """Compare one page with the mirror's rows for its ids: one query."""
        if not items:
            return
        ids = [item_id(item) for item in items]
        rows = {p.ledgepay_id: p for p in Payment.objects.filter(ledgepay_id__in=ids)}
        for item in items:
            self.report.checked += 1
            self._check(item, rows.get(item_id(item)))

    def _check(self, data: Mapping[str, Any], payment: Payment | None) -> None:
        ledgepay_id = item_id(data)
        values = services.payment_values(data)
        theirs = values.get("status")
        if payment is None:
            amount, currency = values.get("amount"), values.get("currency")
            money = format_amount(amount, currency) if amount and currency else "no amount"
            entry = _entry(
                MISSING,
                ledgepay_id,
                f"At LedgePay ({theirs or 'no status'}, {money}), not in the mirror.",
                repairable=amount is not None and currency is not None,
                status=theirs,
                amount=amount,
                currency=currency,
                created_at=data.get("created_at"),
            )
            self._add(entry, data)
            return
        amount = values.get("amount", payment.amount)
        currency = values.get("currency", payment.currency)
        unreadable = [
            name
            for name in ("amount", "currency")
            if data.get(name) is not None and name not in values
        ]
        if unreadable or (amount, currency) != (payment.amount, payment.currency):
            if unreadable:
                # Listed, but not as an amount of minor units and a currency code: not the
                # mirror's, and nothing to compare or repair with.
                amount, currency = data.get("amount"), data.get("currency")
                at_ledgepay = f"{amount!r} {currency!r}, which cannot be read,"
            else:
                at_ledgepay = format_amount(amount, currency)
            detail = (
                f"{format_amount(payment.amount, payment.currency)} in the mirror, "
                f"{at_ledgepay} at LedgePay: a fixed fact, not repaired."
            )
            entry = _entry(
                AMOUNT,
                ledgepay_id,
                detail,
                repairable=False,
                mirror_amount=payment.amount,
                mirror_currency=payment.currency,
                ledgepay_amount=amount,
                ledgepay_currency=currency,
                mirror_status=payment.status,
                ledgepay_status=theirs,
            )
            self._add(entry, data)
            return
        if theirs is None or theirs == payment.status:
            return
        repairable = not payment.is_final and theirs != Payment.Status.PENDING
        detail = f"{payment.status} in the mirror, {theirs} at LedgePay"
        if not repairable:
            detail += ": a final status never changes, not repaired"
        entry = _entry(
            STATUS,
            ledgepay_id,
            detail + ".",
            repairable=repairable,
            mirror_status=payment.status,
            ledgepay_status=theirs,
        )
        self._add(entry, data)

    def _add(self, entry: dict[str, Any], data: Mapping[str, Any] | None = None) -> None:
        """Record ``entry``; repair it first when asked to and it can be."""
        if self.apply and entry["repairable"] and data is not None:
            try:
                payment, _ = services.apply_payment(data, verified=True)  # LedgePay's answer
            except services.IncompleteDataError as err:
                entry["repairable"] = False
                entry["detail"] += f" Not repairable: {err}"
            else:
                entry["repaired"] = payment.status == entry.get(
                    "ledgepay_status", entry.get("status")
                )
        self.report.drift.append(entry)

    # What the list did not show

    def _unlisted(self, unlisted: services.UnlistedSecond) -> None:
        entry = _entry(
            UNLISTED,
            None,
            f"{unlisted}: payments missing from the mirror there cannot be seen.",
            repairable=False,
            second=services.iso_z(unlisted.second),
            status=unlisted.status,
            listed=unlisted.listed,
            unverified=0,
        )
        self.unlisted[(unlisted.second, unlisted.status)] = entry
        self._add(entry)

    def _close(self, bottom: datetime.datetime, top: datetime.datetime, listed: set[str]) -> None:
        """Check the mirror's payments created from ``bottom`` to ``top``, a stretch now
        listed in full, that the list did not show: one query, then one call per payment."""
        unseen = list(
            Payment.objects.filter(created_at__gte=bottom, created_at__lt=top)
            .exclude(ledgepay_id__in=listed)
            .order_by("-created_at", "-id")
        )
        for payment in unseen:
            assert payment.created_at is not None
            second = _second(payment.created_at)
            unlisted = self.unlisted.get((second, payment.status))
            if unlisted is not None and payment.is_final:
                unlisted["unverified"] += 1
                continue
            self._check_by_id(payment)

    def _check_by_id(self, payment: Payment) -> None:
        self.report.checked_by_id += 1
        try:
            data = services.get_client().retrieve_payment(payment.ledgepay_id)
        except NotFoundError:
            entry = _entry(
                UNKNOWN,
                payment.ledgepay_id,
                f"In the mirror ({payment.status}), unknown at LedgePay.",
                repairable=False,
                mirror_status=payment.status,
            )
            self._add(entry)
            return
        self.report.checked += 1
        self._check({**data, "id": data.get("id") or payment.ledgepay_id}, payment)

    # Refund requests

    def _refund_requests(self) -> None:
        requests = list(
            RefundRequest.objects.filter(
                outcome=RefundRequest.Outcome.UNKNOWN,
                payment__created_at__gte=self.report.since,
                payment__created_at__lt=self.report.until,
            )
            .select_related("payment")
            .order_by("payment_id", "id")
        )
        resolve = getattr(services, "resolve_refund_requests", None)
        for _, group in itertools.groupby(requests, key=lambda request: request.payment_id):
            unresolved = list(group)
            payment = unresolved[0].payment
            total = sum(request.amount for request in unresolved)
            count = len(unresolved)
            entry = _entry(
                UNRESOLVED_REFUND,
                payment.ledgepay_id,
                f"{count} refund request{pluralize(count)} of "
                f"{format_amount(total, payment.currency)} in all whose outcome is unknown.",
                repairable=resolve is not None,
                requests=count,
                amount=total,
                currency=payment.currency,
            )
            # In the report first: when LedgePay cannot be reached, it stays there, unrepaired.
            self.report.drift.append(entry)
            if self.apply and resolve is not None:
                resolve(payment)
                entry["repaired"] = not payment.refund_requests.filter(
                    outcome=RefundRequest.Outcome.UNKNOWN
                ).exists()


def _entry(
    kind: str, payment: str | None, detail: str, *, repairable: bool, **values: Any
) -> dict[str, Any]:
    return {
        "kind": kind,
        "payment": payment,
        "detail": detail,
        "repairable": repairable,
        "repaired": False,
        **values,
    }


def _second(moment: datetime.datetime) -> datetime.datetime:
    if timezone.is_naive(moment):
        moment = timezone.make_aware(moment, datetime.timezone.utc)
    return moment.astimezone(datetime.timezone.utc).replace(microsecond=0)


def describe(entries: Iterable[Mapping[str, Any]]) -> Iterable[str]:
    """One line per drift entry, for a person reading the command's output."""
    for entry in entries:
        state = ""
        if entry["repaired"]:
            state = " [repaired]"
        elif not entry["repairable"]:
            state = " [not repairable]"
        yield f"{entry['kind']:<17} {entry['payment'] or '-':<24} {entry['detail']}{state}"
