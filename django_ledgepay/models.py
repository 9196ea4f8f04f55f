"""The local mirror of LedgePay's payments and refunds, and the log of webhook deliveries."""

from __future__ import annotations

from typing import Any, Final

from django.conf import settings
from django.db import models
from django.db.models import Q, Sum
from django.db.models.functions import Coalesce
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from django_ledgepay.currencies import format_amount

#: The largest amount a ``BigIntegerField`` holds: the most any amount column takes.
MAX_AMOUNT: Final = 2**63 - 1


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
    erased_at = models.DateTimeField(
        _("personal data erased at"),
        null=True,
        blank=True,
        help_text=_(
            "When its customer's e-mail and name were erased (manage.py ledgepay_erase): "
            "they stay blank, whatever LedgePay says later."
        ),
    )

    objects = PaymentQuerySet.as_manager()

    class Meta:
        verbose_name = _("payment")
        verbose_name_plural = _("payments")
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["status", "-created_at"], name="ledgepay_pay_status_idx"),
            models.Index(fields=["-created_at"], name="ledgepay_pay_created_idx"),
            # The admin's currency filter: its choices and its page.
            models.Index(fields=["currency", "-created_at"], name="ledgepay_pay_currency_idx"),
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
        indexes = [
            # The admin's list and the dashboard's window; its currency filter.
            models.Index(fields=["-created_at"], name="ledgepay_refund_created_idx"),
            models.Index(fields=["status", "-created_at"], name="ledgepay_refund_status_idx"),
            models.Index(fields=["currency", "-created_at"], name="ledgepay_refund_currency_idx"),
        ]
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
    note = models.TextField(
        _("note"),
        blank=True,
        help_text=_("What in the event contradicted the mirror's fixed facts, if anything."),
    )
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


