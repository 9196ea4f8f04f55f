from __future__ import annotations

import datetime
from typing import Any, Final

from django.core.management.base import CommandParser
from django.db import transaction
from django.db.models import Exists, OuterRef, QuerySet
from django.template.defaultfilters import pluralize
from django.utils import timezone

from django_ledgepay.management import arguments
from django_ledgepay.models import Reaction, Transition, WebhookEvent
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


def delivery_records(cutoff: datetime.datetime, *, after: int = 0) -> QuerySet[Reaction]:
    """The receivers' records (:class:`~django_ledgepay.models.Reaction`: their successes,
    claims and errors) of the transitions delivered before ``cutoff``, from the id
    ``after`` on: once a transition is delivered they serve nothing more."""
    return Reaction.objects.filter(pk__gt=after, transition__delivered_at__lt=cutoff)


class Command(arguments.LedgePayCommand):
    help = (
        "Delete, in batches, the processed and ignored webhook events received more than "
        "--days days ago, and the receivers' success records of the transitions delivered "
        "more than --days days ago, and print how many were deleted. Failed events, events "
        "not yet processed and events an undelivered transition refers to are kept; the "
        "transitions stay (the payments' audit trail), without their event. The task "
        "backend's finished tasks are its own to prune: with django-tasks-db, "
        "manage.py prune_db_task_results."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--days",
            type=int,
            required=True,
            metavar="N",
            help="Delete events received, and receivers' records of transitions delivered, "
            "more than N days ago (N is at least 1).",
        )
        parser.add_argument(
            "--batch-size",
            type=int,
            default=DEFAULT_BATCH_SIZE,
            metavar="B",
            help=f"Delete B rows per transaction, at most {MAX_BATCH_SIZE} "
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
        records = f"of transitions delivered before {iso_z(cutoff)}"
        if options["dry_run"]:
            count = prunable(cutoff).count()
            self.stdout.write(f"Would delete {count} webhook event{pluralize(count)} {when}.")
            count = delivery_records(cutoff).count()
            self.stdout.write(
                f"Would delete {count} receivers' record{pluralize(count)} {records}."
            )
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
        deleted = self.prune_delivery_records(cutoff, batch_size, int(options["verbosity"]))
        self.stdout.write(
            self.style.SUCCESS(
                f"Deleted {deleted} receivers' record{pluralize(deleted)} {records}."
            )
        )

    def prune_delivery_records(
        self, cutoff: datetime.datetime, batch_size: int, verbosity: int
    ) -> int:
        deleted = last = 0
        while True:
            # By id from where the last batch ended: each batch reads only what it deletes
            # (and the few records of transitions not yet delivered), however large the
            # table. A transition is never undelivered again: no check under the delete.
            batch = list(
                delivery_records(cutoff, after=last)
                .order_by("pk")
                .values_list("pk", flat=True)[:batch_size]
            )
            if not batch:
                break
            last = batch[-1]
            deleted += Reaction.objects.filter(pk__in=batch).delete()[0]
            if verbosity >= 2:
                self.stdout.write(f"Deleted {deleted} receivers' records so far.")
        return deleted
