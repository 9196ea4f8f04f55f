"""The soak's shop: receivers whose database work (and calls to another system) the soak
counts."""

from __future__ import annotations

from django.apps import AppConfig


class SoakConfig(AppConfig):
    name = "bench.soak"
    label = "soak"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from bench.soak import receivers
        from django_ledgepay import signals

        for signal in (
            signals.payment_succeeded,
            signals.payment_failed,
            signals.payment_canceled,
            signals.refund_created,
            signals.refund_succeeded,
            signals.refund_failed,
        ):
            signal.connect(receivers.record_effect, dispatch_uid=receivers.STEADY)
            signal.connect(receivers.record_effect_flaky, dispatch_uid=receivers.FLAKY)
            signal.connect(receivers.call_outside, dispatch_uid=receivers.OUTSIDE)
