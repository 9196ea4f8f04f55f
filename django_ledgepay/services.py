"""What a project calls to take payments and refunds; views, admin and commands use it too.

Every change to the local mirror goes through :func:`apply_payment`, :func:`apply_refund` or
the bulk path of :func:`sync_payments`. They lock the row, apply LedgePay's answer by the
status rules (a final status never changes again) and send each signal once, after commit.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import IntegrityError, transaction
from django.db.models import Sum
from django.db.models.functions import Coalesce
from django.dispatch import Signal
from django.template.defaultfilters import pluralize
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from django_ledgepay import reactions
from django_ledgepay.client import (
    BACKOFF_CAP,
    MAX_PAGE_SIZE,
    RATE_LIMIT_WAIT_CAP,
    LedgePayClient,
)
from django_ledgepay.conf import conf
from django_ledgepay.currencies import format_amount, is_currency
from django_ledgepay.exceptions import (
    APIError,
    AuthenticationError,
    InvalidRequestError,
    LedgePayError,
    NotFoundError,
    RefundError,
    RefundsChangedError,
    RefundUnresolvedError,
)
from django_ledgepay.models import (
    Payment,
    PaymentRequest,
    Refund,
    RefundRequest,
    Transition,
    WebhookEvent,
)

logger = logging.getLogger(__name__)

MAX_URL_LENGTH: Final = 2048
MAX_IDEMPOTENCY_KEY_LENGTH: Final = 255
#: The largest amount a BigIntegerField holds.
MAX_AMOUNT: Final = 2**63 - 1

#: The transition (and signal) each final status of a payment or a refund records.
PAYMENT_TRANSITIONS: Final[Mapping[str, str]] = {
    Payment.Status.SUCCEEDED: Transition.Signal.PAYMENT_SUCCEEDED,
    Payment.Status.FAILED: Transition.Signal.PAYMENT_FAILED,
    Payment.Status.CANCELED: Transition.Signal.PAYMENT_CANCELED,
}
REFUND_TRANSITIONS: Final[Mapping[str, str]] = {
    Refund.Status.SUCCEEDED: Transition.Signal.REFUND_SUCCEEDED,
    Refund.Status.FAILED: Transition.Signal.REFUND_FAILED,
}
#: The signals of the payments' final statuses, as the module once named them.
PAYMENT_SIGNALS: Final[Mapping[str, Signal]] = {
    status: reactions.SIGNALS[name][0] for status, name in PAYMENT_TRANSITIONS.items()
}


class IncompleteDataError(APIError):
    """LedgePay's data lacks what is needed to record an object seen for the first time."""


def get_client() -> LedgePayClient:
    return LedgePayClient()


# Creating payments


def create_payment(
    *,
    amount: int,
    currency: str,
    success_url: str,
    cancel_url: str,
    description: str = "",
    customer: Mapping[str, str] | None = None,
    metadata: Mapping[str, Any] | None = None,
    idempotency_key: str | None = None,
) -> Payment:
    """Create a payment at LedgePay and record it; then redirect to ``payment.checkout_url``.

    The arguments are checked before any call; a bad one raises InvalidRequestError with its
    name in ``param``. Pass an ``idempotency_key`` tied to the order (``f"order-{order.pk}"``)
    so that a repeated call returns the same payment instead of charging twice.
    """
    currency = currency.upper() if isinstance(currency, str) else currency
    params: dict[str, Any] = {
        "amount": _check_amount(amount),
        "currency": _check_currency(currency),
        "description": _check_str(description, "description"),
        "success_url": _check_url(success_url, "success_url"),
        "cancel_url": _check_url(cancel_url, "cancel_url"),
    }
    if customer is not None:
        params["customer"] = _check_customer(customer)
    if metadata is not None:
        params["metadata"] = _check_metadata(metadata)
    if idempotency_key is not None:
        _check_idempotency_key(idempotency_key)
        data = get_client().create_payment(params, idempotency_key=idempotency_key)
        # The answer may hold only a few fields: what was sent fills in the rest.
        payment, _ = apply_payment(data, known=params, verified=True)
        return payment

    request = _payment_request(params)
    try:
        data = get_client().create_payment(params, idempotency_key=request.idempotency_key)
    except (InvalidRequestError, AuthenticationError, NotFoundError) as err:
        _resolve_payment_request(request, PaymentRequest.Outcome.REFUSED, error=str(err))
        raise
    except LedgePayError as err:
        # No answer: LedgePay may have made it. The same call again sends the same key.
        PaymentRequest.objects.filter(pk=request.pk).update(error=str(err))
        raise
    payment, _ = apply_payment(data, known=params, verified=True)
    _resolve_payment_request(request, PaymentRequest.Outcome.MADE, payment=payment)
    return payment


#: How long a payment request whose answer was lost is sent again by a call with the same
#: arguments (LedgePay keeps idempotency keys at least this long).
PAYMENT_REQUEST_WINDOW: Final = datetime.timedelta(hours=24)


