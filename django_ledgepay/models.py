"""The local mirror of LedgePay's payments and refunds, and the log of webhook deliveries."""

from __future__ import annotations

from typing import Any

from django.db import models
from django.db.models import Q, Sum
from django.db.models.functions import Coalesce
from django.utils.translation import gettext_lazy as _

from django_ledgepay.currencies import format_amount


class PaymentQuerySet(models.QuerySet["Payment"]):
    def with_amount_refunded(self) -> PaymentQuerySet:
        """Annotate each payment with its refunded total, so lists cost one query."""
        annotated: PaymentQuerySet = self.annotate(
            annotated_amount_refunded=Coalesce(
                Sum("refunds__amount", filter=~Q(refunds__status=Refund.Status.FAILED)), 0
            )
        )
        return annotated


class Payment(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending"
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        CANCELED = "canceled"

    ledgepay_id = models.CharField(_("LedgePay id"), max_length=255, unique=True)
    status = models.CharField(
        _("status"), max_length=16, choices=Status.choices, default=Status.PENDING
    )
    amount = models.BigIntegerField(_("amount"), help_text=_("In the currency's minor unit."))
    currency = models.CharField(_("currency"), max_length=3)
    description = models.TextField(_("description"), blank=True)
    customer_email = models.EmailField(_("customer email"), max_length=254, blank=True)
    customer_name = models.CharField(_("customer name"), max_length=255, blank=True)
    metadata = models.JSONField(_("metadata"), default=dict, blank=True)
    checkout_url = models.URLField(_("checkout URL"), max_length=2048, blank=True)
    success_url = models.URLField(_("success URL"), max_length=2048, blank=True)
    cancel_url = models.URLField(_("cancel URL"), max_length=2048, blank=True)
    created_at = models.DateTimeField(_("created at"), null=True, blank=True)
    completed_at = models.DateTimeField(_("completed at"), null=True, blank=True)
    updated_at = models.DateTimeField(_("updated locally"), auto_now=True)

    objects = PaymentQuerySet.as_manager()

    class Meta:
        verbose_name = _("payment")
        verbose_name_plural = _("payments")
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["status", "-created_at"], name="ledgepay_pay_status_idx"),
            models.Index(fields=["-created_at"], name="ledgepay_pay_created_idx"),
        ]
        constraints = [
            models.CheckConstraint(condition=Q(amount__gt=0), name="ledgepay_payment_amount_gt_0"),
        ]
        permissions = [("refund_payment", "Can refund payments")]

    def __str__(self) -> str:
        return f"{self.ledgepay_id} ({format_amount(self.amount, self.currency)}, {self.status})"

    @property
    def is_final(self) -> bool:
        return self.status != self.Status.PENDING

    @property
    def amount_refunded(self) -> int:
        """The sum of this payment's refunds that have not failed, in minor units."""
        annotated: int | None = getattr(self, "annotated_amount_refunded", None)
        if annotated is not None:
            return annotated
        total: int = self.refunds.exclude(status=Refund.Status.FAILED).aggregate(
            total=Coalesce(Sum("amount"), 0)
        )["total"]
        return total

    @property
    def refundable_amount(self) -> int:
        """What is left to refund, in minor units; 0 unless the payment succeeded."""
        if self.status != self.Status.SUCCEEDED:
            return 0
        return max(0, self.amount - self.amount_refunded)


class Refund(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending"
        SUCCEEDED = "succeeded"
        FAILED = "failed"

    class Reason(models.TextChoices):
        CUSTOMER_REQUEST = "customer_request", _("Customer request")
        DUPLICATE = "duplicate", _("Duplicate")
        FRAUDULENT = "fraudulent", _("Fraudulent")
        OTHER = "other", _("Other")

    ledgepay_id = models.CharField(_("LedgePay id"), max_length=255, unique=True)
    payment = models.ForeignKey(
        Payment, on_delete=models.PROTECT, related_name="refunds", verbose_name=_("payment")
    )
    amount = models.BigIntegerField(_("amount"), help_text=_("In the currency's minor unit."))
    currency = models.CharField(_("currency"), max_length=3)
    reason = models.CharField(
        _("reason"), max_length=32, choices=Reason.choices, default=Reason.CUSTOMER_REQUEST
    )
    status = models.CharField(
        _("status"), max_length=16, choices=Status.choices, default=Status.PENDING
    )
    created_at = models.DateTimeField(_("created at"), null=True, blank=True)
    updated_at = models.DateTimeField(_("updated locally"), auto_now=True)

    class Meta:
        verbose_name = _("refund")
        verbose_name_plural = _("refunds")
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(condition=Q(amount__gt=0), name="ledgepay_refund_amount_gt_0"),
        ]

    def __str__(self) -> str:
        return f"{self.ledgepay_id} ({format_amount(self.amount, self.currency)}, {self.status})"

    @property
    def is_final(self) -> bool:
        return self.status != self.Status.PENDING


class WebhookEvent(models.Model):
    class Status(models.TextChoices):
        RECEIVED = "received"
        PROCESSED = "processed"
        IGNORED = "ignored"
        FAILED = "failed"

    event_type = models.CharField(_("event type"), max_length=100)
    object_id = models.CharField(
        _("object id"),
        max_length=255,
        blank=True,
        db_index=True,
        help_text=_("The LedgePay id in the event's data."),
    )
    payload: models.JSONField[Any] = models.JSONField(_("payload"))
    body_sha256 = models.CharField(
        _("body SHA-256"),
        max_length=64,
        unique=True,
        help_text=_("Identifies redeliveries of the same event."),
    )
    status = models.CharField(
        _("status"), max_length=16, choices=Status.choices, default=Status.RECEIVED
    )
    error = models.TextField(_("error"), blank=True)
    attempts = models.PositiveIntegerField(_("attempts"), default=0)
    received_at = models.DateTimeField(_("received at"), auto_now_add=True)
    processed_at = models.DateTimeField(_("processed at"), null=True, blank=True)

    class Meta:
        verbose_name = _("webhook event")
        verbose_name_plural = _("webhook events")
        ordering = ["-received_at", "-id"]
        indexes = [models.Index(fields=["status", "-received_at"], name="ledgepay_evt_status_idx")]

    def __str__(self) -> str:
        return f"{self.event_type} {self.object_id} ({self.status})"

    @property
    def is_processed(self) -> bool:
        return self.status in {self.Status.PROCESSED, self.Status.IGNORED}
