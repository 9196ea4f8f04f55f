"""The baseline: the least a Django view must do with a ``payment.succeeded`` delivery.

Verify the signature (with the same function as the real view, so verification costs the
same), store the event in the same table (so the same indexes are maintained), and mark the
payment succeeded with one conditional UPDATE. No validation, no redelivery handling, no
signals, no other event types.
"""

from __future__ import annotations

import hashlib
import json

from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from django_ledgepay.conf import conf
from django_ledgepay.exceptions import WebhookSignatureError
from django_ledgepay.models import Payment, WebhookEvent
from django_ledgepay.webhooks import SIGNATURE_HEADER, verify_signature


@csrf_exempt
@require_POST
def bare_webhook(request: HttpRequest) -> HttpResponse:
    body = request.body
    try:
        verify_signature(
            body,
            request.headers.get(SIGNATURE_HEADER),
            conf.webhook_secrets,
            tolerance=conf.LEDGEPAY_WEBHOOK_TOLERANCE,
        )
    except WebhookSignatureError:
        return HttpResponse(status=400)
    payload = json.loads(body)
    ledgepay_id = payload["data"]["id"]
    now = timezone.now()
    WebhookEvent.objects.create(
        event_type=payload["event"],
        object_id=ledgepay_id,
        payload=payload,
        body_sha256=hashlib.sha256(body).hexdigest(),
        status=WebhookEvent.Status.PROCESSED,
        attempts=1,
        processed_at=now,
    )
    Payment.objects.filter(ledgepay_id=ledgepay_id, status=Payment.Status.PENDING).update(
        status=Payment.Status.SUCCEEDED, completed_at=now, updated_at=now
    )
    return HttpResponse("ok")
