"""Erasing a customer's personal data from the mirror, keeping what the books need.

:func:`erase_personal_data` erases, by e-mail address or by payment, the customer's e-mail
address and name (:data:`~django_ledgepay.mirror.rules.PERSONAL_FACTS`) from their payments,
and the same data wherever the app stored it:

- the stored webhook deliveries about those payments and their refunds: ``data.customer``
  blanked, and every occurrence of the address or a name in the payload, the note and the
  error replaced by ``[erased]``; by e-mail address, any other delivery holding the address
  too. Their ``body_sha256`` (the hash of the body as received, which could confirm a guess)
  is replaced by a random one;
- the payment requests that made those payments (the ``fingerprint``, a hash of the call's
  arguments, is blanked) and their refund requests (their errors);
- the errors kept on their transitions and on their receivers' records.

Ids, amounts, currencies, statuses and dates stay, so reports, statements and
reconciliation still add up. Each payment is marked ``erased_at``: the rulebook then keeps
its personal data blank whatever a later sync or webhook says, and a webhook about it is
stored without them. Each run is recorded as an :class:`~django_ledgepay.models.Erasure`:
when, by what, the payments' ids and how many rows changed; never the data.

The description and metadata are what the shop sent: they are kept (put no personal data in
them). LedgePay's own copy is LedgePay's to erase.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from typing import Any, Final

from django.db import models, transaction
from django.db.models import Q, TextField
from django.db.models.functions import Cast
from django.template.defaultfilters import pluralize
from django.utils import timezone

from django_ledgepay.mirror.orm import unlinked_digest
from django_ledgepay.mirror.rules import ERASED_AT, PERSONAL_FACTS, blank_customer
from django_ledgepay.models import (
    Erasure,
    Payment,
    PaymentRequest,
    Reaction,
    Refund,
    RefundRequest,
    Transition,
    WebhookEvent,
)

#: What an erased piece of text is replaced by.
ERASED: Final = "[erased]"
#: The kinds of rows an erasure changes, as its record counts them.
KINDS: Final = (
    "payments",
    "webhook_events",
    "payment_requests",
    "refund_requests",
    "transitions",
    "reactions",
)
#: How many of the payments' ids a report's sentence names.
NAMED: Final = 20
CHUNK_SIZE: Final = 500


class NoSuchPaymentError(LookupError):
    """The payment to erase is not in the mirror."""


@dataclasses.dataclass
class ErasureReport:
    """What :func:`erase_personal_data` changed, or would change (``dry_run``)."""

    criterion: str
    dry_run: bool
    #: The LedgePay ids of the payments whose personal data was erased.
    payments: list[str] = dataclasses.field(default_factory=list)
    counts: dict[str, int] = dataclasses.field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    #: The record of the erasure (None for a dry run).
    erasure: Erasure | None = None

    @property
    def lines(self) -> list[str]:
        """What changed, for a person: a sentence per kind of row, never the data."""
        verb = "Would erase" if self.dry_run else "Erased"
        count = len(self.payments)
        named = ", ".join(self.payments[:NAMED])
        if count > NAMED:
            named += f" and {count - NAMED} more"
        facts = " and ".join(PERSONAL_FACTS)
        lines = [
            f"{verb} {facts} of {count} payment{pluralize(count)}"
            + (f": {named}." if count else ".")
        ]
        counts = self.counts
        lines.append(
            f"{verb} the same data in {counts['webhook_events']} webhook "
            f"event{pluralize(counts['webhook_events'])}, {counts['payment_requests']} payment "
            f"request{pluralize(counts['payment_requests'])}, {counts['refund_requests']} "
            f"refund request{pluralize(counts['refund_requests'])}, {counts['transitions']} "
            f"transition{pluralize(counts['transitions'])} and {counts['reactions']} "
            f"receivers' record{pluralize(counts['reactions'])}."
        )
        if self.erasure is not None:
            lines.append(
                f"Recorded as erasure {self.erasure.pk}: when, by what, the payments' ids and "
                "these counts; not the data."
            )
        elif self.dry_run:
            lines.append("Dry run: nothing was changed or recorded.")
        return lines


def erase_personal_data(
    *,
    email: str | None = None,
    payment: Payment | str | None = None,
    dry_run: bool = False,
    reference: str = "",
    source: str = Erasure.Source.API,
) -> ErasureReport:
    """Erase the personal data of the customer with ``email`` (every payment with that
    address, compared without regard to case), or of the one ``payment`` (a Payment or its
    LedgePay id); one of the two. ``dry_run``: count what would change, change nothing.

    ``reference`` (a ticket number, say; never personal data) and ``source`` are recorded
    with the erasure. Raises NoSuchPaymentError for a payment the mirror does not hold, and
    ValueError unless exactly one of ``email`` and ``payment`` is given.
    """
    if (email is None) == (payment is None):
        raise ValueError("Give either email or payment.")
    if email is not None and not email.strip():
        raise ValueError("The e-mail address is empty.")
    criterion = Erasure.Criterion.EMAIL if email is not None else Erasure.Criterion.PAYMENT
    report = ErasureReport(criterion, dry_run)
    with transaction.atomic():
        if email is not None:
            address = email.strip()
            chosen = Payment.objects.filter(customer_email__iexact=address)
        else:
            address = None
            ledgepay_id = payment.ledgepay_id if isinstance(payment, Payment) else payment
            chosen = Payment.objects.filter(ledgepay_id=ledgepay_id)
        # Locked, as the mirror's writers lock a payment: none of them decides on it
        # meanwhile with what is being erased.
        found = list(chosen.select_for_update().order_by("pk"))
        if address is None and not found:
            raise NoSuchPaymentError(f"No payment {ledgepay_id} in the mirror.")
        pattern = _pattern(_personal_values(found, address))
        _erase(report, found, pattern, address)
        if dry_run:
            transaction.set_rollback(True)
        else:
            report.erasure = Erasure.objects.create(
                criterion=criterion,
                source=source,
                reference=reference,
                payments=report.payments,
                counts=report.counts,
            )
    return report


def _personal_values(payments: Iterable[Payment], email: str | None) -> set[str]:
    values = {email} if email else set()
    for payment in payments:
        values.update(
            value for name in PERSONAL_FACTS if (value := getattr(payment, name).strip())
        )
    return values


def _pattern(values: Iterable[str]) -> re.Pattern[str] | None:
    """Each value as a whole word (not inside a longer one), regardless of case; the
    longest first, so that an address is replaced whole before a name within it."""
    ordered = sorted(set(values), key=lambda value: (-len(value), value))
    if not ordered:
        return None
    alternatives = "|".join(re.escape(value) for value in ordered)
    return re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE)


def erase_text(text: str, pattern: re.Pattern[str] | None) -> str:
    """``text`` with every value of ``pattern`` replaced by :data:`ERASED`."""
    return pattern.sub(ERASED, text) if pattern is not None and text else text


def erase_json(value: Any, pattern: re.Pattern[str] | None) -> Any:
    """``value`` (decoded JSON) with every string's values of ``pattern`` replaced."""
    if pattern is None:
        return value
    if isinstance(value, str):
        return erase_text(value, pattern)
    if isinstance(value, list):
        return [erase_json(item, pattern) for item in value]
    if isinstance(value, dict):
        return {key: erase_json(item, pattern) for key, item in value.items()}
    return value


