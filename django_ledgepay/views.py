"""The webhook endpoint LedgePay posts its events to."""

from __future__ import annotations

import logging
from typing import Any

from django.core.exceptions import RequestDataTooBig
from django.db import OperationalError, transaction
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils.decorators import method_decorator
from django.views import View
from django.views.decorators.csrf import csrf_exempt

from django_ledgepay import signatures, tasks, webhooks
from django_ledgepay.conf import WEBHOOK_PROCESSING_TASK, conf
from django_ledgepay.exceptions import WebhookSignatureError
from django_ledgepay.models import WebhookEvent

logger = logging.getLogger(__name__)


@method_decorator(csrf_exempt, name="dispatch")
@method_decorator(transaction.non_atomic_requests, name="dispatch")
class WebhookView(View):
    """Verify, store, apply, answer.

    200: applied, a redelivery, or a type this app does not know (kept, ignored).
    400: a missing, bad or stale signature (nothing stored); a body over
    ``DATA_UPLOAD_MAX_MEMORY_SIZE`` (nothing stored); a signed body that is not a readable
    event (stored as ignored, with the reason).
    503: a valid event that could not be applied for a passing reason; it stays in the log
    as failed, with its error, and LedgePay delivers it again.

    Not atomic under ``ATOMIC_REQUESTS``: the event is stored even when applying it fails,
    and signals go out as soon as each change commits.
    """

    http_method_names = ["post"]

    def http_method_not_allowed(self, request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
        response = _answer(405, "Only POST is allowed.")
        response["Allow"] = "POST"
        return response

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        try:
            body = request.body
        except RequestDataTooBig:
            return _answer(400, "The body is larger than DATA_UPLOAD_MAX_MEMORY_SIZE.")
        try:
            signed_at = signatures.verify_signature(
                body,
                request.headers.get(signatures.SIGNATURE_HEADER),
                conf.webhook_secrets,
                tolerance=conf.LEDGEPAY_WEBHOOK_TOLERANCE,
            )
        except WebhookSignatureError as err:
            logger.warning("Webhook refused: %s", err.message)
            return _answer(400, err.message)

        try:
            return self.apply(body, signed_at=signed_at)
        except OperationalError:
            # The database is down or locked: nothing was stored, LedgePay delivers again.
            logger.exception("Webhook delivery not stored: the database failed")
            return _answer(503, "The event could not be stored now; deliver it again.")

    def apply(self, body: bytes, *, signed_at: float | None = None) -> HttpResponse:
        """Store and apply a delivery whose signature passed (signed at ``signed_at``)."""
        if conf.LEDGEPAY_WEBHOOK_PROCESSING == WEBHOOK_PROCESSING_TASK:
            return self.store(body)
        fast = webhooks.settle_in_one_statement(body, signed_at=signed_at)
        if fast is not None and fast.settled is not None:
            if fast.settled.status == WebhookEvent.Status.FAILED:
                return _answer(503, KEPT_FOR_REDELIVERY)
            return _answer(200, fast.settled.status)
        if fast is not None and fast.stored is not None and fast.stored.is_processed:
            return _answer(200, "duplicate")

        event, created, invalid = webhooks.record_event(body)
        if invalid is not None:
            logger.warning("Webhook event %s kept as ignored: %s", event.pk, invalid.message)
            return _answer(400, invalid.message)
        if not created and event.is_processed:
            return _answer(200, "duplicate")
        webhooks.process_event(event)
        if event.status == WebhookEvent.Status.FAILED:
            return _answer(503, KEPT_FOR_REDELIVERY)
        return _answer(200, event.status)

    def store(self, body: bytes) -> HttpResponse:
        """Store a delivery and hand it to ``django_ledgepay.tasks.process_event``.

        A backend that fails to enqueue loses nothing: the event stays ``received`` and
        ``manage.py ledgepay_reprocess --all`` applies it.
        """
        event, created, invalid = webhooks.record_event(body)
        if invalid is not None:
            logger.warning("Webhook event %s kept as ignored: %s", event.pk, invalid.message)
            return _answer(400, invalid.message)
        if event.is_processed:
            return _answer(200, "duplicate")
        try:
            tasks.enqueue(tasks.process_event, event.pk)
        except Exception:
            logger.exception(
                "Could not enqueue webhook event %s; ledgepay_reprocess --all will apply it.",
                event.pk,
            )
        return _answer(200, WebhookEvent.Status.RECEIVED if created else "duplicate")


KEPT_FOR_REDELIVERY = "The event could not be applied now; it is kept for redelivery."


def _answer(status: int, detail: str) -> JsonResponse:
    return JsonResponse({"detail": detail}, status=status)
