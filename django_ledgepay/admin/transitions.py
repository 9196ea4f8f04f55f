"""The transitions list and a transition's page, read-only: each change that sent a signal,
whether its receivers have run it, and the action that delivers selected ones again."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from django_ledgepay import reactions
from django_ledgepay.admin.display import change_link, day_and_time, delivery_state, with_time
from django_ledgepay.admin.filters import DeliveryFilter
from django_ledgepay.admin.inlines import ReactionInline
from django_ledgepay.admin.permissions import ACTION_LIMIT, ReadOnlyMixin, has_model_perm
from django_ledgepay.models import Transition

if TYPE_CHECKING:
    # The admin's classes are generic only in django-stubs, not at run time.
    TransitionAdminBase = admin.ModelAdmin[Transition]
else:
    TransitionAdminBase = admin.ModelAdmin


@admin.register(Transition)
class TransitionAdmin(ReadOnlyMixin, TransitionAdminBase):
    # Fits 1280 px beside both sidebars with ids as long as LedgePay's: the delivery says
    # when the next attempt is (a column of its own pushed the delivery off the screen),
    # and the date is short.
    list_display = (
        "created_display",
        "signal",
        "payment_link",
        "source",
        "actor",
        "delivery",
    )
    list_filter = (DeliveryFilter, "signal", "source", "created_at")
    search_fields = ("payment__ledgepay_id", "refund__ledgepay_id")
    list_select_related = ("payment", "actor")
    fields = (
        "signal",
        "payment_link",
        "refund",
        "source",
        "event",
        "actor",
        "created_at",
        "delivered_at",
        "attempts",
        "next_attempt_at",
        "error_display",
    )
    readonly_fields = ("payment_link", "error_display")
    inlines = (ReactionInline,)
    actions = ("deliver_transitions",)

    @admin.display(description=_("payment"), ordering="payment__ledgepay_id")
    def payment_link(self, transition: Transition) -> SafeString:
        return change_link(transition.payment, transition.payment.ledgepay_id)

    @admin.display(description=_("created"), ordering="created_at")
    def created_display(self, transition: Transition) -> SafeString | None:
        return day_and_time(transition.created_at)

    @admin.display(description=_("delivery"), ordering="next_attempt_at")
    def delivery(self, transition: Transition) -> SafeString:
        """Delivered, waiting, failing or given up; when failing, the next attempt's time."""
        upcoming = None if transition.delivered_at else transition.next_attempt_at
        return with_time(delivery_state(transition), upcoming, label=_("next attempt"))

    @admin.display(description=_("error"))
    def error_display(self, transition: Transition) -> SafeString | str:
        if not transition.error:
            return ""
        return format_html('<pre class="ledgepay-traceback">{}</pre>', transition.error)

    def has_deliver_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        """``django_ledgepay.change_transition``: delivering runs the project's receivers."""
        return has_model_perm(request, self.opts, "change")

    @admin.action(description=_("Deliver selected transitions again"), permissions=("deliver",))
    def deliver_transitions(self, request: HttpRequest, queryset: QuerySet[Transition]) -> None:
        if queryset.count() > ACTION_LIMIT:
            self.message_user(
                request,
                _(
                    "Select at most %(limit)s transitions at once; for more, run "
                    "“manage.py ledgepay_deliver --all”."
                )
                % {"limit": ACTION_LIMIT},
                messages.ERROR,
            )
            return
        delivered = 0
        for transition_id in queryset.filter(delivered_at__isnull=True).values_list(
            "pk", flat=True
        ):
            outcome = reactions.deliver(transition_id)
            if outcome.delivered:
                delivered += 1
            elif outcome.failed:
                self.message_user(
                    request,
                    _("Transition %(id)s: %(receivers)s raised again; see its error.")
                    % {"id": transition_id, "receivers": ", ".join(outcome.failed)},
                    messages.ERROR,
                )
            elif outcome.skipped:
                self.message_user(
                    request,
                    _("Transition %(id)s: %(receivers)s is being run by another deliverer.")
                    % {"id": transition_id, "receivers": ", ".join(outcome.skipped)},
                    messages.WARNING,
                )
        self.message_user(
            request,
            ngettext(
                "Delivered %(count)d transition.",
                "Delivered %(count)d transitions.",
                delivered,
            )
            % {"count": delivered},
            messages.SUCCESS,
        )
