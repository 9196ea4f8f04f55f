from __future__ import annotations

import datetime
from typing import Any, Final

from django.core.management.base import CommandParser
from django.db import transaction
from django.db.models import Exists, OuterRef, QuerySet
from django.template.defaultfilters import pluralize
from django.utils import timezone

from django_ledgepay.management import arguments
from django_ledgepay.models import Transition, WebhookEvent
from django_ledgepay.services import iso_z

DEFAULT_BATCH_SIZE: Final = 1000
#: The largest batch: its ids are the parameters of one query, which a database limits
#: (32766 on SQLite, 65535 on PostgreSQL).
MAX_BATCH_SIZE: Final = 10_000
#: Only these are ever deleted: a failed event is still to be looked at, a received one
#: still to be applied.
PRUNABLE: Final = (WebhookEvent.Status.PROCESSED, WebhookEvent.Status.IGNORED)


def prunable(cutoff: datetime.datetime) -> QuerySet[WebhookEvent]:
    """The processed and ignored events received before ``cutoff`` that no undelivered
    transition refers to."""
    undelivered = Transition.objects.filter(event=OuterRef("pk"), delivered_at__isnull=True)
    return WebhookEvent.objects.filter(status__in=PRUNABLE, received_at__lt=cutoff).filter(
        ~Exists(undelivered)
    )


class Command(arguments.LedgePayCommand):
    help = (
        "Delete the processed and ignored webhook events received more than --days days "
        "ago, in batches, and print how many were deleted. Failed events, events not yet "
        "processed and events an undelivered transition refers to are kept; a delivered "
        "transition stays, without its event."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--days",
            type=int,
            required=True,
            metavar="N",
            help="Delete events received more than N days ago (N is at least 1).",
        )
        parser.add_argument(
            "--batch-size",
            type=int,
            default=DEFAULT_BATCH_SIZE,
            metavar="B",
            help=f"Delete B events per transaction, at most {MAX_BATCH_SIZE} "
            f"(default {DEFAULT_BATCH_SIZE}).",
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="Count what would be deleted; delete nothing."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        days = arguments.whole_number(options["days"], "--days")
        batch_size = arguments.whole_number(
            options["batch_size"], "--batch-size", high=MAX_BATCH_SIZE
        )
        try:
            cutoff = timezone.now() - datetime.timedelta(days=days)
        except OverflowError:
            raise arguments.usage_error(
                f"--days {days} reaches before the calendar's start."
            ) from None
        when = f"received before {iso_z(cutoff)}"
        if options["dry_run"]:
            count = prunable(cutoff).count()
            self.stdout.write(f"Would delete {count} webhook event{pluralize(count)} {when}.")
            return
        deleted = 0
        while True:
            # Ids first, a batch at a time: the rows themselves never all load at once.
            batch = list(prunable(cutoff).order_by("pk").values_list("pk", flat=True)[:batch_size])
            if not batch:
                break
            with transaction.atomic():
                # Checked again under the delete: a transition written meanwhile keeps its event.
                _, counts = prunable(cutoff).filter(pk__in=batch).only("pk").delete()
            done = counts.get(WebhookEvent._meta.label, 0)
            if not done:
                break
            deleted += done
            if int(options["verbosity"]) >= 2:
                self.stdout.write(f"Deleted {deleted} so far.")
        self.stdout.write(
            self.style.SUCCESS(f"Deleted {deleted} webhook event{pluralize(deleted)} {when}.")
        )
