from __future__ import annotations

import datetime
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import CommandError, CommandParser
from django.template.defaultfilters import pluralize
from django.utils import timezone

from django_ledgepay.client import background
from django_ledgepay.exceptions import LedgePayError
from django_ledgepay.management import arguments
from django_ledgepay.models import Payment
from django_ledgepay.services import SyncResult, sync_payments
from django_ledgepay.sync import STALE_DAYS, StaleResult, sync_stale_payments

#: The options of a listing sync, which --stale (a sync by id) does not take.
LISTING_OPTIONS = ("status", "created_after", "created_before")


class Command(arguments.LedgePayCommand):
    verbosity = 1
    #: The running result the sync last reported, so a failure can say what was done.
    done: SyncResult | None = None
    #: The same for a sync of stale payments (--stale).
    stale: StaleResult | None = None

    help = (
        "Mirror LedgePay's payments into the local database, page by page, and print what "
        "changed. Signals fire for payments that reach a final status. A second holding more "
        "payments of one status than LedgePay's list can page through ends the command with "
        "an error naming it, after the rest is mirrored. With --stale MINUTES, ask LedgePay "
        "instead about each payment pending for longer than MINUTES, by id (no list call), "
        "for cron every few minutes. LedgePay out of reach ends either with exit status 1, "
        "after what was done."
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
        parser.add_argument(
            "--stale",
            type=int,
            metavar="MINUTES",
            help="Ask LedgePay, one payment at a time, about each payment pending for longer "
            "than MINUTES (at least 1), and apply its answer. Not with --status, "
            "--created-after or --created-before.",
        )
        parser.add_argument(
            "--days",
            type=int,
            metavar="N",
            help=f"With --stale: only payments created within the last N days (default "
            f"{STALE_DAYS}); older ones are left to ledgepay_reconcile.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        self.verbosity = int(options["verbosity"])
        if options["stale"] is not None:
            self._sync_stale(options)
            return
        if options["days"] is not None:
            raise arguments.usage_error("--days goes with --stale.")
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

    def _sync_stale(self, options: dict[str, Any]) -> None:
        given = [name for name in LISTING_OPTIONS if options[name] is not None]
        if given:
            flags = " or ".join("--" + name.replace("_", "-") for name in given)
            raise arguments.usage_error(f"--stale cannot be combined with {flags}.")
        minutes = arguments.whole_number(options["stale"], "--stale")
        days = STALE_DAYS
        if options["days"] is not None:
            days = arguments.whole_number(options["days"], "--days")
        try:
            timezone.now() - datetime.timedelta(days=days)
        except OverflowError:
            raise arguments.usage_error(
                f"--days {days} reaches before the calendar's start."
            ) from None
        if minutes >= days * 24 * 60:
            raise arguments.usage_error(
                f"--stale {minutes} is not less than --days {days} ({days * 24 * 60} "
                "minutes): no payment created in the window can have been pending that long."
            )
        self.stale = None
        try:
            # Background work: it leaves LEDGEPAY_RATE_LIMIT_RESERVE requests to checkout.
            with background():
                result = sync_stale_payments(minutes=minutes, days=days, progress=self._asked)
        except (LedgePayError, ImproperlyConfigured) as err:
            # ImproperlyConfigured names the setting to fix (LEDGEPAY_API_KEY), never its value.
            done = self.stale
            if done is None or not done.asked:
                raise CommandError(f"Sync stopped: {err}") from err
            raise CommandError(
                f"Sync stopped after asking about {done.asked} of {done.found} stale "
                f"payment{pluralize(done.found)} ({done.settled} settled): {err}"
            ) from err
        if result.refused:
            self.stdout.write(f"Synced {result}.")
            raise CommandError(
                f"LedgePay did not answer for {len(result.refused)} stale "
                f"payment{pluralize(len(result.refused))}: "
                + "; ".join(
                    f"{ledgepay_id}: {error}" for ledgepay_id, error in result.refused.items()
                )
                + ". The others are synced."
            )
        self.stdout.write(self.style.SUCCESS(f"Synced {result}."))

    def _asked(self, result: StaleResult) -> None:
        self.stale = result
        if self.verbosity >= 2:
            self.stdout.write(f"Asked about {result.asked} of {result.found} so far.")

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
