"""The payments list and a payment's page: read-only, with the dashboard, the refunds
(:mod:`django_ledgepay.admin.refunding`) and the sync from LedgePay."""

from __future__ import annotations

from functools import partial

from django.contrib import admin, messages
from django.db.models import OuterRef, QuerySet, Subquery, Sum
from django.db.models.functions import Coalesce
from django.http import HttpRequest, StreamingHttpResponse
from django.urls import URLPattern, path
from django.utils.safestring import SafeString
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from django_ledgepay import dashboard, exports, reactions, services
from django_ledgepay.admin import display
from django_ledgepay.admin.display import (
    AmountMixin,
    day_and_time,
    nowrap,
    pretty_json,
    with_time,
)
from django_ledgepay.admin.filters import CurrencyListFilter, UnresolvedRefundFilter
from django_ledgepay.admin.inlines import RefundInline, RefundRequestInline, TransitionInline
from django_ledgepay.admin.permissions import ACTION_LIMIT, ReadOnlyMixin, has_model_perm
from django_ledgepay.admin.refunding import RefundingAdmin
from django_ledgepay.currencies import format_amount
from django_ledgepay.exceptions import LedgePayError
from django_ledgepay.models import Payment, Refund, Transition


def refunded_total() -> Coalesce:
    """The refunded total of the outer payment (its refunds that have not failed), as a
    correlated subquery: evaluated only for the rows a query returns."""
    refunds = (
        Refund.objects.filter(payment=OuterRef("pk"))
        .exclude(status=Refund.Status.FAILED)
        .order_by()
        .values("payment")
        .annotate(total=Sum("amount"))
        .values("total")
    )
    return Coalesce(Subquery(refunds), 0)


@admin.register(Payment)
class PaymentAdmin(AmountMixin, ReadOnlyMixin, RefundingAdmin):
    # Fits 1280 px beside both sidebars: the status column says when the payment reached
    # its status (a completed column of its own pushed the dates behind a scroll).
    list_display = (
        "ledgepay_id",
        "amount_display",
        "refunded_display",
        "status_display",
        "customer",
        "created_display",
    )
    list_filter = (
        "status",
        ("currency", CurrencyListFilter),
        "created_at",
        UnresolvedRefundFilter,
    )
    search_fields = ("ledgepay_id", "customer_email", "customer_name", "description")
    readonly_fields = (
        "amount_display",
        "refunded_display",
        "refundable_display",
        "metadata_display",
    )
    fieldsets = (
        (
            None,
            {
                "fields": (
                    "ledgepay_id",
                    "status",
                    "amount_display",
                    "refunded_display",
                    "refundable_display",
                    "description",
                )
            },
        ),
        (_("Customer"), {"fields": ("customer_email", "customer_name")}),
        (
            _("Checkout"),
            {"fields": ("checkout_url", "success_url", "cancel_url", "metadata_display")},
        ),
        (_("Dates"), {"fields": ("created_at", "completed_at", "updated_at")}),
    )
    inlines = (RefundInline, RefundRequestInline, TransitionInline)
    actions = ("refund_payments", "resolve_refund_requests", "sync_payments", "export_csv")

    def get_queryset(self, request: HttpRequest) -> QuerySet[Payment]:
        # The refunded total comes with each row (no query per row in the list), as a
        # subquery per row rather than a join: the list's count, its filters and its
        # page then never read the refunds, and only the rows shown compute their total.
        return super().get_queryset(request).annotate(annotated_amount_refunded=refunded_total())

    def get_urls(self) -> list[URLPattern]:
        info = (self.opts.app_label, self.opts.model_name)
        urls = [
            path(
                "dashboard/",
                self.admin_site.admin_view(partial(dashboard.dashboard_view, model_admin=self)),
                name="{}_{}_dashboard".format(*info),
            ),
        ]
        return urls + super().get_urls()

    # Columns and fields

    @admin.display(description=_("refunded"), ordering="annotated_amount_refunded")
    def refunded_display(self, payment: Payment) -> SafeString:
        return nowrap(format_amount(payment.amount_refunded, payment.currency))

    @admin.display(description=_("left to refund"))
    def refundable_display(self, payment: Payment) -> str:
        return format_amount(payment.refundable_amount, payment.currency)

    @admin.display(description=_("customer"), ordering="customer_email")
    def customer(self, payment: Payment) -> str:
        return display.customer(payment)

    @admin.display(description=_("status"), ordering="status")
    def status_display(self, payment: Payment) -> SafeString:
        """The status and, once final, when it was reached."""
        return with_time(payment.get_status_display(), payment.completed_at)

    @admin.display(description=_("created"), ordering="created_at")
    def created_display(self, payment: Payment) -> SafeString | None:
        return day_and_time(payment.created_at)

    @admin.display(description=_("completed"), ordering="completed_at")
    def completed_display(self, payment: Payment) -> SafeString | None:
        return day_and_time(payment.completed_at)

    @admin.display(description=_("metadata"))
    def metadata_display(self, payment: Payment) -> SafeString:
        return pretty_json(payment.metadata)

    # Exporting

    @admin.action(description=_("Export selected as CSV"), permissions=("view",))
    def export_csv(
        self, request: HttpRequest, queryset: QuerySet[Payment]
    ) -> StreamingHttpResponse:
        """The selected payments with ``ledgepay_export``'s columns, streamed."""
        return exports.csv_response(exports.PAYMENTS, queryset)

    # Syncing

    def has_sync_permission(self, request: HttpRequest, obj: Payment | None = None) -> bool:
        """``django_ledgepay.change_payment``: a sync writes to the mirror and sends signals."""
        return has_model_perm(request, self.opts, "change")

    @admin.action(description=_("Sync from LedgePay"), permissions=("sync",))
    def sync_payments(self, request: HttpRequest, queryset: QuerySet[Payment]) -> None:
        """Fetch each selected payment from LedgePay and apply it to the mirror.

        Only the selection: mirroring everything is ``manage.py ledgepay_sync``'s job, which
        pages through LedgePay's list rather than asking for payments one by one.
        """
        if queryset.count() > ACTION_LIMIT:
            self.message_user(
                request,
                _(
                    "Select at most %(limit)s payments to sync; for more, run "
                    "“manage.py ledgepay_sync”."
                )
                % {"limit": ACTION_LIMIT},
                messages.ERROR,
            )
            return
        synced = 0
        for payment in queryset:
            before = payment.status
            try:
                with reactions.origin(Transition.Source.ADMIN, actor=request.user):
                    fresh = services.sync_payment(payment)
            except LedgePayError as err:
                self.message_user(
                    request,
                    _("Could not sync %(payment)s: %(error)s")
                    % {"payment": payment.ledgepay_id, "error": err},
                    messages.ERROR,
                )
                continue
            synced += 1
            if fresh.status != before:
                self.message_user(
                    request,
                    _("Payment %(payment)s is now %(status)s (was %(before)s).")
                    % {"payment": payment.ledgepay_id, "status": fresh.status, "before": before},
                    messages.INFO,
                )
        if synced:
            self.message_user(
                request,
                ngettext(
                    "Synced %(count)d payment from LedgePay.",
                    "Synced %(count)d payments from LedgePay.",
                    synced,
                )
                % {"count": synced},
                messages.SUCCESS,
            )
