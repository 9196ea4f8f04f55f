"""The refunds list and a refund's page, read-only."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest, StreamingHttpResponse
from django.urls import reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.translation import gettext_lazy as _

from django_ledgepay import exports
from django_ledgepay.admin.display import AmountMixin, day_and_time, with_note
from django_ledgepay.admin.filters import CurrencyListFilter
from django_ledgepay.admin.permissions import ReadOnlyMixin
from django_ledgepay.models import Refund

if TYPE_CHECKING:
    # The admin's classes are generic only in django-stubs, not at run time.
    RefundAdminBase = admin.ModelAdmin[Refund]
else:
    RefundAdminBase = admin.ModelAdmin


@admin.register(Refund)
class RefundAdmin(AmountMixin, ReadOnlyMixin, RefundAdminBase):
    # Fits 1280 px beside both sidebars with ids as long as LedgePay's: the reason is under
    # the status (a column of its own pushed the created date behind a scroll).
    list_display = (
        "ledgepay_id",
        "payment_link",
        "amount_display",
        "status_display",
        "created_display",
    )
    list_filter = ("status", "reason", ("currency", CurrencyListFilter), "created_at")
    search_fields = ("ledgepay_id", "payment__ledgepay_id", "payment__customer_email")
    list_select_related = ("payment",)
    fields = (
        "ledgepay_id",
        "payment_link",
        "amount_display",
        "status",
        "reason",
        "created_at",
        "updated_at",
    )
    readonly_fields = ("payment_link", "amount_display")
    actions = ("export_csv",)

    @admin.display(description=_("payment"), ordering="payment__ledgepay_id")
    def payment_link(self, refund: Refund) -> SafeString:
        url = reverse(
            f"{self.admin_site.name}:{self.opts.app_label}_payment_change",
            args=(refund.payment_id,),
        )
        return format_html('<a href="{}">{}</a>', url, refund.payment.ledgepay_id)

    @admin.display(description=_("status"), ordering="status")
    def status_display(self, refund: Refund) -> SafeString:
        """The status and, under it, the reason."""
        return with_note(refund.get_status_display(), refund.get_reason_display())

    @admin.display(description=_("created"), ordering="created_at")
    def created_display(self, refund: Refund) -> SafeString | None:
        # Short, and breaking between day and time: the list fits 1280 px.
        return day_and_time(refund.created_at)

    @admin.action(description=_("Export selected as CSV"), permissions=("view",))
    def export_csv(
        self, request: HttpRequest, queryset: QuerySet[Refund]
    ) -> StreamingHttpResponse:
        """The selected refunds with ``ledgepay_export``'s columns, streamed."""
        return exports.csv_response(exports.REFUNDS, queryset)
