"""The baselines: each webhook path done by hand, in plain Django ORM, at ``/bare/<path>/``.

What a careful engineer would write for one kind of delivery, with the fewest statements:
verify the signature (with the same function as the real view, so verification costs the
same), store the event in the same table (so the same indexes are maintained), make the same
change, and write a ``Transition`` row for a change that sends a signal, as the real view
does, all in one transaction. The URL says which path a delivery takes, so a baseline pays
for no dispatch and no validation: it is the floor the real view is compared with. Each one
is still correct for deliveries of its kind: a redelivery is answered as a duplicate (the
event's unique body hash), and a change applies once (``WHERE status = 'pending'``).

Statements per delivery on PostgreSQL (``bench/run.py`` counts them):

- ``succeeded``: the payment's id (SELECT), the event (INSERT), the payment (conditional
  UPDATE), the transition (INSERT): 4.
- ``redelivery`` and ``redelivery-soon``: the body's hash looked up (SELECT), answered: 1.
- ``final``: as ``succeeded`` for a payment no longer pending: SELECT and INSERT, 2.
- ``unseen``: the event, the payment and the transition (three INSERTs): 3.
- ``refund-created``: the payment locked (SELECT ... FOR UPDATE), the event, the refund and
  the transition (INSERTs): 4.
- ``refund-succeeded``: the refund's ids (SELECT), the event (INSERT), the refund
  (conditional UPDATE), the transition (INSERT): 4.
- ``refund-unseen``: the payment fetched from LedgePay (one GET, as the real view must), then
  the payment, the event, the refund and both transitions (four INSERTs): 4.
- ``receiver``: ``succeeded`` and the receiver's work (:func:`record_receipt`) in the same
  transaction, the transition written as delivered: 5.
"""

from __future__ import annotations

import datetime
import hashlib
import json
from collections.abc import Callable
from typing import Any

import requests

from django.db import IntegrityError, connection, transaction
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from django_ledgepay.conf import conf
from django_ledgepay.exceptions import WebhookSignatureError
from django_ledgepay.models import Payment, Refund, Transition, WebhookEvent
from django_ledgepay.webhooks import SIGNATURE_HEADER, verify_signature

#: The payment status each payment event announces, and the signal of that change.
PAYMENT_EVENTS = {
    "payment.succeeded": (Payment.Status.SUCCEEDED, Transition.Signal.PAYMENT_SUCCEEDED),
    "payment.failed": (Payment.Status.FAILED, Transition.Signal.PAYMENT_FAILED),
    "payment.canceled": (Payment.Status.CANCELED, Transition.Signal.PAYMENT_CANCELED),
}
#: The table the benchmark's receiver writes to (``bench/run.py`` creates it).
RECEIPTS = "bench_receipt"

Handler = Callable[[dict[str, Any], str, datetime.datetime], str]

_session = requests.Session()


@csrf_exempt
@require_POST
def bare_webhook(request: HttpRequest, path: str) -> HttpResponse:
    handler = HANDLERS.get(path)
    if handler is None:
        return JsonResponse({"detail": f"No bare path {path!r}."}, status=404)
    body = request.body
    try:
        verify_signature(
            body,
            request.headers.get(SIGNATURE_HEADER),
            conf.webhook_secrets,
            tolerance=conf.LEDGEPAY_WEBHOOK_TOLERANCE,
        )
    except WebhookSignatureError:
        return JsonResponse({"detail": "bad signature"}, status=400)
    payload = json.loads(body)
    digest = hashlib.sha256(body).hexdigest()
    return JsonResponse({"detail": handler(payload, digest, timezone.now())})


def _event(payload: dict[str, Any], digest: str, now: datetime.datetime) -> WebhookEvent:
    """Store the event as processed; IntegrityError when this body was stored before."""
    return WebhookEvent.objects.create(
        event_type=payload["event"],
        object_id=payload["data"]["id"],
        payload=payload,
        body_sha256=digest,
        status=WebhookEvent.Status.PROCESSED,
        attempts=1,
        processed_at=now,
    )


def _transition(
    signal: str,
    *,
    payment_id: int,
    event: WebhookEvent,
    now: datetime.datetime,
    refund_id: int | None = None,
    source: str = Transition.Source.WEBHOOK,
) -> Transition:
    """An unsaved transition, delivered already: the baselines have no receivers (the
    ``receiver`` path runs its receiver's work in the change's transaction)."""
    return Transition(
        signal=signal,
        payment_id=payment_id,
        refund_id=refund_id,
        source=source,
        event=event,
        created_at=now,
        delivered_at=now,
    )


def payment_event(
    payload: dict[str, Any],
    digest: str,
    now: datetime.datetime,
    *,
    receiver: bool = False,
) -> str:
    """A payment event for a known payment: applied if it is pending, else only stored."""
    data = payload["data"]
    status, signal = PAYMENT_EVENTS[payload["event"]]
    try:
        with transaction.atomic():
            pending = (
                Payment.objects.filter(
                    ledgepay_id=data["id"],
                    status=Payment.Status.PENDING,
                    amount=data["amount"],
                    currency=data["currency"],
                )
                .values_list("pk", flat=True)
                .first()
            )
            event = _event(payload, digest, now)
            if pending is None:
                return "processed"
            moved = Payment.objects.filter(pk=pending, status=Payment.Status.PENDING).update(
                status=status, completed_at=now, updated_at=now
            )
            if moved:
                _transition(signal, payment_id=pending, event=event, now=now).save(
                    force_insert=True
                )
                if receiver:
                    record_receipt(pending)
    except IntegrityError:
        return "duplicate"
    return "processed"


