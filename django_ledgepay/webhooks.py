"""Webhooks: reading, recording and applying deliveries.

The signature scheme is :mod:`django_ledgepay.signatures` (its names are re-exported here,
where 0.2 defined them).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from collections.abc import Mapping
from typing import Any, Final

from django.db import IntegrityError, connection, transaction
from django.db.models import F
from django.utils import timezone

from django_ledgepay.exceptions import LedgePayError, WebhookPayloadError
from django_ledgepay.mirror.orm import RefusedNews, apply_payment_event, apply_refund, note_event
from django_ledgepay.mirror.rules import PAYMENT_EVENTS, REFUND_EVENTS, event_outcome
from django_ledgepay.models import MAX_AMOUNT, Payment, WebhookEvent
from django_ledgepay.signatures import (
    SIGNATURE_HEADER,
    compute_signature,
    parse_signature_header,
    signature_header,
    verify_signature,
)

__all__ = [
    "MAX_AMOUNT",
    "PAYMENT_EVENTS",
    "REFUND_EVENTS",
    "SIGNATURE_HEADER",
    "compute_signature",
    "parse_signature_header",
    "signature_header",
    "verify_signature",
]

logger = logging.getLogger(__name__)

# Reading, recording and applying deliveries

#: Fields of a known event's ``data`` and the JSON types they must have when not null.
FIELD_TYPES: Final[Mapping[str, tuple[type, ...]]] = {
    "id": (str,),
    "payment_id": (str,),
    "amount": (int,),
    "currency": (str,),
    "status": (str,),
    "description": (str,),
    "metadata": (dict,),
    "customer": (dict,),
    "reason": (str,),
    "created_at": (str,),
    "completed_at": (str,),
    "checkout_url": (str,),
    "success_url": (str,),
    "cancel_url": (str,),
}
#: The longest strings the mirror's columns hold: each field of an event's data, with the
#: model field it is kept in (whose ``max_length`` is the one place the limit is written).
MAX_LENGTHS: Final[Mapping[str, int]] = {
    name: getattr(Payment._meta.get_field(column), "max_length", 0)
    for name, column in {
        "id": "ledgepay_id",
        "payment_id": "ledgepay_id",
        "checkout_url": "checkout_url",
        "success_url": "success_url",
        "cancel_url": "cancel_url",
        "customer.email": "customer_email",
        "customer.name": "customer_name",
    }.items()
}
#: How much of an unreadable body is kept in the log.
RAW_BODY_CHARS: Final = 10_000
#: What no database column can hold: NUL (PostgreSQL) and unpaired surrogates (not UTF-8).
_UNSTORABLE: Final = re.compile(r"[\x00\ud800-\udfff]")


def parse_event(body: bytes) -> dict[str, Any]:
    """The event in ``body``, or WebhookPayloadError saying what is wrong with it."""
    return validate_event(decode_body(body))


def decode_body(body: bytes) -> Any:
    """The JSON value in ``body``; WebhookPayloadError unless it is UTF-8 JSON a database
    can store (finite numbers, no NUL character, no unpaired surrogate)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as err:
        raise WebhookPayloadError("The body is not UTF-8.") from err
    try:
        value = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except (ValueError, RecursionError) as err:
        raise WebhookPayloadError("The body is not JSON.") from err
    # Only an escape sequence can put NUL or a surrogate in a decoded string.
    if "\\u" in text and not _storable(value):
        raise WebhookPayloadError("The body holds a NUL character or an unpaired surrogate.")
    return value


def validate_event(payload: Any) -> dict[str, Any]:
    """``payload`` if it is an event this app can apply (or ignore, for an unknown type).

    An event is a JSON object with a string ``event`` and an object ``data``. For the known
    types, ``data`` has a string ``id`` (and ``payment_id`` for refunds), and each field this
    app reads has its JSON type and fits its column when present. Otherwise this raises
    WebhookPayloadError.
    """
    if not isinstance(payload, dict):
        raise WebhookPayloadError("The body is not a JSON object.")
    event_type, data = payload.get("event"), payload.get("data")
    if not isinstance(event_type, str) or not event_type:
        raise WebhookPayloadError("The body has no string 'event'.")
    if not isinstance(data, dict):
        raise WebhookPayloadError("The body has no object 'data'.")
    if event_type in PAYMENT_EVENTS or event_type in REFUND_EVENTS:
        _check_data(data, refund=event_type in REFUND_EVENTS)
    return payload


def _check_data(data: Mapping[str, Any], *, refund: bool) -> None:
    for name in ("id", "payment_id") if refund else ("id",):
        if not isinstance(data.get(name), str) or not data[name]:
            raise WebhookPayloadError(f"The event's data has no string {name!r}.")
    fields: dict[str, Any] = {name: data.get(name) for name in FIELD_TYPES}
    for name, value in fields.items():
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, FIELD_TYPES[name])
        ):
            raise WebhookPayloadError(f"The event's data has a mistyped {name!r}.")
    customer = fields["customer"] or {}
    for key in ("email", "name"):
        value = customer.get(key)
        if value is not None and not isinstance(value, str):
            raise WebhookPayloadError(f"The event's data has a mistyped 'customer.{key}'.")
        fields[f"customer.{key}"] = value
    for name, limit in MAX_LENGTHS.items():
        if isinstance(fields[name], str) and len(fields[name]) > limit:
            raise WebhookPayloadError(f"The event's data has a {name!r} over {limit} characters.")
    for name in ("id", "payment_id"):
        if fields[name] in {".", ".."} or "/" in (fields[name] or ""):
            raise WebhookPayloadError(f"The event's data has an invalid {name!r}.")
    amount = fields["amount"]
    if amount is not None and not 0 < amount <= MAX_AMOUNT:
        raise WebhookPayloadError(
            "The event's data has an 'amount' that is not a positive 64-bit integer."
        )


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON.")


