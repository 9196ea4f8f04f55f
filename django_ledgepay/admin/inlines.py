"""What a payment's page and a transition's page list below them, read-only: a payment's
refunds, refund requests and history; a transition's deliveries to each receiver."""

from __future__ import annotations

from typing import TYPE_CHECKING, Generic, TypeVar

from django.contrib import admin
from django.db.models import Model, QuerySet
from django.http import HttpRequest
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.translation import gettext_lazy as _

from django_ledgepay.admin.display import AmountMixin, change_link, delivery_state, nowrap
from django_ledgepay.admin.permissions import ReadOnlyMixin
from django_ledgepay.currencies import format_amount
from django_ledgepay.models import Payment, Reaction, Refund, RefundRequest, Transition

ChildT = TypeVar("ChildT", bound=Model)
ParentT = TypeVar("ParentT", bound=Model)

if TYPE_CHECKING:
    TabularInline = admin.TabularInline
else:
    # Generic in django-stubs only: subscriptable here too, for ReadOnlyInline[...].
    class TabularInline(admin.TabularInline, Generic[ChildT, ParentT]):
        pass


#: Django's tabular inline without its line above each row: read-only rows need no name
#: beside their fields (it repeated them); a LedgePay id links to its object's page.
READ_ONLY_INLINE = "admin/django_ledgepay/payment/read_only_inline.html"


class ReadOnlyInline(ReadOnlyMixin, TabularInline[ChildT, ParentT]):
    """An inline of the mirror: its rows as they are, none added, changed or deleted.
    A subclass names its ``fields`` and makes them its ``readonly_fields``."""

    extra = 0
    can_delete = False
    template = READ_ONLY_INLINE


class RefundInline(AmountMixin, ReadOnlyInline[Refund, Payment]):
    model = Refund
    show_change_link = True
    fields = ("ledgepay_id", "amount_display", "status", "reason", "created_at")
    readonly_fields = fields
    ordering = ("-created_at", "-id")
    empty_text = _("No refunds.")


class RefundRequestInline(ReadOnlyInline[RefundRequest, Payment]):
    """Every refund asked of LedgePay for the payment: who asked, and what came of it.
    One whose outcome is unknown got no answer; the next refund sends it again first."""

    model = RefundRequest
    verbose_name = _("refund request")
    verbose_name_plural = _("refund requests (who asked, and what came of it)")
    fields = ("created_at", "amount_display", "reason", "actor", "source", "outcome", "refund")
    readonly_fields = fields
    ordering = ("created_at", "id")
    empty_text = _("No refund requests.")

    def get_queryset(self, request: HttpRequest) -> QuerySet[RefundRequest]:
        return super().get_queryset(request).select_related("payment", "actor", "refund")

    @admin.display(description=_("amount"))
    def amount_display(self, request: RefundRequest) -> SafeString:
        return nowrap(format_amount(request.amount, request.payment.currency))


class TransitionInline(ReadOnlyInline[Transition, Payment]):
    """The payment's audit trail: each change that sent a signal, in order."""

    model = Transition
    verbose_name = _("change")
    verbose_name_plural = _("history (each change that sent a signal)")
    fields = ("created_at", "signal", "refund", "source", "event_link", "actor", "delivery")
    readonly_fields = fields
    ordering = ("created_at", "id")
    empty_text = _("No changes that sent a signal yet.")

    def get_queryset(self, request: HttpRequest) -> QuerySet[Transition]:
        return super().get_queryset(request).select_related("refund", "event", "actor")

    @admin.display(description=_("webhook event"))
    def event_link(self, transition: Transition) -> SafeString | str:
        if transition.event is None:
            return "-"
        return change_link(transition.event, transition.event.event_type)

    @admin.display(description=_("delivered"))
    def delivery(self, transition: Transition) -> SafeString:
        return change_link(transition, delivery_state(transition))


class ReactionInline(ReadOnlyInline[Reaction, Transition]):
    """Each receiver's delivery: when it succeeded, or its attempts and last traceback."""

    model = Reaction
    # Django's own tabular inline: each receiver's row keeps its name line.
    template = admin.TabularInline.template
    fields = ("receiver", "succeeded_at", "attempts", "last_attempt_at", "traceback")
    readonly_fields = fields

    @admin.display(description=_("last error"))
    def traceback(self, reaction: Reaction) -> SafeString | str:
        if not reaction.error:
            return ""
        return format_html('<pre class="ledgepay-traceback">{}</pre>', reaction.error)