def _payment_request(params: Mapping[str, Any]) -> PaymentRequest:
    """The request to send: an unknown one with the same arguments, from a call whose
    answer was lost within the window, or a new one with a new key, recorded first."""
    fingerprint = hashlib.sha256(
        json.dumps(params, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()
    since = timezone.now() - PAYMENT_REQUEST_WINDOW
    unknown = (
        PaymentRequest.objects.filter(
            fingerprint=fingerprint,
            outcome=PaymentRequest.Outcome.UNKNOWN,
            created_at__gte=since,
        )
        .order_by("-pk")
        .first()
    )
    if unknown is not None:
        return unknown
    return PaymentRequest.objects.create(
        fingerprint=fingerprint, idempotency_key=f"payment-{uuid.uuid4().hex}"
    )


def _resolve_payment_request(
    request: PaymentRequest, outcome: str, *, payment: Payment | None = None, error: str = ""
) -> None:
    PaymentRequest.objects.filter(pk=request.pk).update(
        outcome=outcome, payment=payment, error=error, resolved_at=timezone.now()
    )


def _check_idempotency_key(key: object) -> str:
    """A key LedgePay can take in a header: 1 to 255 printable ASCII characters."""
    if (
        not isinstance(key, str)
        or not 0 < len(key) <= MAX_IDEMPOTENCY_KEY_LENGTH
        or not (key.isascii() and key.isprintable())
    ):
        raise InvalidRequestError(
            f"idempotency_key must be 1 to {MAX_IDEMPOTENCY_KEY_LENGTH} printable ASCII "
            "characters.",
            param="idempotency_key",
        )
    return key


def _check_amount(amount: object) -> int:
    if not isinstance(amount, int) or isinstance(amount, bool) or not 0 < amount <= MAX_AMOUNT:
        raise InvalidRequestError(
            f"amount must be a positive integer of minor units (cents), not {amount!r}.",
            param="amount",
        )
    return amount


def _check_currency(currency: object) -> str:
    if not is_currency(currency):
        raise InvalidRequestError(
            f"currency must be an ISO 4217 code such as 'EUR', not {currency!r}.",
            param="currency",
        )
    assert isinstance(currency, str)
    return currency


def _check_str(value: object, param: str) -> str:
    if not isinstance(value, str):
        raise InvalidRequestError(f"{param} must be a string.", param=param)
    return value


def _check_url(url: object, param: str) -> str:
    """An absolute http(s) URL. Any host name passes (``http://web:8000/`` in a container,
    ``http://testserver/`` in tests); whitespace and control characters do not."""
    if (
        not isinstance(url, str)
        or len(url) > MAX_URL_LENGTH
        or not url.isprintable()
        or any(char.isspace() for char in url)
    ):
        raise InvalidRequestError(f"{param} must be an absolute http(s) URL.", param=param)
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises ValueError for a port that is not a number)
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in {"http", "https"} or not parts.hostname:
        raise InvalidRequestError(
            f"{param} must be an absolute http(s) URL, not {url!r}.", param=param
        )
    return url


def _check_customer(customer: object) -> dict[str, str]:
    if not isinstance(customer, Mapping) or set(customer) - {"email", "name"}:
        raise InvalidRequestError(
            "customer must be a mapping with the keys 'email' and 'name'.", param="customer"
        )
    checked = {key: _check_str(value, f"customer.{key}") for key, value in customer.items()}
    for key, field in (("email", "customer_email"), ("name", "customer_name")):
        limit = getattr(Payment._meta.get_field(field), "max_length", None)
        if limit is not None and len(checked.get(key, "")) > limit:
            raise InvalidRequestError(
                f"customer.{key} is longer than {limit} characters.", param=f"customer.{key}"
            )
    if checked.get("email"):
        try:
            validate_email(checked["email"])
        except ValidationError as err:
            raise InvalidRequestError(
                "customer.email is not an email address.", param="customer.email"
            ) from err
    return checked


def _check_metadata(metadata: object) -> dict[str, Any]:
    if not isinstance(metadata, Mapping) or not all(isinstance(key, str) for key in metadata):
        raise InvalidRequestError("metadata must be a mapping with string keys.", param="metadata")
    try:
        json.dumps(metadata, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise InvalidRequestError(
            "metadata must be JSON-serializable, without NaN or infinity.", param="metadata"
        ) from err
    return dict(metadata)


# Applying LedgePay's data to the mirror


def payment_values(data: Mapping[str, Any]) -> dict[str, Any]:
    """The model fields a LedgePay payment object carries, skipping absent or ill-typed ones.

    A field that is missing, null or blank is left out, so a partial answer never blanks
    what the mirror already knows.
    """
    values = _money_values(data)
    if data.get("status") in Payment.Status.values:
        values["status"] = data["status"]
    for field in ("description", "checkout_url", "success_url", "cancel_url"):
        if isinstance(data.get(field), str) and data[field]:
            values[field] = data[field]
    customer = data.get("customer")
    if isinstance(customer, Mapping):
        for key, field in (("email", "customer_email"), ("name", "customer_name")):
            if isinstance(customer.get(key), str) and customer[key]:
                values[field] = customer[key]
    if isinstance(data.get("metadata"), Mapping) and data["metadata"]:
        values["metadata"] = dict(data["metadata"])
    for field in ("created_at", "completed_at"):
        moment = _datetime(data.get(field))
        if moment is not None:
            values[field] = moment
    return _fitting(Payment, values)


def refund_values(data: Mapping[str, Any]) -> dict[str, Any]:
    """The model fields a LedgePay refund object carries, as :func:`payment_values` does."""
    values = _money_values(data)
    if data.get("status") in Refund.Status.values:
        values["status"] = data["status"]
    if data.get("reason") in Refund.Reason.values:
        values["reason"] = data["reason"]
    moment = _datetime(data.get("created_at"))
    if moment is not None:
        values["created_at"] = moment
    return _fitting(Refund, values)


def _fitting(model: type[Payment] | type[Refund], values: dict[str, Any]) -> dict[str, Any]:
    """``values`` without the strings longer than their column: a database error would
    otherwise turn one odd answer into a sync that fails or a webhook retried forever."""
    for field, value in list(values.items()):
        limit = getattr(model._meta.get_field(field), "max_length", None)
        if isinstance(value, str) and limit is not None and len(value) > limit:
            logger.warning("Skipped LedgePay's %s: longer than %d characters.", field, limit)
            del values[field]
    return values


def _object_id(data: Mapping[str, Any], kind: str) -> str:
    ledgepay_id = data.get("id")
    if not isinstance(ledgepay_id, str) or not ledgepay_id:
        raise IncompleteDataError(f"LedgePay's {kind} has no id.")
    return ledgepay_id


def _money_values(data: Mapping[str, Any]) -> dict[str, Any]:
    """``amount`` (a positive int of minor units) and ``currency``, where well-typed."""
    values: dict[str, Any] = {}
    amount = data.get("amount")
    if isinstance(amount, int) and not isinstance(amount, bool) and 0 < amount <= MAX_AMOUNT:
        values["amount"] = amount
    currency = data.get("currency")
    if isinstance(currency, str) and len(currency) == 3:
        values["currency"] = currency.upper()
    return values


def _datetime(value: object) -> datetime.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        moment = parse_datetime(value)
    except ValueError:
        return None
    if moment is None:
        return None
    if timezone.is_naive(moment):
        moment = timezone.make_aware(moment, datetime.timezone.utc)
    try:
        moment = moment.astimezone(datetime.timezone.utc)
    except OverflowError:  # Year 1 or 9999 pushed out of range by its offset.
        return None
    # The first and last years are refused too: a database or a driver working in another
    # zone could not read them back. No real LedgePay time is near either.
    return moment if datetime.MINYEAR < moment.year < datetime.MAXYEAR else None


def _merge(instance: Payment | Refund, values: Mapping[str, Any]) -> list[str]:
    """Copy ``values`` onto ``instance`` by the status rules; return the fields that changed.

    A status changes only from pending to a final status. News that contradicts a final
    status is logged and applied not at all, not even its other fields: it is not trusted.
    """
    status = values.get("status")
    if instance.is_final and status is not None and status != instance.status:
        # "Pending" after a final status is older news overtaken (an API answer read before
        # the webhook that settled it was applied): expected, so not a warning. Another
        # final status is a contradiction someone should look at.
        stale = status == "pending"
        logger.log(
            logging.INFO if stale else logging.WARNING,
            "LedgePay says %s is %s, but it is already %s; nothing changed.",
            instance.ledgepay_id,
            status,
            instance.status,
        )
        return []
    changed = []
    for field, value in values.items():
        current = getattr(instance, field)
        if current == value:
            continue
        if field in FIXED_FACTS:
            # Recorded once, never changed: what says otherwise is wrong (see
            # contradictions(), which callers check first to ask LedgePay instead).
            logger.error(
                "LedgePay's data says %s's %s is %r, but it was recorded as %r and never "
                "changes; kept %r.",
                instance.ledgepay_id,
                field,
                value,
                current,
                current,
            )
            continue
        if field == "status":
            if value == "pending":
                continue
            if isinstance(instance, Payment) and "completed_at" not in values:
                instance.completed_at = instance.completed_at or timezone.now()
                changed.append("completed_at")
        setattr(instance, field, value)
        changed.append(field)
    return changed


#: The fields of a payment or a refund that never change once recorded.
FIXED_FACTS: Final = frozenset({"amount", "currency"})


def contradictions(instance: Payment | Refund, values: Mapping[str, Any]) -> dict[str, Any]:
    """The fixed facts (amount, currency) ``values`` holds that differ from ``instance``'s,
    as ``{field: (recorded, said)}``."""
    return {
        field: (getattr(instance, field), values[field])
        for field in sorted(FIXED_FACTS)
        if field in values and values[field] != getattr(instance, field)
    }


def describe_contradictions(instance: Payment | Refund, found: Mapping[str, Any]) -> str:
    kind = type(instance).__name__.lower()
    said = ", ".join(f"{field} {new!r} (recorded: {old!r})" for field, (old, new) in found.items())
    return f"The event contradicted the {kind} {instance.ledgepay_id}'s fixed facts: {said}."


def _note(event: WebhookEvent | None, note: str) -> None:
    """Keep ``note`` on the event (outside the caller's transaction's fate: an UPDATE of
    its own row, so a later failure of the caller still leaves the note)."""
    logger.error("%s", note)
    if event is not None and event.pk is not None:
        WebhookEvent.objects.filter(pk=event.pk).update(note=note)
        event.note = note


class _Contradicted(Exception):
    def __init__(self, payment: Payment, found: dict[str, Any]) -> None:
        self.payment, self.found = payment, found


def _payment_signal(payment: Payment, event: WebhookEvent | None) -> None:
    name = PAYMENT_TRANSITIONS.get(payment.status)
    if name is not None:
        reactions.record(name, payment=payment, event=event)


def _refund_signals(refund: Refund, event: WebhookEvent | None, *, created: bool) -> None:
    if created:
        reactions.record(
            Transition.Signal.REFUND_CREATED, payment=refund.payment, refund=refund, event=event
        )
    name = REFUND_TRANSITIONS.get(refund.status)
    if name is not None:
        reactions.record(name, payment=refund.payment, refund=refund, event=event)


def apply_payment(
    data: Mapping[str, Any],
    *,
    status: str | None = None,
    event: WebhookEvent | None = None,
    known: Mapping[str, Any] | None = None,
    verified: bool = False,
) -> tuple[Payment, bool]:
    """Apply a LedgePay payment object to the mirror; return the payment and whether it changed.

    A payment's amount and currency never change once recorded. ``data`` that contradicts
    them is not applied: the payment is fetched from LedgePay and its answer applied
    instead (the event keeps a note), unless ``verified`` says ``data`` is such an answer
    already; then the contradicting facts are left out and logged.

    ``status`` overrides the object's own (a webhook's type says what happened). ``known``
    is another payment object (what was sent, or fetched) whose fields fill in those that
    ``data`` lacks or holds ill-typed. The row is locked while it is compared, so concurrent
    callers apply each change once and its signal fires once. A payment seen for the first
    time is created when the data holds its amount and currency; otherwise
    IncompleteDataError is raised (fetch it with :func:`sync_payment`).
    """
    ledgepay_id = _object_id(data, "payment")
    said = payment_values(data)
    values = dict(said)
    if known is not None:
        values = {**payment_values(known), **values}
    if status is not None:
        values["status"] = status
    try:
        return _apply_payment(ledgepay_id, values, said, event=event, verified=verified)
    except _Contradicted as contradicted:
        # Not applied as it stands: LedgePay is asked, and its answer applied.
        _note(event, describe_contradictions(contradicted.payment, contradicted.found))
    remote = get_client().retrieve_payment(ledgepay_id)
    return apply_payment({**remote, "id": ledgepay_id}, event=event, verified=True)


def _apply_payment(
    ledgepay_id: str,
    values: dict[str, Any],
    said: Mapping[str, Any],
    *,
    event: WebhookEvent | None,
    verified: bool,
) -> tuple[Payment, bool]:
    with transaction.atomic():
        try:
            payment = Payment.objects.select_for_update().get(ledgepay_id=ledgepay_id)
        except Payment.DoesNotExist:
            created = _create_payment(ledgepay_id, values, event)
            if created is not None:
                return created, True
            payment = Payment.objects.select_for_update().get(ledgepay_id=ledgepay_id)
        found = contradictions(payment, said)
        if found and not verified:
            raise _Contradicted(payment, found)
        was_final = payment.is_final
        changed = _merge(payment, values)
        if changed:
            payment.save(update_fields=[*changed, "updated_at"])
            if not was_final and payment.is_final:
                _payment_signal(payment, event)
    return payment, bool(changed)


def apply_payment_event(
    data: Mapping[str, Any], *, status: str, event: WebhookEvent | None = None
) -> tuple[Payment, bool]:
    """Apply a webhook's news that a payment reached the final ``status``.

    The common case, a known pending payment, costs one SELECT and one conditional UPDATE
    and no transaction of its own: ``WHERE status = 'pending'`` lets exactly one of several
    concurrent deliveries win, and only the winner sends the signal, with nothing between
    the UPDATE and the signal that could fail. A payment already final costs the SELECT
    alone. A payment never seen takes the general path of :func:`apply_payment`; when the
    event does not say enough to record it, it is fetched from LedgePay first (which may
    raise LedgePayError).
    """
    ledgepay_id = _object_id(data, "payment")
    said = payment_values(data)
    payment = None
    if status in PAYMENT_TRANSITIONS:
        payment = Payment.objects.filter(ledgepay_id=ledgepay_id).first()
    if payment is not None and not payment.is_final and not contradictions(payment, said):
        now = timezone.now()
        values = {**said, "status": status, "updated_at": now}
        for field in FIXED_FACTS:
            values.pop(field, None)
        values.setdefault("completed_at", now)
        with transaction.atomic():
            moved = Payment.objects.filter(pk=payment.pk, status=Payment.Status.PENDING).update(
                **values
            )
            if moved:
                for field, value in values.items():
                    setattr(payment, field, value)
                _payment_signal(payment, event)
                return payment, True
        payment.refresh_from_db()  # Another caller moved it first.
    if payment is not None and payment.is_final and not contradictions(payment, said):
        return payment, False
    try:
        return apply_payment(data, status=status, event=event)
    except IncompleteDataError:
        pass
    remote = get_client().retrieve_payment(ledgepay_id)
    return apply_payment(data, status=status, event=event, known=remote)


def _create_payment(
    ledgepay_id: str, values: dict[str, Any], event: WebhookEvent | None
) -> Payment | None:
    """Insert a payment seen for the first time; None when another caller inserted it first."""
    if "amount" not in values or "currency" not in values:
        raise IncompleteDataError(
            f"LedgePay's data for the new payment {ledgepay_id} lacks its amount or currency."
        )
    try:
        with transaction.atomic():
            payment = Payment.objects.create(ledgepay_id=ledgepay_id, **_new_payment(values))
    except IntegrityError:
        if not Payment.objects.filter(ledgepay_id=ledgepay_id).exists():
            raise
        return None
    _payment_signal(payment, event)
    return payment


def _new_payment(values: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of a payment first seen: one already final was completed by now at the
    latest. ``values`` is left as it is, for a retry that finds the row after all."""
    if values.get("status", "pending") == "pending" or "completed_at" in values:
        return dict(values)
    return {**values, "completed_at": timezone.now()}


def apply_refund(
    data: Mapping[str, Any],
    *,
    status: str | None = None,
    event: WebhookEvent | None = None,
    payment: Payment | None = None,
    known: Mapping[str, Any] | None = None,
) -> tuple[Refund, bool]:
    """Apply a LedgePay refund object to the mirror; return the refund and whether it changed.

    ``known`` fills in what ``data`` lacks or holds ill-typed, as for :func:`apply_payment`.

    A refund seen for the first time is created under the lock of its payment (fetched from
    LedgePay first if the mirror lacks it) and sends ``refund_created``, then
    ``refund_succeeded`` or ``refund_failed`` if it is already final.
    """
    ledgepay_id = _object_id(data, "refund")
    said = refund_values(data)
    values = dict(said)
    if known is not None:
        values = {**refund_values(known), **values}
    if status is not None:
        values["status"] = status
    payment_id = payment.ledgepay_id if payment is not None else data.get("payment_id")
    if payment is None and not Refund.objects.filter(ledgepay_id=ledgepay_id).exists():
        if not isinstance(payment_id, str) or not payment_id:
            raise IncompleteDataError(f"LedgePay's refund {ledgepay_id} names no payment.")
        if not Payment.objects.filter(ledgepay_id=payment_id).exists():
            sync_payment(payment_id)  # Outside the transaction: no lock held over HTTP.
    with transaction.atomic():
        # A known refund's payment is locked before the refund, in the order refund_payment()
        # takes them: the transition written below checks its key to the payment at commit
        # (a KEY SHARE lock), which after the refund's lock was the opposite order, and two
        # such transactions could deadlock.
        list(
            Payment.objects.select_for_update(no_key=True)
            .filter(pk__in=Refund.objects.filter(ledgepay_id=ledgepay_id).values("payment_id"))
            .values_list("pk", flat=True)
        )
        refund = _locked_refund(ledgepay_id)
        if refund is None:
            # Lock the payment first, as refund_payment does, then look again.
            locked_payment = Payment.objects.select_for_update().get(ledgepay_id=payment_id)
            refund = _locked_refund(ledgepay_id)
            if refund is None:
                created = _create_refund(locked_payment, ledgepay_id, values, event)
                if created is not None:
                    return created, True
                # Inserted meanwhile by a caller the lock did not hold back (SQLite).
                refund = _locked_refund(ledgepay_id)
                assert refund is not None
            # Otherwise inserted by a caller that held the lock first: merge into it below.
        found = contradictions(refund, said)
        named = data.get("payment_id")
        if isinstance(named, str) and named and named != refund.payment.ledgepay_id:
            found["payment"] = (refund.payment.ledgepay_id, named)
        if found:
            # LedgePay has no endpoint to fetch a refund by: what contradicts the facts is
            # left out and noted; the rest applies by the status rules.
            _note(event, describe_contradictions(refund, found))
        was_final = refund.is_final
        changed = _merge(refund, values)
        if changed:
            refund.save(update_fields=[*changed, "updated_at"])
            if not was_final and refund.is_final:
                _refund_signals(refund, event, created=False)
    return refund, bool(changed)


def _locked_refund(ledgepay_id: str) -> Refund | None:
    # Locks the refund's row only: locking its payment's row too (the join) would take the
    # two locks in the opposite order to the callers that lock the payment first.
    return (
        Refund.objects.select_for_update(of=("self",))
        .select_related("payment")
        .filter(ledgepay_id=ledgepay_id)
        .first()
    )


def _create_refund(
    payment: Payment, ledgepay_id: str, values: dict[str, Any], event: WebhookEvent | None
) -> Refund | None:
    """Insert a refund seen for the first time; None when another caller inserted it first."""
    if "amount" not in values:
        raise IncompleteDataError(f"LedgePay's data for the refund {ledgepay_id} has no amount.")
    values.setdefault("currency", payment.currency)
    try:
        with transaction.atomic():
            refund = Refund.objects.create(payment=payment, ledgepay_id=ledgepay_id, **values)
    except IntegrityError:
        if not Refund.objects.filter(ledgepay_id=ledgepay_id).exists():
            raise
        return None
    # The payment's row is written too, under its lock: under REPEATABLE READ or SERIALIZABLE
    # a refund_payment() waiting for that lock then fails to serialize, instead of reading
    # a snapshot without this refund and refunding again.
    Payment.objects.filter(pk=payment.pk).update(updated_at=timezone.now())
    _refund_signals(refund, event, created=True)
    return refund


# Syncing


def sync_payment(payment_or_ledgepay_id: Payment | str) -> Payment:
    """Fetch one payment from LedgePay and apply it to the mirror."""
    ledgepay_id = _ledgepay_id(payment_or_ledgepay_id)
    data = get_client().retrieve_payment(ledgepay_id)
    with reactions.origin(Transition.Source.SYNC):
        payment, _ = apply_payment({**data, "id": data.get("id") or ledgepay_id}, verified=True)
    return payment


ONE_SECOND: Final = datetime.timedelta(seconds=1)


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
        second, status, listed = _api_time(self.second, "second"), self.status, self.listed
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
    with reactions.origin(Transition.Source.SYNC):
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
    after = _api_time(created_after, "created_after")
    before = _api_time(created_before, "created_before")
    client = get_client()
    seen: dict[str, datetime.datetime | None] = {}
    split: set[datetime.datetime] = set()
    while True:
        items, has_more = client.list_payments(
            limit=MAX_PAGE_SIZE, status=status, created_after=after, created_before=before
        )
        fresh = _fresh(items, seen)
        oldest = min(filter(None, map(_created_second, items)), default=None)
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
        current = _datetime(before) if before else None
        if current is None or next_before < current:
            yield PaymentPage(fresh, next_before)
        elif fresh:
            yield PaymentPage(fresh)
            continue  # Same window again: the payments already seen are dropped.
        elif any(_created_second(item) != oldest for item in items):
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
        before = _api_time(next_before, "created_before")
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
    bracket_after = _api_time(second - ONE_SECOND, "created_after")
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
                created_before=_api_time(before, "created_before"),
            )
            moments = [_created_second(item) for item in items]
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
        ledgepay_id = _item_id(item)
        if ledgepay_id in seen:
            continue
        if ledgepay_id:
            seen[ledgepay_id] = _created_second(item)
        fresh.append(item)
    return fresh


def _created_second(item: Mapping[str, Any]) -> datetime.datetime | None:
    moment = _datetime(item.get("created_at"))
    return moment.replace(microsecond=0) if moment is not None else None


def _item_id(item: Mapping[str, Any]) -> str:
    value = item.get("id")
    return value if isinstance(value, str) else ""


def iso_z(moment: datetime.datetime) -> str:
    """``moment`` in UTC as LedgePay writes times, ``2024-01-15T10:32:15Z`` (the year in four
    digits, which strftime's ``%Y`` does not give before the year 1000 on glibc)."""
    utc = moment.astimezone(datetime.timezone.utc).replace(microsecond=0, tzinfo=None)
    return f"{utc.isoformat()}Z"


def _api_time(value: datetime.datetime | str | None, param: str) -> str | None:
    if value is None:
        return None
    moment = _datetime(value) if isinstance(value, str) else value
    if not isinstance(moment, datetime.datetime):
        raise InvalidRequestError(f"{param} must be a datetime or ISO 8601 string.", param=param)
    if timezone.is_naive(moment):
        moment = timezone.make_aware(moment, datetime.timezone.utc)
    try:
        return iso_z(moment)
    except OverflowError as err:
        raise InvalidRequestError(f"{param} is out of range.", param=param) from err


def _apply_payment_page(items: Iterable[Mapping[str, Any]], result: SyncResult) -> None:
    """Write one page in a constant number of queries: one locking read, one insert, one
    update, whatever the page holds."""
    values_by_id: dict[str, dict[str, Any]] = {}
    for item in items:
        ledgepay_id = _item_id(item)
        if ledgepay_id:
            values_by_id[ledgepay_id] = payment_values(item)
        else:
            result.skipped += 1
    if not values_by_id:
        return
    for attempt in range(2):
        try:
            with reactions.origin(Transition.Source.SYNC):
                counts = _write_payment_page(values_by_id)
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


def _write_payment_page(values_by_id: Mapping[str, dict[str, Any]]) -> tuple[int, int, int, int]:
    with transaction.atomic():
        existing = {
            payment.ledgepay_id: payment
            for payment in Payment.objects.select_for_update().filter(
                ledgepay_id__in=list(values_by_id)
            )
        }
        new: list[Payment] = []
        changed: list[Payment] = []
        fields: set[str] = set()
        finished: list[Payment] = []
        skipped = unchanged = 0
        for ledgepay_id, values in values_by_id.items():
            payment = existing.get(ledgepay_id)
            if payment is None:
                if "amount" not in values or "currency" not in values:
                    logger.warning("Skipped payment %s: no amount or currency.", ledgepay_id)
                    skipped += 1
                    continue
                payment = Payment(ledgepay_id=ledgepay_id, **_new_payment(values))
                new.append(payment)
                if payment.is_final:
                    finished.append(payment)
                continue
            was_final = payment.is_final
            changed_fields = _merge(payment, values)
            if not changed_fields:
                unchanged += 1
                continue
            changed.append(payment)
            fields.update(changed_fields)
            if not was_final and payment.is_final:
                finished.append(payment)
        if new:
            Payment.objects.bulk_create(new)
        if changed:
            now = timezone.now()
            for payment in changed:
                payment.updated_at = now
            Payment.objects.bulk_update(changed, sorted(fields | {"updated_at"}))
        reactions.record_many(
            [
                reactions.new_transition(PAYMENT_TRANSITIONS[payment.status], payment=payment)
                for payment in finished
            ]
        )
    return len(new), len(changed), unchanged, skipped


# Refunding


def refund_payment(
    payment_or_ledgepay_id: Payment | str,
    *,
    amount: int | None = None,
    reason: str = Refund.Reason.CUSTOMER_REQUEST,
    idempotency_key: str | None = None,
    expected_refunded: int | None = None,
) -> Refund:
    """Refund ``amount`` minor units of a succeeded payment, or all that is left when None.

    The request is recorded (:class:`~django_ledgepay.models.RefundRequest`) with its
    idempotency key before LedgePay is called. A call that ends without an answer leaves
    it unknown; the next refund of the payment first sends it again with its own key, and a
    call for the same amount (or again for the rest) returns the refund it made instead of
    making a second one, whatever webhooks arrived in between. So retrying a call that
    failed is safe without a key of your own. While LedgePay stays unreachable, that next
    call raises RefundUnresolvedError and sends nothing new.

    The payment's row is locked while the refundable amount is checked, so two clicks
    cannot refund twice: the second waits, then sees less left (a request still in flight
    counts as refunded). A refund that cannot be made raises RefundError before any call.
    Pass ``idempotency_key`` to tie the refund to a request of yours (``f"return-{rma.pk}"``):
    a repeated call with it never refunds twice.

    ``expected_refunded`` is what the caller saw refunded already (a form's hidden field):
    when the payment's refunds add up to something else, under the lock, RefundError is
    raised and nothing is refunded, so a form submitted twice refunds once.
    """
    if idempotency_key is not None:
        _check_idempotency_key(idempotency_key)
    if reason not in Refund.Reason.values:
        raise RefundError(f"reason must be one of {', '.join(Refund.Reason.values)}.")
    if amount is not None and (not isinstance(amount, int) or isinstance(amount, bool)):
        raise RefundError("amount must be an integer of minor units, or None for the rest.")
    if isinstance(payment_or_ledgepay_id, str) and not (
        Payment.objects.filter(ledgepay_id=payment_or_ledgepay_id).exists()
    ):
        sync_payment(payment_or_ledgepay_id)
    where = reactions.current_origin()
    deadline = time.monotonic() + IN_FLIGHT_WAIT
    while True:
        try:
            return _refund_once(
                payment_or_ledgepay_id,
                amount=amount,
                reason=reason,
                idempotency_key=idempotency_key,
                expected_refunded=expected_refunded,
                where=where,
            )
        except _InFlight as err:
            # The same refund is being sent by another call (a second click): wait for it,
            # then look again, as a second click waiting for a row lock would.
            if time.monotonic() >= deadline:
                raise err.error from None
            time.sleep(IN_FLIGHT_POLL)


#: How long a refund waits for the same refund, being sent by another call, to finish.
IN_FLIGHT_WAIT: Final = 30.0
IN_FLIGHT_POLL: Final = 0.05


class _InFlight(Exception):
    def __init__(self, error: RefundUnresolvedError) -> None:
        self.error = error


def _refund_once(
    payment_or_ledgepay_id: Payment | str,
    *,
    amount: int | None,
    reason: str,
    idempotency_key: str | None,
    expected_refunded: int | None,
    where: reactions.Origin,
) -> Refund:
    refused: RefundError | _InFlight | None = None
    with transaction.atomic():
        try:
            payment = _locked_payment(payment_or_ledgepay_id)
            # What an earlier call left unknown is settled before anything new is asked.
            _resolve_unknown(payment, amount=amount, reason=reason)
            if idempotency_key is None:
                # A request whose caller never got its answer, resolved now or by another call
                # since (a refund of the same payment, resolve_refund_requests, a reconcile):
                # a keyless call for the same refund is that caller's retry.
                for request in payment.refund_requests.filter(
                    outcome=RefundRequest.Outcome.MADE, answered=False, reason=reason
                ).order_by("pk"):
                    if _asks_for(request, amount, reason):
                        return _answer_request(request)
            else:
                earlier = RefundRequest.objects.filter(idempotency_key=idempotency_key).first()
                if earlier is not None and earlier.refund is not None:
                    return _answer_request(earlier)  # The same request, made already.
            request = _new_refund_request(
                payment,
                amount=amount,
                reason=reason,
                idempotency_key=idempotency_key,
                expected_refunded=expected_refunded,
                where=where,
            )
        except (RefundError, _InFlight) as err:
            # Refused before anything new was written: what was settled above (an earlier
            # request resolved, an attempt recorded) is committed all the same, or the next
            # call would find it unknown again and be refused again.
            refused = err
    if refused is not None:
        raise refused
    # The request is committed before the call, marked as being sent: if this process
    # dies during the call, the next refund of the payment resolves it once the mark is
    # older than any call can take.
    try:
        outcome = _send_refund_request(request, payment, answered=True)
    except BaseException:
        # Anything else (the database failing while the answer is recorded): no longer
        # being sent, so the next call resolves it at once instead of after the lease.
        RefundRequest.objects.filter(pk=request.pk, outcome=RefundRequest.Outcome.UNKNOWN).update(
            sending_since=None
        )
        raise
    if isinstance(outcome, LedgePayError):
        raise outcome  # Refused (the request is recorded so), or no answer (it stays unknown).
    return outcome


def resolve_refund_requests(payment_or_ledgepay_id: Payment | str) -> list[RefundRequest]:
    """Send each unknown refund request of the payment again with its own key and record
    what LedgePay answers; return them. RefundUnresolvedError while LedgePay cannot be
    reached (the requests stay unknown)."""
    with transaction.atomic():
        payment = _locked_payment(payment_or_ledgepay_id)
        return _resolve_unknown(payment)


def _answer_request(request: RefundRequest) -> Refund:
    """The refund ``request`` made, recorded as handed to a caller."""
    assert request.refund is not None
    if not request.answered:
        RefundRequest.objects.filter(pk=request.pk).update(answered=True)
        request.answered = True
    return request.refund


def _asks_for(request: RefundRequest, amount: int | None, reason: str) -> bool:
    """Whether a call for ``amount`` (None: the rest) and ``reason`` asks what ``request``
    asked: the same amount, or the rest again."""
    if request.reason != reason:
        return False
    return request.whole if amount is None else request.amount == amount and not request.whole


def sending_lease() -> datetime.timedelta:
    """The longest one refund call can take, its retries and waits included: a request
    marked as being sent for longer than this was left by a process that died."""
    attempts = conf.LEDGEPAY_MAX_RETRIES + 1
    per_attempt = 2 * conf.LEDGEPAY_TIMEOUT + max(BACKOFF_CAP, RATE_LIMIT_WAIT_CAP)
    return datetime.timedelta(seconds=attempts * per_attempt + 30)


def _resolve_unknown(
    payment: Payment, *, amount: int | None = None, reason: str | None = None
) -> list[RefundRequest]:
    """Send the payment's unknown refund requests again (under the payment's lock) and
    return those resolved now. A request another call is sending is left to it, unless it
    is what this call asks again (same amount and reason): then RefundUnresolvedError."""
    abandoned = timezone.now() - sending_lease()
    unknown = RefundRequest.objects.filter(
        payment=payment, outcome=RefundRequest.Outcome.UNKNOWN
    ).order_by("pk")
    resolved = []
    for request in unknown:
        if request.sending_since is not None and request.sending_since > abandoned:
            if reason is not None and _asks_for(request, amount, reason):
                raise _InFlight(
                    RefundUnresolvedError(
                        f"A refund of {format_amount(request.amount, payment.currency)} of "
                        f"payment {payment.ledgepay_id} is being sent right now; wait for "
                        "it and load the payment again. Nothing new was sent."
                    )
                )
            continue  # In flight elsewhere; its amount is held back from what is left.
        outcome = _send_refund_request(request, payment)
        if isinstance(outcome, LedgePayError) and request.outcome == RefundRequest.Outcome.UNKNOWN:
            raise RefundUnresolvedError(
                f"A refund of payment {payment.ledgepay_id} "
                f"({format_amount(request.amount, payment.currency)}) is being resolved: "
                f"LedgePay gave no answer it could use ({outcome}). Nothing new was sent; try "
                "again once LedgePay can be reached.",
                http_status=outcome.http_status,
            ) from outcome
        resolved.append(request)
    return resolved


def _new_refund_request(
    payment: Payment,
    *,
    amount: int | None,
    reason: str,
    idempotency_key: str | None,
    expected_refunded: int | None,
    where: reactions.Origin,
) -> RefundRequest:
    """Check the refund under the payment's lock and record its request."""
    if payment.status != Payment.Status.SUCCEEDED:
        raise RefundError(f"Payment {payment.ledgepay_id} is {payment.status}, not succeeded.")
    refunded = payment.amount_refunded
    if expected_refunded is not None and refunded != expected_refunded:
        raise RefundsChangedError(
            f"The refunds of payment {payment.ledgepay_id} changed: {refunded} refunded "
            f"now, {expected_refunded} expected (minor units). Check and try again.",
            expected=expected_refunded,
            refunded=refunded,
        )
    in_flight = RefundRequest.objects.filter(
        payment=payment, outcome=RefundRequest.Outcome.UNKNOWN
    ).aggregate(total=Coalesce(Sum("amount"), 0))["total"]
    refundable = max(0, payment.amount - refunded - in_flight)
    if refundable == 0:
        if in_flight:
            raise RefundError(
                f"Payment {payment.ledgepay_id} has a refund in progress for all that is "
                "left; wait for it and load the payment again."
            )
        raise RefundError(f"Payment {payment.ledgepay_id} is already refunded in full.")
    whole = amount is None
    if amount is None:
        amount = refundable
    if not 1 <= amount <= refundable:
        raise RefundError(
            f"The refund must be between 1 and {refundable} (minor units), not {amount}."
        )
    key = idempotency_key or f"refund-{payment.ledgepay_id}-{uuid.uuid4().hex}"
    if len(key) > MAX_IDEMPOTENCY_KEY_LENGTH:
        key = f"refund-{uuid.uuid4().hex}"
    request, created = RefundRequest.objects.get_or_create(
        idempotency_key=key,
        defaults={
            "payment": payment,
            "amount": amount,
            "whole": whole,
            "reason": reason,
            "source": where.source,
            "actor": where.actor,
            "sending_since": timezone.now(),
        },
    )
    if not created:
        request.sending_since = timezone.now()
        request.save(update_fields=["sending_since"])
    # The payment's row is written under its lock: under REPEATABLE READ or SERIALIZABLE a
    # refund waiting for that lock then fails to serialize, instead of reading a snapshot
    # without this request and asking again.
    Payment.objects.filter(pk=payment.pk).update(updated_at=timezone.now())
    return request


def _send_refund_request(
    request: RefundRequest, payment: Payment, *, answered: bool = False
) -> Refund | LedgePayError:
    """Send ``request`` with its key and record what came of it: the refund LedgePay made
    (``answered`` when its own caller gets it now); or the error, with the request refused
    (a 4xx: the same request would be refused again) or still unknown (no answer, a 5xx,
    the rate limit: LedgePay may have acted or not). Each record is its own transaction
    when called outside one."""
    params = {
        "payment_id": payment.ledgepay_id,
        "amount": request.amount,
        "reason": request.reason,
    }
    try:
        data = get_client().create_refund(params, idempotency_key=request.idempotency_key)
        if not isinstance(data.get("id"), str) or not data["id"]:
            raise APIError("LedgePay's answer to the refund has no id.")
        _check_refund_answer(data, params, payment.currency)
    except (InvalidRequestError, NotFoundError) as err:
        _record_attempt(
            request, outcome=RefundRequest.Outcome.REFUSED, error=str(err), resolved=True
        )
        return err
    except LedgePayError as err:
        # Unknown still, and no longer being sent: the next call resolves it at once.
        _record_attempt(request, error=str(err))
        return err
    sent = {"amount": request.amount, "currency": payment.currency, "reason": request.reason}
    with transaction.atomic():
        locked = Payment.objects.select_for_update().get(pk=payment.pk)
        refund, _ = apply_refund(data, payment=locked, known=sent)
        # A resend by another call leaves the refund for the caller's retry to collect.
        _record_attempt(
            request,
            outcome=RefundRequest.Outcome.MADE,
            refund=refund,
            answered=answered,
            error="",
            resolved=True,
        )
    return refund


def _check_refund_answer(data: Mapping[str, Any], asked: Mapping[str, Any], currency: str) -> None:
    """APIError when LedgePay's answer names another payment, amount or currency than the
    request: it is not recorded as the refund made (that would put a refund of another
    amount, or of another payment, in the mirror); the request stays unknown, shown in the
    admin, and is sent again with its key by the next refund of the payment."""
    expected = {**asked, "currency": currency}
    said = refund_values(data)  # Ill-typed values are left out: what was sent fills them.
    if isinstance(data.get("payment_id"), str):
        said["payment_id"] = data["payment_id"]
    wrong = [
        f"{name} {said[name]!r} instead of {expected[name]!r}"
        for name in ("payment_id", "amount", "currency")
        if name in said and said[name] != expected[name]
    ]
    if wrong:
        message = f"LedgePay's answer to the refund ({data['id']}) says {', '.join(wrong)}."
        logger.error("%s Not recorded; the refund request stays unresolved.", message)
        raise APIError(message)


def _record_attempt(request: RefundRequest, *, resolved: bool = False, **fields: Any) -> None:
    """Save one sending of ``request``, no longer being sent, with ``fields``."""
    for name, value in fields.items():
        setattr(request, name, value)
    request.attempts += 1
    request.sending_since = None
    if resolved:
        request.resolved_at = timezone.now()
    names = [*fields, "attempts", "sending_since", *(["resolved_at"] if resolved else [])]
    request.save(update_fields=names)


def _ledgepay_id(payment_or_ledgepay_id: Payment | str) -> str:
    if isinstance(payment_or_ledgepay_id, Payment):
        return payment_or_ledgepay_id.ledgepay_id
    return payment_or_ledgepay_id


def _locked_payment(payment_or_ledgepay_id: Payment | str) -> Payment:
    payments = Payment.objects.select_for_update()
    try:
        if isinstance(payment_or_ledgepay_id, Payment):
            return payments.get(pk=payment_or_ledgepay_id.pk)
        return payments.get(ledgepay_id=payment_or_ledgepay_id)
    except Payment.DoesNotExist as err:
        raise RefundError(f"There is no payment {payment_or_ledgepay_id}.") from err
