"""Webhooks: the signature scheme, and reading, recording and applying deliveries.

``LedgePay-Signature: t=<unix seconds>,v1=<hex>[,v1=<hex>...]`` where each ``v1`` is the
lower-case hex HMAC-SHA256 of ``f"{t}.".encode() + body`` keyed with a signing secret.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any, Final

from django.db import IntegrityError, connection, transaction
from django.db.models import F
from django.utils import timezone
from django.utils.crypto import constant_time_compare

from django_ledgepay import services
from django_ledgepay.exceptions import LedgePayError, WebhookPayloadError, WebhookSignatureError
from django_ledgepay.models import WebhookEvent

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "LedgePay-Signature"


def compute_signature(body: bytes, secret: str, timestamp: int) -> str:
    """The hex ``v1`` value for ``body`` signed at ``timestamp`` with ``secret``."""
    message = f"{timestamp}.".encode() + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def signature_header(
    body: bytes, secrets: str | Iterable[str], timestamp: int | None = None
) -> str:
    """A complete header value, with one ``v1`` entry per secret (as during a rotation)."""
    if timestamp is None:
        timestamp = int(time.time())
    if isinstance(secrets, str):
        secrets = [secrets]
    entries = [f"t={timestamp}"]
    entries += [f"v1={compute_signature(body, secret, timestamp)}" for secret in secrets]
    return ",".join(entries)


def parse_signature_header(header: str) -> tuple[int, list[str]]:
    """Split a header into its timestamp and its ``v1`` signatures."""
    timestamp: int | None = None
    signatures: list[str] = []
    for item in header.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep:
            continue
        if key == "t":
            if not value.isascii() or not value.isdigit():
                raise WebhookSignatureError("The signature's timestamp is not a number.")
            timestamp = int(value)
        elif key == "v1" and value:
            signatures.append(value)
    if timestamp is None:
        raise WebhookSignatureError("The signature header has no timestamp.")
    if not signatures:
        raise WebhookSignatureError("The signature header has no v1 signature.")
    return timestamp, signatures


def verify_signature(
    body: bytes,
    header: str | None,
    secrets: Iterable[str],
    *,
    tolerance: int = 300,
    now: float | None = None,
) -> int:
    """Check ``header`` against ``body``; return its timestamp or raise WebhookSignatureError.

    Any ``v1`` entry that matches any secret passes. Each comparison takes constant time.
    """
    secrets = [secret for secret in secrets if secret]
    if not secrets:
        raise WebhookSignatureError("No webhook secret is configured (LEDGEPAY_WEBHOOK_SECRET).")
    if not header:
        raise WebhookSignatureError(f"The {SIGNATURE_HEADER} header is missing.")
    timestamp, signatures = parse_signature_header(header)
    if now is None:
        now = time.time()
    if abs(now - timestamp) > tolerance:
        raise WebhookSignatureError("The signature's timestamp is outside the tolerance.")
    matched = False
    for secret in secrets:
        expected = compute_signature(body, secret, timestamp)
        for signature in signatures:
            # No early exit: the time taken does not depend on which entry matched.
            matched |= constant_time_compare(expected, signature)
    if not matched:
        raise WebhookSignatureError("No signature matches a configured secret.")
    return timestamp


# Reading, recording and applying deliveries

#: What each known event does: the model and the status it announces (None: from the data).
PAYMENT_EVENTS: Final[Mapping[str, str]] = {
    "payment.succeeded": "succeeded",
    "payment.failed": "failed",
    "payment.canceled": "canceled",
}
REFUND_EVENTS: Final[Mapping[str, str | None]] = {
    "refund.created": None,
    "refund.succeeded": "succeeded",
    "refund.failed": "failed",
}
#: Fields of a known event's ``data`` and the JSON types they must have when present.
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
    "checkout_url": (str,),
}
RAW_BODY_CHARS: Final = 10_000


def parse_event(body: bytes) -> dict[str, Any]:
    """The event in ``body``, or WebhookPayloadError saying what is wrong with it."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as err:
        raise WebhookPayloadError("The body is not UTF-8.") from err
    try:
        payload = json.loads(text, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as err:
        raise WebhookPayloadError("The body is not JSON.") from err
    if not isinstance(payload, dict):
        raise WebhookPayloadError("The body is not a JSON object.")
    event_type, data = payload.get("event"), payload.get("data")
    if not isinstance(event_type, str) or not event_type:
        raise WebhookPayloadError("The body has no string 'event'.")
    if not isinstance(data, dict):
        raise WebhookPayloadError("The body has no object 'data'.")
    if "\\u0000" in text:
        # PostgreSQL cannot store NUL in JSON text.
        raise WebhookPayloadError("The body holds a NUL character.")
    if event_type in PAYMENT_EVENTS or event_type in REFUND_EVENTS:
        if not isinstance(data.get("id"), str) or not data["id"]:
            raise WebhookPayloadError("The event's data has no string 'id'.")
        if event_type in REFUND_EVENTS and not isinstance(data.get("payment_id"), str):
            raise WebhookPayloadError("The refund event's data has no string 'payment_id'.")
        for name, types in FIELD_TYPES.items():
            value = data.get(name)
            if value is not None and (not isinstance(value, types) or isinstance(value, bool)):
                raise WebhookPayloadError(f"The event's data has a mistyped {name!r}.")
    return payload


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON.")


def record_event(body: bytes) -> tuple[WebhookEvent, bool, WebhookPayloadError | None]:
    """Store a delivery whose signature passed, before anything is applied.

    Returns the event, whether it is new (False for a redelivery of the same body), and
    the reason the body cannot be applied, if any. A body that cannot be read is kept too,
    as ``ignored`` with its error, so nothing signed is lost.
    """
    digest = hashlib.sha256(body).hexdigest()
    invalid: WebhookPayloadError | None = None
    try:
        payload = parse_event(body)
    except WebhookPayloadError as err:
        invalid = err
        raw = body.decode("utf-8", "replace").replace("\x00", "\ufffd")[:RAW_BODY_CHARS]
        payload = {"raw": raw}
    data = payload.get("data")
    object_id = data.get("id") if isinstance(data, dict) else None
    event = WebhookEvent(
        event_type=str(payload.get("event", ""))[:100],
        object_id=object_id[:255] if isinstance(object_id, str) else "",
        payload=payload,
        body_sha256=digest,
        status=WebhookEvent.Status.IGNORED if invalid else WebhookEvent.Status.RECEIVED,
        error=str(invalid or ""),
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
        return WebhookEvent.objects.get(body_sha256=digest), False, invalid
    return event, True, invalid


def process_event(event: WebhookEvent) -> None:
    """Apply a stored event and record the outcome on it; never raises for the event's sake.

    Afterwards ``event.status`` is ``processed``, ``ignored`` (an unknown type, or news that
    contradicts a final status) or ``failed`` (with ``error``: LedgePay could not be reached
    to fetch an unknown object, say). A failed event can be processed again.
    """
    try:
        status, note = _apply(event)
    except LedgePayError as err:
        status, note = WebhookEvent.Status.FAILED, str(err)
        logger.warning("Webhook event %s (%s) failed: %s", event.pk, event.event_type, note)
    except Exception as err:
        status, note = WebhookEvent.Status.FAILED, f"{type(err).__name__}: {err}"
        logger.exception("Webhook event %s (%s) failed", event.pk, event.event_type)
    processed_at = None if status == WebhookEvent.Status.FAILED else timezone.now()
    WebhookEvent.objects.filter(pk=event.pk).update(
        status=status, error=note, processed_at=processed_at, attempts=F("attempts") + 1
    )
    event.status, event.error, event.processed_at = status, note, processed_at
    event.attempts += 1


def _apply(event: WebhookEvent) -> tuple[str, str]:
    payload = event.payload
    event_type = event.event_type
    if not isinstance(payload, dict) or not isinstance(payload.get("data"), dict):
        return WebhookEvent.Status.IGNORED, "The body is not an event."
    data = payload["data"]
    if event_type in PAYMENT_EVENTS:
        announced = PAYMENT_EVENTS[event_type]
        payment, _ = services.apply_payment_event(data, status=announced, event=event)
        if payment.status != announced:
            return WebhookEvent.Status.IGNORED, f"The payment is already {payment.status}."
        return WebhookEvent.Status.PROCESSED, ""
    if event_type in REFUND_EVENTS:
        announced_refund = REFUND_EVENTS[event_type]
        refund, _ = services.apply_refund(data, status=announced_refund, event=event)
        if announced_refund is not None and refund.status != announced_refund:
            return WebhookEvent.Status.IGNORED, f"The refund is already {refund.status}."
        return WebhookEvent.Status.PROCESSED, ""
    return WebhookEvent.Status.IGNORED, f"Unknown event type {event_type!r}: kept, not applied."
