"""The one entry point of a verified webhook delivery: stored, applied, answered.

:func:`receive` is one fixed sequence, whatever the delivery:

1. In task mode (``LEDGEPAY_WEBHOOK_PROCESSING = "task"``), the delivery is stored and the
   task :func:`process_event` enqueued; the answer is 200 at once.
2. Otherwise, where the database allows, the SQL statements of
   :mod:`django_ledgepay.mirror.sql` settle it (a sale, a redelivery, and most other cases).
3. What they leave is stored and applied on the general path (:mod:`django_ledgepay.webhooks`).

Its error contract: a body that is not a readable event is kept as ignored and answered
400; a valid event that could not be applied for a passing reason is kept as failed and
answered 503, so LedgePay delivers it again; a database that fails before anything is
stored is answered 503 too. Nothing valid is ever lost.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

from django.db import OperationalError, connection

from django_ledgepay import task_backend, telemetry, webhooks
from django_ledgepay.conf import WEBHOOK_PROCESSING_TASK, conf
from django_ledgepay.exceptions import WebhookPayloadError
from django_ledgepay.mirror import sql
from django_ledgepay.mirror.sql_parts import Settlement
from django_ledgepay.mirror.values import parse_time
from django_ledgepay.models import WebhookEvent

logger = logging.getLogger("django_ledgepay.views")

KEPT_FOR_REDELIVERY = "The event could not be applied now; it is kept for redelivery."


@dataclass(frozen=True)
class Receipt:
    """The answer to a delivery: its HTTP status and a short detail."""

    status_code: int
    detail: str
    #: For the metrics: the event's type, and the outcome (empty: not counted here, as a
    #: delivery stored for a task, counted once the task applies it).
    event_type: str = ""
    outcome: str = ""


@task_backend.task()  # type: ignore[untyped-decorator,unused-ignore]
def process_event(event_id: int) -> None:
    """Apply the stored webhook event ``event_id``, unless it was applied already."""
    event = WebhookEvent.objects.filter(pk=event_id).first()
    if event is not None and not event.is_processed:
        webhooks.process_event(event)
        _measure(_answer_for(event))


def receive(body: bytes, *, signed_at: float | None = None) -> Receipt:
    """Store and apply a delivery whose signature passed (signed at ``signed_at``)."""
    receipt = _receive(body, signed_at)
    _measure(receipt)
    return receipt


def _measure(receipt: Receipt) -> None:
    if receipt.outcome:
        telemetry.webhook_delivery(receipt.event_type, receipt.outcome)


def _receive(body: bytes, signed_at: float | None) -> Receipt:
    try:
        if conf.LEDGEPAY_WEBHOOK_PROCESSING == WEBHOOK_PROCESSING_TASK:
            return _store_for_task(body)
        return _apply(body, signed_at)
    except OperationalError:
        # The database is down or locked: nothing was stored, LedgePay delivers again.
        logger.exception("Webhook delivery not stored: the database failed")
        return Receipt(503, "The event could not be stored now; deliver it again.", "", "failed")


def _apply(body: bytes, signed_at: float | None) -> Receipt:
    fast = settle_in_one_statement(body, signed_at=signed_at)
    if fast is not None and fast.settled is not None:
        return _answer_for(fast.settled)
    if fast is not None and fast.stored is not None and fast.stored.is_processed:
        return _duplicate(fast.stored)
    event, created, invalid = webhooks.record_event(body)
    if invalid is not None:
        return _rejected(event, invalid.message)
    if not created and event.is_processed:
        return _duplicate(event)
    webhooks.process_event(event)
    return _answer_for(event)


def _answer_for(event: WebhookEvent) -> Receipt:
    outcome = telemetry.WEBHOOK_OUTCOMES.get(event.status, "failed")
    if event.status == WebhookEvent.Status.FAILED:
        return Receipt(503, KEPT_FOR_REDELIVERY, event.event_type, outcome)
    if event.status == WebhookEvent.Status.PROCESSED:
        telemetry.webhook_lag(event.event_type, _happened(event))
    return Receipt(200, event.status, event.event_type, outcome)


def _duplicate(event: WebhookEvent) -> Receipt:
    # A redelivery looked up by its body's hash is answered without reading its type.
    known = "event_type" not in event.get_deferred_fields()
    return Receipt(200, "duplicate", event.event_type if known else "", "duplicate")


def _rejected(event: WebhookEvent, why: str) -> Receipt:
    logger.warning(
        "Webhook event %s kept as ignored: %s", event.pk, why, extra={"ledgepay_event": event.pk}
    )
    return Receipt(400, why, event.event_type, "rejected")


def _happened(event: WebhookEvent) -> float | None:
    """When the event happened at LedgePay (its ``timestamp``), in Unix seconds."""
    if "payload" in event.get_deferred_fields():
        return None  # Not worth a query.
    payload = event.payload
    moment = parse_time(payload.get("timestamp")) if isinstance(payload, dict) else None
    return moment.timestamp() if moment is not None else None


def _store_for_task(body: bytes) -> Receipt:
    """Store a delivery and hand it to :func:`process_event`. A backend that fails to
    enqueue loses nothing: the event stays ``received`` and ``ledgepay_deliver`` applies it."""
    event, created, invalid = webhooks.record_event(body)
    if invalid is not None:
        return _rejected(event, invalid.message)
    if event.is_processed:
        return _duplicate(event)
    try:
        task_backend.enqueue(process_event, event.pk)
    except Exception:
        logger.exception(
            "Could not enqueue webhook event %s; ledgepay_reprocess --all will apply it.",
            event.pk,
        )
    if not created:
        return _duplicate(event)
    return Receipt(200, WebhookEvent.Status.RECEIVED, event.event_type)


def settle_in_one_statement(body: bytes, *, signed_at: float | None = None) -> Settlement | None:
    """Apply a delivery in one SQL statement, with or after one look-up, where the database
    allows (PostgreSQL; on SQLite a new body for a final payment) and the case is one the
    statement can decide alone; else change nothing and return None or the outcome without
    ``settled`` (then take the general path).

    Outside a transaction only: the statement is its own transaction, so the change, the
    stored event and its transition commit together, and a redelivery costs the look-up.
    ``signed_at``, the signature's timestamp, tells a retry, looked up first.
    """
    if connection.in_atomic_block or not (
        connection.vendor == "postgresql"
        or (connection.vendor == "sqlite" and connection.features.can_return_columns_from_insert)
    ):
        return None
    try:
        payload = webhooks.parse_event(body)
    except WebhookPayloadError:
        return None
    return sql.settle(payload, hashlib.sha256(body).hexdigest(), signed_at=signed_at)
