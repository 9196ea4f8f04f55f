"""The webhook events list and an event's page, read-only, with the action that processes
selected events again."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.safestring import SafeString
from django.utils.text import Truncator
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from django_ledgepay import webhooks
from django_ledgepay.admin.display import day_and_time, pretty_json, with_note, with_time
from django_ledgepay.admin.permissions import ACTION_LIMIT, ReadOnlyMixin, has_model_perm
from django_ledgepay.models import WebhookEvent

if TYPE_CHECKING:
    # The admin's classes are generic only in django-stubs, not at run time.
    WebhookEventAdminBase = admin.ModelAdmin[WebhookEvent]
else:
    WebhookEventAdminBase = admin.ModelAdmin


@admin.register(WebhookEvent)
class WebhookEventAdmin(ReadOnlyMixin, WebhookEventAdminBase):
    # Fits 1280 px beside both sidebars with ids as long as LedgePay's: the object's id is
    # under the event's type and the status says when the event was processed (columns of
    # their own pushed the error off the screen), and the dates are short.
    list_display = (
        "event_display",
        "status_display",
        "attempts",
        "received_display",
        "error_excerpt",
    )
    list_filter = ("status", "event_type", "received_at")
    search_fields = ("object_id", "event_type")
    fields = (
        "event_type",
        "object_id",
        "status",
        "attempts",
        "received_at",
        "processed_at",
        "error",
        "payload_display",
        "body_sha256",
    )
    readonly_fields = ("payload_display",)
    actions = ("process_events",)

    @admin.display(description=_("event"), ordering="event_type")
    def event_display(self, event: WebhookEvent) -> SafeString:
        """The event's type and, under it, the LedgePay id of its object."""
        return with_note(event.event_type, event.object_id)

    @admin.display(description=_("status"), ordering="status")
    def status_display(self, event: WebhookEvent) -> SafeString:
        """The status and, once processed or ignored, when."""
        return with_time(event.get_status_display(), event.processed_at)

    @admin.display(description=_("received"), ordering="received_at")
    def received_display(self, event: WebhookEvent) -> SafeString | None:
        return day_and_time(event.received_at)

    @admin.display(description=_("error"))
    def error_excerpt(self, event: WebhookEvent) -> str:
        return Truncator(event.error).chars(80)

    @admin.display(description=_("payload"))
    def payload_display(self, event: WebhookEvent) -> SafeString:
        return pretty_json(event.payload)

    def has_process_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        """``django_ledgepay.change_webhookevent``: applying an event changes the mirror."""
        return has_model_perm(request, self.opts, "change")

    @admin.action(description=_("Process selected events again"), permissions=("process",))
    def process_events(self, request: HttpRequest, queryset: QuerySet[WebhookEvent]) -> None:
        if queryset.count() > ACTION_LIMIT:
            self.message_user(
                request,
                _(
                    "Select at most %(limit)s events to process at once; for more, run "
                    "“manage.py ledgepay_reprocess”."
                )
                % {"limit": ACTION_LIMIT},
                messages.ERROR,
            )
            return
        counts: dict[str, int] = {}
        for event in queryset:
            webhooks.process_event(event)
            counts[event.status] = counts.get(event.status, 0) + 1
            if event.status == WebhookEvent.Status.FAILED:
                self.message_user(
                    request,
                    _("Event %(event)s (%(type)s) failed: %(error)s")
                    % {"event": event.pk, "type": event.event_type, "error": event.error},
                    messages.ERROR,
                )
        summary = ", ".join(f"{count} {status}" for status, count in sorted(counts.items()))
        total = sum(counts.values())
        self.message_user(
            request,
            ngettext(
                "Processed %(count)d event again: %(summary)s.",
                "Processed %(count)d events again: %(summary)s.",
                total,
            )
            % {"count": total, "summary": summary},
            messages.SUCCESS if WebhookEvent.Status.FAILED not in counts else messages.WARNING,
        )
