from __future__ import annotations

import datetime
import json
from typing import Any, Final

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.template.defaultfilters import pluralize
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from django_ledgepay.client import patience
from django_ledgepay.reconcile import Report, describe, reconcile

DEFAULT_DAYS: Final = 30
#: A longer window needs --yes: its listing can take long and cost many API calls.
MAX_DAYS_WITHOUT_YES: Final = 366
#: The exit status when drift remains.
DRIFT: Final = 1
#: The exit status when nothing could be checked: LedgePay could not be read, or bad input.
FAILED: Final = 2


class Command(BaseCommand):
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
        with patience(None):
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
        until = _moment(options["until"], "--until") if options["until"] else timezone.now()
        if options["since"]:
            since = _moment(options["since"], "--since")
        else:
            since = until - datetime.timedelta(days=DEFAULT_DAYS)
        if since >= until:
            raise CommandError(
                f"--since ({since.isoformat()}) must be before --until ({until.isoformat()}).",
                returncode=FAILED,
            )
        if until - since > datetime.timedelta(days=MAX_DAYS_WITHOUT_YES) and not options["yes"]:
            days = (until - since).days
            raise CommandError(
                f"The window is {days} days long: pass --yes to reconcile more than "
                f"{MAX_DAYS_WITHOUT_YES} days at once, or a shorter --since/--until.",
                returncode=FAILED,
            )
        return since, until


def _moment(value: str, flag: str) -> datetime.datetime:
    """An aware datetime from ISO 8601 (UTC when it names no zone), within years 2 to 9998."""
    try:
        moment = parse_datetime(value)
        if moment is None:
            day = parse_date(value)
            if day is not None:
                moment = datetime.datetime.combine(day, datetime.time())
    except ValueError:
        moment = None
    if moment is None:
        raise CommandError(
            f"{flag} must be an ISO 8601 time like 2024-01-15T10:30:00Z or a date like "
            f"2024-01-15, not {value!r}.",
            returncode=FAILED,
        )
    if timezone.is_naive(moment):
        moment = timezone.make_aware(moment, datetime.timezone.utc)
    try:
        moment = moment.astimezone(datetime.timezone.utc)
    except OverflowError:
        moment = None
    if moment is None or not datetime.MINYEAR < moment.year < datetime.MAXYEAR:
        raise CommandError(f"{flag} is out of range: {value!r}.", returncode=FAILED)
    return moment