class Transition(models.Model):
    """One change of the mirror that sends a signal, written in the change's transaction.

    Its receivers run from :func:`django_ledgepay.tasks.deliver_transition`; ``delivered_at``
    is set once every receiver has succeeded. It is the payment's audit trail, too.
    """

    class Source(models.TextChoices):
        WEBHOOK = "webhook", _("Webhook")
        SYNC = "sync", _("Sync")
        API = "api", _("Service call")
        ADMIN = "admin", _("Admin")

    class Signal(models.TextChoices):
        PAYMENT_SUCCEEDED = "payment_succeeded"
        PAYMENT_FAILED = "payment_failed"
        PAYMENT_CANCELED = "payment_canceled"
        REFUND_CREATED = "refund_created"
        REFUND_SUCCEEDED = "refund_succeeded"
        REFUND_FAILED = "refund_failed"

    signal = models.CharField(_("signal"), max_length=32, choices=Signal.choices)
    payment = models.ForeignKey(
        Payment, on_delete=models.CASCADE, related_name="transitions", verbose_name=_("payment")
    )
    refund = models.ForeignKey(
        Refund,
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="transitions",
        verbose_name=_("refund"),
    )
    source = models.CharField(_("source"), max_length=16, choices=Source.choices)
    event = models.ForeignKey(
        WebhookEvent,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="transitions",
        verbose_name=_("webhook event"),
    )
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        verbose_name=_("actor"),
        help_text=_("The staff user behind an admin action."),
    )
    created_at = models.DateTimeField(_("created at"), default=timezone.now)
    delivered_at = models.DateTimeField(
        _("delivered at"),
        null=True,
        blank=True,
        help_text=_("When every receiver had succeeded; empty until then."),
    )
    attempts = models.PositiveIntegerField(_("attempts"), default=0)
    next_attempt_at = models.DateTimeField(
        _("next attempt at"),
        null=True,
        blank=True,
        help_text=_("When ledgepay_deliver tries again; empty once delivered or given up."),
    )
    error = models.TextField(_("error"), blank=True)

    class Meta:
        verbose_name = _("transition")
        verbose_name_plural = _("transitions")
        ordering = ["created_at", "id"]
        indexes = [
            models.Index(
                fields=["next_attempt_at"],
                name="ledgepay_tr_undelivered_idx",
                condition=Q(delivered_at__isnull=True),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.signal} of {self.payment_id} ({self.source})"

    @property
    def is_delivered(self) -> bool:
        return self.delivered_at is not None


class Reaction(models.Model):
    """One receiver's delivery of one transition: its claim while a deliverer runs it, its
    success (written in the receiver's transaction, so that it is never run again), its
    last error while it fails."""

    transition = models.ForeignKey(Transition, on_delete=models.CASCADE, related_name="reactions")
    receiver = models.CharField(
        _("receiver"), max_length=255, help_text=_("Its dispatch_uid, or module.qualname.")
    )
    attempts = models.PositiveIntegerField(_("attempts"), default=0)
    succeeded_at = models.DateTimeField(_("succeeded at"), null=True, blank=True)
    last_attempt_at = models.DateTimeField(_("last attempt at"), null=True, blank=True)
    error = models.TextField(_("error"), blank=True, help_text=_("The last traceback."))
    claimed_until = models.DateTimeField(
        _("claimed until"),
        null=True,
        blank=True,
        help_text=_(
            "While a deliverer runs the receiver: the end of its lease, before which no "
            "other deliverer runs it."
        ),
    )

    class Meta:
        verbose_name = _("reaction")
        verbose_name_plural = _("reactions")
        ordering = ["transition", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["transition", "receiver"], name="ledgepay_reaction_unique"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.receiver} for transition {self.transition_id}"


class RecordedCall(models.Model):
    """A call to LedgePay recorded before it is sent, with the idempotency key it is sent
    with, and what came of it: ``unknown`` until an answer says (the call ended without one,
    and LedgePay may have acted), then ``made`` or ``refused``."""

    class Outcome(models.TextChoices):
        UNKNOWN = "unknown", _("Unknown")
        MADE = "made", _("Made")
        REFUSED = "refused", _("Refused")

    idempotency_key = models.CharField(_("idempotency key"), max_length=255, unique=True)
    outcome = models.CharField(
        _("outcome"), max_length=16, choices=Outcome.choices, default=Outcome.UNKNOWN
    )
    error = models.TextField(_("error"), blank=True)
    created_at = models.DateTimeField(_("created at"), default=timezone.now)
    resolved_at = models.DateTimeField(_("resolved at"), null=True, blank=True)

    class Meta:
        abstract = True
        ordering = ["created_at", "id"]


class RefundRequest(RecordedCall):
    """A refund asked of LedgePay, recorded before the call with its idempotency key.

    While its outcome is unknown (the call ended without an answer), every refund of its
    payment first sends it again with the same key.
    """

    payment = models.ForeignKey(
        Payment,
        on_delete=models.PROTECT,
        related_name="refund_requests",
        verbose_name=_("payment"),
    )
    amount = models.BigIntegerField(_("amount"), help_text=_("In the currency's minor unit."))
    whole = models.BooleanField(
        _("the rest"), default=False, help_text=_("Asked for all that was left to refund.")
    )
    reason = models.CharField(_("reason"), max_length=32, choices=Refund.Reason.choices)
    source = models.CharField(_("source"), max_length=16, choices=Transition.Source.choices)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        verbose_name=_("asked by"),
    )
    refund = models.ForeignKey(
        Refund,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="requests",
        verbose_name=_("refund"),
    )
    attempts = models.PositiveIntegerField(_("attempts"), default=0)
    answered = models.BooleanField(
        _("answered"),
        default=False,
        help_text=_(
            "Whether its caller got the refund back. One made by another call's resend is "
            "handed to the caller's retry (the same amount again) instead of a new refund."
        ),
    )
    sending_since = models.DateTimeField(
        _("sending since"),
        null=True,
        blank=True,
        help_text=_("Set while a call is sending it; another call leaves it alone meanwhile."),
    )

    class Meta(RecordedCall.Meta):
        verbose_name = _("refund request")
        verbose_name_plural = _("refund requests")
        indexes = [
            models.Index(
                fields=["payment"],
                name="ledgepay_rr_unknown_idx",
                condition=Q(outcome="unknown"),
            ),
        ]
        constraints = [
            models.CheckConstraint(condition=Q(amount__gt=0), name="ledgepay_rr_amount_gt_0"),
        ]

    def __str__(self) -> str:
        amount = format_amount(self.amount, self.payment.currency)
        return f"{amount} of payment {self.payment_id} ({self.outcome})"