def _finite_float(text: str) -> float:
    number = float(text)
    if math.isinf(number):
        raise ValueError(f"{text} is out of range.")
    return number


def _storable(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if _UNSTORABLE.search(item):
                return False
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return True


def record_event(body: bytes) -> tuple[WebhookEvent, bool, WebhookPayloadError | None]:
    """Store a delivery whose signature passed, before anything is applied.

    Returns the event, whether it is new (False for a redelivery of the same body: the
    stored event is returned), and why the body cannot be applied, if it cannot. Such a
    body is stored too, as ``ignored`` with that reason: its JSON object when it is one,
    else ``{"raw": <the text, cut at 10,000 characters>}``.
    """
    digest = hashlib.sha256(body).hexdigest()
    invalid: WebhookPayloadError | None = None
    decoded: Any = None
    try:
        decoded = decode_body(body)
        validate_event(decoded)
    except WebhookPayloadError as err:
        invalid = err
    if isinstance(decoded, dict):
        payload: dict[str, Any] = decoded
    else:
        raw = body.decode("utf-8", "replace").replace("\x00", "\ufffd")
        payload = {"raw": raw[:RAW_BODY_CHARS]}
    event_type, data = payload.get("event"), payload.get("data")
    object_id = data.get("id") if isinstance(data, dict) else None
    event = WebhookEvent(
        event_type=event_type[:100] if isinstance(event_type, str) else "",
        object_id=object_id[:255] if isinstance(object_id, str) else "",
        payload=payload,
        body_sha256=digest,
        status=WebhookEvent.Status.IGNORED if invalid else WebhookEvent.Status.RECEIVED,
        error=invalid.message if invalid else "",
    )
    try:
        if connection.in_atomic_block:
            # A savepoint keeps a duplicate's IntegrityError from spoiling the caller's
            # transaction. In the view's autocommit the INSERT alone suffices.
            with transaction.atomic():
                event.save(force_insert=True)
        else:
            event.save(force_insert=True)
    except IntegrityError:
        stored = WebhookEvent.objects.filter(body_sha256=digest).first()
        if stored is None:
            raise
        return stored, False, invalid
    return event, True, invalid


def process_event(event: WebhookEvent) -> None:
    """Apply a stored event and record the outcome on it; never raises for the event's sake.

    Afterwards ``event.status`` is ``processed``; ``ignored`` (an unknown type, a body that
    is not an event, or news that contradicts a final status), with the reason in
    ``error``; or ``failed``, with the error (LedgePay could not be reached to fetch an
    object never seen, say). Safe to call again, and from several processes at once: a
    change is applied and signalled once. A failure does not overwrite the outcome of a
    concurrent call that succeeded.
    """
    try:
        if connection.in_atomic_block:
            # A savepoint, so a failure leaves the caller's transaction usable.
            with transaction.atomic():
                status, note = _apply(event)
        else:
            status, note = _apply(event)
    except LedgePayError as err:
        status, note = WebhookEvent.Status.FAILED, str(err)
        logger.warning(
            "Webhook event %s (%s) failed: %s",
            event.pk,
            event.event_type,
            note,
            extra={"ledgepay_event": event.pk},
        )
    except Exception as err:
        status, note = WebhookEvent.Status.FAILED, f"{type(err).__name__}: {err}"
        logger.exception(
            "Webhook event %s (%s) failed",
            event.pk,
            event.event_type,
            extra={"ledgepay_event": event.pk},
        )
    processed_at = None if status == WebhookEvent.Status.FAILED else timezone.now()
    rows = WebhookEvent.objects.filter(pk=event.pk)
    if status == WebhookEvent.Status.FAILED:
        rows = rows.exclude(
            status__in=[WebhookEvent.Status.PROCESSED, WebhookEvent.Status.IGNORED]
        )
    # A contradiction noted while applying (services keep it on event.note) is written
    # with the outcome too: a failure after it rolled back the services' own UPDATE.
    noted = {"note": event.note} if event.note else {}
    if rows.update(
        status=status,
        error=note,
        processed_at=processed_at,
        attempts=F("attempts") + 1,
        **noted,
    ):
        event.status, event.error, event.processed_at = status, note, processed_at
        event.attempts += 1
    else:
        event.refresh_from_db()


def _apply(event: WebhookEvent) -> tuple[str, str]:
    """Apply ``event``; return its outcome (a status) and a note. Raises what services raise."""
    payload = event.payload
    if isinstance(payload, dict) and set(payload) == {"raw"}:
        return WebhookEvent.Status.IGNORED, event.error or "The body is not an event."
    try:
        payload = validate_event(payload)
    except WebhookPayloadError as err:
        return WebhookEvent.Status.IGNORED, err.message
    event_type: str = payload["event"]
    data: dict[str, Any] = payload["data"]
    if event_type in PAYMENT_EVENTS:
        announced = PAYMENT_EVENTS[event_type]
        payment, _ = apply_payment_event(data, status=announced, event=event)
        return event_outcome(payment.status, announced, "payment")
    if event_type in REFUND_EVENTS:
        announced_refund = REFUND_EVENTS[event_type]
        try:
            refund, _ = apply_refund(data, status=announced_refund, event=event)
        except RefusedNews as refused:
            # News that cannot be true: kept, with the reason, and answered 200.
            note_event(event, refused.note)
            return WebhookEvent.Status.IGNORED, refused.note
        return event_outcome(refund.status, announced_refund, "refund")
    return WebhookEvent.Status.IGNORED, f"Unknown event type {event_type[:100]!r}: kept, ignored."
