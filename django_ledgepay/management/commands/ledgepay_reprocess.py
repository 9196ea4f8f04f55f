from __future__ import annotations

from typing import Any

from django.core.management.base import CommandError, CommandParser

from django_ledgepay.client import patience
from django_ledgepay.management import arguments
from django_ledgepay.models import WebhookEvent
from django_ledgepay.webhooks import process_event


class Command(arguments.LedgePayCommand):
    help = (
        "Process stored webhook events again: by default every failed one. An event that is "
        "applied now sends its signals once, as it would have the first time."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--id",
            type=int,
            action="append",
            dest="ids",
            metavar="N",
            help="Process this event (repeat for several), whatever its status.",
        )
        parser.add_argument(
            "--all",
            action="store_true",
            help="Also events still marked received (their processing was interrupted).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        ids = arguments.ids(options["ids"])
        if ids:
            events = list(WebhookEvent.objects.filter(pk__in=ids).order_by("pk"))
            missing = sorted(set(ids) - {event.pk for event in events})
            if missing:
                raise CommandError(f"No webhook event with id {', '.join(map(str, missing))}.")
        else:
            statuses = [WebhookEvent.Status.FAILED]
            if options["all"]:
                statuses.append(WebhookEvent.Status.RECEIVED)
            events = list(WebhookEvent.objects.filter(status__in=statuses).order_by("pk"))
        counts: dict[str, int] = {}
        for event in events:
            # An operator's command waits out LedgePay's rate limit (see patience()).
            with patience(None):
                process_event(event)
            counts[event.status] = counts.get(event.status, 0) + 1
            line = f"Event {event.pk} ({event.event_type} {event.object_id}): {event.status}"
            if event.error:
                line += f": {event.error}"
            style = self.style.ERROR if event.status == WebhookEvent.Status.FAILED else str
            self.stdout.write(style(line))
        summary = ", ".join(f"{count} {status}" for status, count in sorted(counts.items()))
        self.stdout.write(
            self.style.SUCCESS(f"Processed {len(events)} events: {summary or 'none'}.")
        )
