"""The webhook endpoint LedgePay posts its events to."""

from __future__ import annotations

import logging
from typing import Any

from django.contrib.auth.decorators import login_not_required
from django.core.exceptions import RequestDataTooBig
from django.db import transaction
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils.decorators import method_decorator
from django.views import View
from django.views.decorators.csrf import csrf_exempt

from django_ledgepay import intake, signatures, telemetry
from django_ledgepay.conf import conf
from django_ledgepay.exceptions import WebhookSignatureError

logger = logging.getLogger(__name__)


@method_decorator(csrf_exempt, name="dispatch")
@method_decorator(login_not_required, name="dispatch")
@method_decorator(transaction.non_atomic_requests, name="dispatch")
class WebhookView(View):
    """Verify, hand over to :func:`django_ledgepay.intake.receive`, answer.

    200: applied, a redelivery, or a type this app does not know (kept, ignored).
    400: a missing, bad or stale signature (nothing stored); a body over
    ``DATA_UPLOAD_MAX_MEMORY_SIZE`` (nothing stored); a signed body that is not a readable
    event (stored as ignored, with the reason).
    503: a valid event that could not be applied for a passing reason; it stays in the log
    as failed, with its error, and LedgePay delivers it again.

    LedgePay logs in to nothing and sends no CSRF token: the view is CSRF exempt and
    answers under Django's ``LoginRequiredMiddleware``. Not atomic under
    ``ATOMIC_REQUESTS``: the event is stored even when applying it fails, and signals go out
    as soon as each change commits.
    """

    http_method_names = ["post"]

    def http_method_not_allowed(self, request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
        response = _answer(405, "Only POST is allowed.")
        response["Allow"] = "POST"
        return response

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        with telemetry.span("ledgepay.webhook"):
            try:
                body = request.body
            except RequestDataTooBig:
                telemetry.webhook_delivery(None, "rejected")
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
                telemetry.webhook_delivery(None, "rejected")
                return _answer(400, err.message)
            receipt = intake.receive(body, signed_at=signed_at)
            return _answer(receipt.status_code, receipt.detail)


def _answer(status: int, detail: str) -> JsonResponse:
    return JsonResponse({"detail": detail}, status=status)