def redelivery(payload: dict[str, Any], digest: str, now: datetime.datetime) -> str:
    """A payment event: answered at once when this body was applied before."""
    stored = WebhookEvent.objects.filter(body_sha256=digest).values_list("status", flat=True)
    if stored.first() in {WebhookEvent.Status.PROCESSED, WebhookEvent.Status.IGNORED}:
        return "duplicate"
    return payment_event(payload, digest, now)


def unseen_payment(payload: dict[str, Any], digest: str, now: datetime.datetime) -> str:
    """A payment event for a payment never seen, recorded from the event's data."""
    data = payload["data"]
    status, signal = PAYMENT_EVENTS[payload["event"]]
    try:
        with transaction.atomic():
            event = _event(payload, digest, now)
            payment = Payment.objects.create(
                ledgepay_id=data["id"],
                status=status,
                amount=data["amount"],
                currency=data["currency"],
                metadata=data.get("metadata") or {},
                completed_at=now,
            )
            _transition(signal, payment_id=payment.pk, event=event, now=now).save(
                force_insert=True
            )
    except IntegrityError:
        # Stored before (a redelivery), or the payment is known after all.
        return payment_event(payload, digest, now)
    return "processed"


def refund_created(payload: dict[str, Any], digest: str, now: datetime.datetime) -> str:
    """A refund never seen, for a known payment: created under the payment's lock."""
    data = payload["data"]
    try:
        with transaction.atomic():
            payment = (
                Payment.objects.select_for_update()
                .filter(ledgepay_id=data["payment_id"])
                .values_list("pk", "currency")
                .first()
            )
            event = _event(payload, digest, now)
            if payment is None:
                return "ignored"  # Not this path: see refund_unseen.
            _create_refund(data, payment[0], payment[1], event, now)
    except IntegrityError:
        return "duplicate"
    return "processed"


def _create_refund(
    data: dict[str, Any],
    payment_id: int,
    currency: str,
    event: WebhookEvent,
    now: datetime.datetime,
    *,
    also: tuple[Transition, ...] = (),
) -> None:
    refund = Refund.objects.create(
        ledgepay_id=data["id"],
        payment_id=payment_id,
        amount=data["amount"],
        currency=data.get("currency") or currency,
        reason=data.get("reason") or Refund.Reason.CUSTOMER_REQUEST,
        status=data.get("status") or Refund.Status.PENDING,
    )
    created = _transition(
        Transition.Signal.REFUND_CREATED,
        payment_id=payment_id,
        refund_id=refund.pk,
        event=event,
        now=now,
    )
    if also:
        Transition.objects.bulk_create([*also, created])
    else:
        created.save(force_insert=True)


def refund_succeeded(payload: dict[str, Any], digest: str, now: datetime.datetime) -> str:
    """``refund.succeeded`` for a known pending refund."""
    data = payload["data"]
    try:
        with transaction.atomic():
            pending = (
                Refund.objects.filter(ledgepay_id=data["id"], status=Refund.Status.PENDING)
                .values_list("pk", "payment_id")
                .first()
            )
            event = _event(payload, digest, now)
            if pending is None:
                return "processed"
            moved = Refund.objects.filter(pk=pending[0], status=Refund.Status.PENDING).update(
                status=Refund.Status.SUCCEEDED, updated_at=now
            )
            if moved:
                _transition(
                    Transition.Signal.REFUND_SUCCEEDED,
                    payment_id=pending[1],
                    refund_id=pending[0],
                    event=event,
                    now=now,
                ).save(force_insert=True)
    except IntegrityError:
        return "duplicate"
    return "processed"


def refund_unseen(payload: dict[str, Any], digest: str, now: datetime.datetime) -> str:
    """``refund.created`` for a payment never seen: fetched from LedgePay, outside the
    transaction (no lock held over HTTP), then recorded with the refund."""
    data = payload["data"]
    answer = _session.get(
        f"{conf.LEDGEPAY_API_BASE.rstrip('/')}/payments/{data['payment_id']}",
        headers={"Authorization": f"Bearer {conf.LEDGEPAY_API_KEY}"},
        timeout=conf.LEDGEPAY_TIMEOUT,
    )
    answer.raise_for_status()
    remote = answer.json()
    try:
        with transaction.atomic():
            event = _event(payload, digest, now)
            payment = Payment.objects.create(
                ledgepay_id=remote["id"],
                status=remote["status"],
                amount=remote["amount"],
                currency=remote["currency"],
                metadata=remote.get("metadata") or {},
                completed_at=now,
            )
            synced = _transition(
                Transition.Signal.PAYMENT_SUCCEEDED,
                payment_id=payment.pk,
                event=event,
                now=now,
                source=Transition.Source.SYNC,
            )
            _create_refund(data, payment.pk, payment.currency, event, now, also=(synced,))
    except IntegrityError:
        return "duplicate"
    return "processed"


def record_receipt(payment_id: int) -> None:
    """The benchmark's trivial database receiver: one row per payment that succeeded."""
    with connection.cursor() as cursor:
        cursor.execute(f"INSERT INTO {RECEIPTS} (payment_id) VALUES (%s)", [payment_id])


def receipt_receiver(sender: Any, payment: Payment, **kwargs: Any) -> None:
    """``payment_succeeded``'s receiver on the ``receiver`` path (connected in urls.py)."""
    record_receipt(payment.pk)


def with_receiver(payload: dict[str, Any], digest: str, now: datetime.datetime) -> str:
    return payment_event(payload, digest, now, receiver=True)


HANDLERS: dict[str, Handler] = {
    "succeeded": payment_event,
    "redelivery": redelivery,
    "redelivery-soon": redelivery,
    "final": payment_event,
    "unseen": unseen_payment,
    "refund-created": refund_created,
    "refund-succeeded": refund_succeeded,
    "refund-unseen": refund_unseen,
    "receiver": with_receiver,
}