def _erase(
    report: ErasureReport,
    payments: list[Payment],
    pattern: re.Pattern[str] | None,
    email: str | None,
) -> None:
    now = timezone.now()
    counts = report.counts
    ids = [payment.pk for payment in payments]
    report.payments = [payment.ledgepay_id for payment in payments]
    blank = dict.fromkeys(PERSONAL_FACTS, "")
    counts["payments"] = len(payments)
    Payment.objects.filter(pk__in=ids).update(updated_at=now, **blank)
    Payment.objects.filter(pk__in=ids, **{f"{ERASED_AT}__isnull": True}).update(**{ERASED_AT: now})
    counts["webhook_events"] = _erase_events(payments, pattern, email)
    requests = PaymentRequest.objects.filter(payment_id__in=ids)
    counts["payment_requests"] = _erase_rows(requests, pattern, fingerprint="")
    counts["refund_requests"] = _erase_rows(
        RefundRequest.objects.filter(payment_id__in=ids), pattern
    )
    counts["transitions"] = _erase_rows(Transition.objects.filter(payment_id__in=ids), pattern)
    counts["reactions"] = _erase_rows(
        Reaction.objects.filter(transition__payment_id__in=ids), pattern
    )


def _erase_events(
    payments: list[Payment], pattern: re.Pattern[str] | None, email: str | None
) -> int:
    """Blank the stored deliveries about ``payments`` (and, by ``email``, any holding it)."""
    ledgepay_ids = [payment.ledgepay_id for payment in payments]
    refund_ids = list(
        Refund.objects.filter(payment__in=payments).values_list("ledgepay_id", flat=True)
    )
    about = Q(object_id__in=[*ledgepay_ids, *refund_ids]) | Q(
        payload__data__payment_id__in=ledgepay_ids
    )
    events = WebhookEvent.objects.all()
    if email:
        events = events.annotate(payload_text=Cast("payload", TextField()))
        holding = (
            Q(payload_text__icontains=email) | Q(note__icontains=email) | Q(error__icontains=email)
        )
        events = events.filter(about | holding) if ledgepay_ids else events.filter(holding)
    elif ledgepay_ids:
        events = events.filter(about)
    else:
        return 0
    related = set(ledgepay_ids) | set(refund_ids)
    changed = 0
    for event in events.only("pk", "object_id", "payload", "note", "error").iterator(
        chunk_size=CHUNK_SIZE
    ):
        payload = erase_json(event.payload, pattern)
        if event.object_id in related:
            payload = blank_customer(payload)
        fields = {
            "payload": payload,
            "note": erase_text(event.note, pattern),
            "error": erase_text(event.error, pattern),
        }
        if fields == {"payload": event.payload, "note": event.note, "error": event.error}:
            continue
        WebhookEvent.objects.filter(pk=event.pk).update(body_sha256=unlinked_digest(), **fields)
        changed += 1
    return changed


def _erase_rows(rows: models.QuerySet[Any], pattern: re.Pattern[str] | None, **blank: str) -> int:
    """Replace the values of ``pattern`` in each row's ``error``, and set ``blank``'s fields
    to their values; return how many rows changed."""
    changed = 0
    for row in rows.only("pk", "error", *blank).iterator(chunk_size=CHUNK_SIZE):
        fields = {"error": erase_text(row.error, pattern), **blank}
        if all(getattr(row, name) == value for name, value in fields.items()):
            continue
        type(row).objects.filter(pk=row.pk).update(**fields)
        changed += 1
    return changed
