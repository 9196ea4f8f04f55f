from __future__ import annotations

from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class LedgePayConfig(AppConfig):
    name = "django_ledgepay"
    verbose_name = _("LedgePay")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django_ledgepay import (
            checks,  # noqa: F401  (registers the system checks)
            telemetry,
        )
        from django_ledgepay.models import RefundRequest, Transition

        # The backlog gauges, read at each collection (no-ops without OpenTelemetry).
        telemetry.observe(
            "ledgepay.transitions.undelivered",
            "Transitions whose receivers have not all succeeded.",
            Transition.objects.filter(delivered_at__isnull=True).count,
        )
        telemetry.observe(
            "ledgepay.refund_requests.unresolved",
            "Refund requests whose outcome is unknown.",
            RefundRequest.objects.filter(outcome=RefundRequest.Outcome.UNKNOWN).count,
        )
