from __future__ import annotations

from typing import Any

from django.core.management.base import CommandError, CommandParser
from django.db.models import QuerySet
from django.template.defaultfilters import pluralize
from django.utils import timezone

from django_ledgepay import delivery
from django_ledgepay.client import patience
from django_ledgepay.management import arguments
from django_ledgepay.models import Transition, WebhookEvent
from django_ledgepay.webhooks import process_event


def lost_events(*, everything: bool = False) -> QuerySet[WebhookEvent]:
    """The stored deliveries whose processing was lost (a task that died with its worker,
    a backend that was down): still ``received`` longer than ``delivery.GRACE`` after they
    were stored, or with ``everything`` every one still ``received``, oldest first."""
    rows = WebhookEvent.objects.filter(status=WebhookEvent.Status.RECEIVED)
    if not everything:
        rows = rows.filter(received_at__lt=timezone.now() - delivery.GRACE)
    return rows.order_by("received_at", "pk")


class Command(arguments.LedgePayCommand):
    help = (
        "Catch up what a crash or a lost task left behind: apply the stored webhook "
        "deliveries whose processing was lost (still received 5 minutes after they were "
        "stored), then deliver the transitions whose receivers have not all succeeded and "
        "whose next attempt is due. With --all, every stored delivery not yet applied and "
        "every undelivered transition. A receiver another deliverer (a task worker) is "
        "running is left to it. The one command to run from cron, every few minutes; it "
        "exits 1 while a receiver still fails or a delivery could not be applied."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--all",
            action="store_true",
            help="Every stored delivery not yet applied, whatever its age, and every "
            "undelivered transition, ignoring the backoff and those given up.",
        )
        parser.add_argument(
            "--id",
            type=int,
            action="append",
            dest="ids",
            metavar="N",
            help="Deliver this transition (repeat for several), whatever its schedule; "
            "stored deliveries are then left alone.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        verbosity = int(options["verbosity"])
        ids = arguments.ids(options["ids"])
        applied = not_applied = 0
        if ids:
            found = set(Transition.objects.filter(pk__in=ids).values_list("pk", flat=True))
            missing = sorted(set(ids) - found)
            if missing:
                raise CommandError(f"No transition with id {', '.join(map(str, missing))}.")
            rows = delivery.undelivered(everything=True).filter(pk__in=ids)
            pending = list(rows.values_list("pk", flat=True))
            if verbosity >= 1:
                for transition_id in sorted(found - set(pending)):
                    self.stdout.write(f"Transition {transition_id}: already delivered.")
        else:
            # First the deliveries, whose transitions are then delivered too (with --all)
            # or by their tasks.
            applied, not_applied = self.apply_lost_events(options["all"], verbosity)
            # Only the ids in memory, so a long backlog costs little while it is delivered.
            pending = list(
                delivery.undelivered(everything=options["all"]).values_list("pk", flat=True)
            )
        delivered = failed = elsewhere = 0
        for transition_id in pending:
            outcome = delivery.deliver(transition_id)
            if outcome.transition is None:
                continue
            if outcome.delivered:
                delivered += 1
                if verbosity >= 2:
                    self.stdout.write(f"Transition {transition_id}: delivered.")
            elif outcome.failed:
                failed += 1
                self.stdout.write(
                    self.style.ERROR(
                        f"Transition {transition_id} ({outcome.transition.signal}): "
                        f"{', '.join(outcome.failed)} raised; see its error in the admin."
                    )
                )
            elif outcome.skipped:
                elsewhere += 1
                if verbosity >= 2:
                    self.stdout.write(
                        f"Transition {transition_id}: {', '.join(outcome.skipped)} "
                        "claimed by another deliverer; left to it."
                    )
        summary = (
            f"Delivered {delivered} transition{pluralize(delivered)}; {failed} still failing."
        )
        if elsewhere:
            summary += f" {elsewhere} being delivered by another deliverer."
        if applied or not_applied:
            total = applied + not_applied
            summary += (
                f" Applied {total} stored webhook deliver{pluralize(total, 'y,ies')} whose "
                f"processing was lost; {not_applied} failed."
            )
        if failed or not_applied:
            raise CommandError(summary)
        self.stdout.write(self.style.SUCCESS(summary))

    def apply_lost_events(self, everything: bool, verbosity: int) -> tuple[int, int]:
        """Apply the stored deliveries whose processing was lost; how many were applied
        (or ignored), and how many failed."""
        applied = failed = 0
        # The ids first, then each event read as it is applied: a long backlog costs
        # little memory, and an event another process applied meanwhile is left.
        for event_id in list(lost_events(everything=everything).values_list("pk", flat=True)):
            event = WebhookEvent.objects.filter(pk=event_id).first()
            if event is None or event.is_processed:
                continue
            # An operator's command waits out LedgePay's rate limit (see patience()).
            with patience(None):
                process_event(event)
            line = f"Event {event.pk} ({event.event_type} {event.object_id}): {event.status}"
            if event.status == WebhookEvent.Status.FAILED:
                failed += 1
                self.stdout.write(
                    self.style.ERROR(
                        f"{line}: {event.error} (ledgepay_reprocess --id {event.pk} applies "
                        "it again)"
                    )
                )
            else:
                applied += 1
                if verbosity >= 2:
                    self.stdout.write(line)
        return applied, failed
