from __future__ import annotations

from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import CommandError, CommandParser
from django.template.defaultfilters import pluralize

from django_ledgepay.client import background
from django_ledgepay.exceptions import LedgePayError
from django_ledgepay.management import arguments
from django_ledgepay.models import Payment
from django_ledgepay.services import SyncResult, sync_payments


class Command(arguments.LedgePayCommand):
    verbosity = 1
    #: The running result the sync last reported, so a failure can say what was done.
    done: SyncResult | None = None

    help = (
        "Mirror LedgePay's payments into the local database, page by page, and print what "
        "changed. Signals fire for payments that reach a final status. A second holding more "
        "payments of one status than LedgePay's list can page through ends the command with "
        "an error naming it, after the rest is mirrored."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--status", choices=Payment.Status.values, help="Only payments with this status."
        )
        parser.add_argument(
            "--created-after",
            metavar="T",
            help="Only payments created after T (ISO 8601; a date means its midnight, UTC).",
        )
        parser.add_argument(
            "--created-before",
            metavar="T",
            help="Only payments created before T (ISO 8601; a date means its midnight, UTC).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        self.verbosity = int(options["verbosity"])
        bounds = {
            name: arguments.moment(options[name], "--" + name.replace("_", "-"))
            for name in ("created_after", "created_before")
            if options[name] is not None
        }
        if len(bounds) == 2:
            arguments.window(
                bounds["created_after"],
                bounds["created_before"],
                "--created-after",
                "--created-before",
            )
        self.done = None
        try:
            # An operator's command waits out LedgePay's rate limit (see patience()).
            with background():
                result = sync_payments(status=options["status"], progress=self._progress, **bounds)
        except (LedgePayError, ImproperlyConfigured) as err:
            # ImproperlyConfigured names the setting to fix (LEDGEPAY_API_KEY), never its value.
            raise CommandError(self._stopped(err)) from err
        if result.unlisted:
            # What was mirrored stays; the run still fails, so that cron or CI notices.
            self.stdout.write(f"Synced {result}.")
            seconds = len(result.unlisted)
            raise CommandError(
                f"Sync incomplete: LedgePay's list could not page through {seconds} "
                f"second{pluralize(seconds)}, even by status: "
                + "; ".join(str(unlisted) for unlisted in result.unlisted)
                + ". The payments it could not list are not mirrored; the rest are."
            )
        self.stdout.write(self.style.SUCCESS(f"Synced {result}."))

    def _stopped(self, err: Exception) -> str:
        """What a failed sync says: the error, after what the pages read so far changed."""
        done = self.done
        if done is None or not done.pages:
            return f"Sync stopped: {err}"
        pages = f"{done.pages} page{pluralize(done.pages)}"
        payments = f"{done.total} payment{pluralize(done.total)}"
        return (
            f"Sync stopped after {pages} ({payments}: {done.created} created, "
            f"{done.updated} updated): {err}"
        )

    def _progress(self, result: SyncResult) -> None:
        self.done = result
        if self.verbosity >= 1:
            self.stdout.write(
                f"Page {result.pages}: {result.total} payment{pluralize(result.total)} so far "
                f"({result.created} created, {result.updated} updated)."
            )
