from __future__ import annotations

from typing import Any

from django.core.management.base import CommandError, CommandParser
from django.template.defaultfilters import pluralize

from django_ledgepay import delivery
from django_ledgepay.management import arguments
from django_ledgepay.models import Transition


class Command(arguments.LedgePayCommand):
    help = (
        "Deliver the transitions whose receivers have not all succeeded: those whose next "
        "attempt is due, or with --all every undelivered one. A receiver another deliverer "
        "(a task worker) is running is left to it. Run it from cron (every few minutes) to "
        "catch up deliveries that a crash or a lost task left behind."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--all",
            action="store_true",
            help="Every undelivered transition, ignoring the backoff and those given up.",
        )
        parser.add_argument(
            "--id",
            type=int,
            action="append",
            dest="ids",
            metavar="N",
            help="Deliver this transition (repeat for several), whatever its schedule.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        verbosity = int(options["verbosity"])
        ids = arguments.ids(options["ids"])
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
        if failed:
            raise CommandError(summary)
        self.stdout.write(self.style.SUCCESS(summary))
