from __future__ import annotations

import datetime
import json
from typing import Any, Final

from django.core.management.base import CommandError, CommandParser
from django.template.defaultfilters import pluralize
from django.utils import timezone

from django_ledgepay.client import background
from django_ledgepay.management import arguments
from django_ledgepay.reconcile import Report, describe, reconcile

DEFAULT_DAYS: Final = 30
#: A longer window needs --yes: its listing can take long and cost many API calls.
MAX_DAYS_WITHOUT_YES: Final = 366
#: The exit status when drift remains.
DRIFT: Final = 1
#: The exit status when nothing could be checked: LedgePay could not be read, or bad input
#: (the status of every command's usage errors).
FAILED: Final = arguments.USAGE


class Command(arguments.LedgePayCommand):
    help = (
        "Compare the mirror with LedgePay for the payments created from --since to --until "
        "(ISO 8601; by default the last 30 days) and report the drift: missing, status, "
        "amount, unresolved_refund, unlisted, unknown. A dry run unless --apply, which "
        "repairs what it can through the services. Exit status: 0 when no drift remains, "
        "1 when some does, 2 when LedgePay could not be read or the arguments are wrong."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--since",
            metavar="T",
            help="Payments created at or after T (ISO 8601; a date means its midnight, UTC). "
            f"Default: {DEFAULT_DAYS} days before --until.",
        )
        parser.add_argument(
            "--until",
            metavar="T",
            help="Payments created before T (ISO 8601; a date means its midnight, UTC). "
            "Default: now.",
        )
        parser.add_argument(
            "--apply",
            action="store_true",
            help="Repair what can be repaired (signals are sent once, source 'sync').",
        )
        parser.add_argument(
            "--format",
            choices=("text", "json"),
            default="text",
            help='json prints {"drift": [...], ...summary} on stdout; progress goes to stderr.',
        )
        parser.add_argument(
            "--yes",
            action="store_true",
            help=f"Allow a window longer than {MAX_DAYS_WITHOUT_YES} days.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        verbosity = int(options["verbosity"])
        as_json = options["format"] == "json"
        since, until = self._window(options)
        progress_out = self.stderr if as_json else self.stdout

        def progress(report: Report) -> None:
            if verbosity >= 1:
                found = len(report.drift)
                progress_out.write(
                    f"Page {report.pages}: {report.checked} payment{pluralize(report.checked)} "
                    f"checked, {found} drift so far."
                )

        # An operator's command waits out LedgePay's rate limit (see patience()).
        with background():
            report = reconcile(since=since, until=until, apply=options["apply"], progress=progress)
        if as_json:
            self.stdout.write(json.dumps(report.as_dict(), indent=2))
        else:
            for line in describe(report.drift):
                self.stdout.write(line)
        if report.error:
            raise CommandError(
                f"LedgePay could not be read: {report.error} Checked before that: {report}.",
                returncode=FAILED,
            )
        remaining = len(report.remaining)
        if remaining:
            raise CommandError(
                f"Drift remains: {remaining} entr{pluralize(remaining, 'y,ies')} ({report}).",
                returncode=DRIFT,
            )
        if not as_json:
            self.stdout.write(self.style.SUCCESS(f"No drift remains: {report}."))

    def _window(self, options: dict[str, Any]) -> tuple[datetime.datetime, datetime.datetime]:
        until = (
            timezone.now()
            if options["until"] is None
            else arguments.moment(options["until"], "--until")
        )
        if options["since"] is None:
            since = until - datetime.timedelta(days=DEFAULT_DAYS)
        else:
            since = arguments.moment(options["since"], "--since")
        arguments.window(since, until, "--since", "--until")
        if until - since > datetime.timedelta(days=MAX_DAYS_WITHOUT_YES) and not options["yes"]:
            days = (until - since).days
            raise arguments.usage_error(
                f"The window is {days} days long: pass --yes to reconcile more than "
                f"{MAX_DAYS_WITHOUT_YES} days at once, or a shorter --since/--until."
            )
        return since, until