class PaymentRequest(RecordedCall):
    """A payment asked of LedgePay without an idempotency key of the caller's, recorded
    before the call with the key it was sent with (and kept across the call's own retries).

    Every such call is a new payment: one whose answer was lost stays ``unknown``, with its
    key and the fingerprint of its arguments, and the reconcile finds the payment it made.
    """

    fingerprint = models.CharField(
        _("fingerprint"), max_length=64, help_text=_("SHA-256 of the request's arguments.")
    )
    payment = models.ForeignKey(
        Payment,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        verbose_name=_("payment"),
    )

    class Meta(RecordedCall.Meta):
        verbose_name = _("payment request")
        verbose_name_plural = _("payment requests")
        indexes = [
            models.Index(
                fields=["fingerprint", "created_at"],
                name="ledgepay_pr_unknown_idx",
                condition=Q(outcome="unknown"),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.idempotency_key} ({self.outcome})"


class Reconciliation(models.Model):
    """One run of ``manage.py ledgepay_reconcile``: its window and the drift it found."""

    class Outcome(models.TextChoices):
        RUNNING = "running", _("Running")
        CLEAN = "clean", _("No drift")
        DRIFT = "drift", _("Drift")
        FAILED = "failed", _("LedgePay could not be read")

    started_at = models.DateTimeField(_("started at"), default=timezone.now)
    finished_at = models.DateTimeField(_("finished at"), null=True, blank=True)
    since = models.DateTimeField(_("since"))
    until = models.DateTimeField(_("until"))
    applied = models.BooleanField(_("applied"), default=False)
    outcome = models.CharField(
        _("outcome"), max_length=16, choices=Outcome.choices, default=Outcome.RUNNING
    )
    checked = models.PositiveIntegerField(_("payments checked"), default=0)
    repaired = models.PositiveIntegerField(_("repaired"), default=0)
    drift = models.JSONField(_("drift"), default=list, blank=True)
    error = models.TextField(_("error"), blank=True)

    class Meta:
        verbose_name = _("reconciliation")
        verbose_name_plural = _("reconciliations")
        ordering = ["-started_at", "-id"]
        get_latest_by = "started_at"

    def __str__(self) -> str:
        return f"{self.since:%Y-%m-%d} to {self.until:%Y-%m-%d}: {self.outcome}"


class Erasure(models.Model):
    """One erasure of a customer's personal data (``manage.py ledgepay_erase``): when, by
    what, and how many rows it changed. Never the data itself: not the e-mail address asked
    for, nor any name."""

    class Criterion(models.TextChoices):
        EMAIL = "email", _("By e-mail address")
        PAYMENT = "payment", _("By payment")

    class Source(models.TextChoices):
        COMMAND = "command", _("manage.py ledgepay_erase")
        API = "api", _("Service call")

    erased_at = models.DateTimeField(_("erased at"), default=timezone.now)
    criterion = models.CharField(_("criterion"), max_length=16, choices=Criterion.choices)
    source = models.CharField(_("source"), max_length=16, choices=Source.choices)
    reference = models.CharField(
        _("reference"),
        max_length=255,
        blank=True,
        help_text=_("The request's reference, a ticket number say; never personal data."),
    )
    payments = models.JSONField(
        _("payments"), default=list, blank=True, help_text=_("The LedgePay ids of the payments.")
    )
    counts = models.JSONField(
        _("rows changed"), default=dict, blank=True, help_text=_("How many rows, per kind.")
    )

    class Meta:
        verbose_name = _("erasure")
        verbose_name_plural = _("erasures")
        ordering = ["-erased_at", "-id"]

    def __str__(self) -> str:
        count = len(self.payments) if isinstance(self.payments, list) else 0
        return f"{self.erased_at:%Y-%m-%d %H:%M} {self.criterion}: {count} payment(s)"
