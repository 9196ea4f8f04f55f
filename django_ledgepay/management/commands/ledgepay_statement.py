from __future__ import annotations

import json
from typing import Any, Final

from django.core.management.base import CommandError, CommandParser
from django.template.defaultfilters import pluralize

from django_ledgepay import exports
from django_ledgepay.management import arguments
from django_ledgepay.monthly import Statement, describe, month_window, monthly_statement

#: The exit status when the mirror and LedgePay differ.
DIFFERS: Final = 1
#: The exit status when LedgePay could not be read, or the arguments are wrong.
FAILED: Final = arguments.USAGE


class Command(arguments.LedgePayCommand):
    help = (
        "Per currency, the count and sum of the payments that succeeded and of the refunds "
        "that succeeded among those created in --month (UTC), and the net, from the mirror; "
        "checked against LedgePay's list of the payments created that month, each "
        "difference named (refunds come from the mirror: LedgePay lists no refunds). Exit "
        "status: 0 when they agree, 1 when they differ, 2 when LedgePay could not be read "
        "or the arguments are wrong."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--month", metavar="YYYY-MM", required=True, help="The month, e.g. 2026-01 (UTC)."
        )
        parser.add_argument(
            "--account",
            metavar="A",
            help=f"Only account A. This version has one account, {exports.DEFAULT_ACCOUNT!r}, "
            "the only name taken. Default: every account.",
        )
        parser.add_argument(
            "--format",
            choices=("text", "json"),
            default="text",
            help='json prints {"month": ..., "currencies": [...], ...} on stdout; progress '
            "goes to stderr.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            month_window(options["month"])
        except ValueError as err:
            raise arguments.usage_error(str(err)) from None
        try:
            exports.check_account(options["account"])
        except exports.UnknownAccountError as err:
            raise arguments.usage_error(f"--account: {err}") from None
        as_json = options["format"] == "json"
        verbosity = int(options["verbosity"])

        def progress(statement: Statement) -> None:
            if verbosity >= 1:
                listed, pages = statement.listed, statement.pages
                self.stderr.write(
                    f"Page {pages}: {listed} payment{pluralize(listed)} listed by LedgePay, "
                    f"{len(statement.differences)} difference"
                    f"{pluralize(len(statement.differences))} so far.",
                    style_func=str,
                )

        statement = monthly_statement(
            options["month"], account=options["account"], progress=progress
        )
        if as_json:
            self.stdout.write(json.dumps(statement.as_dict(), indent=2))
        else:
            self.stdout.write(f"Statement of {statement}.")
            for line in statement.currencies:
                self.stdout.write(str(line))
            if not statement.lines:
                self.stdout.write("No payment or refund succeeded that month.")
            for difference in describe(statement.differences):
                self.stdout.write(difference)
        if statement.error:
            raise CommandError(
                f"LedgePay could not be read: {statement.error} The mirror's totals are shown; "
                "they could not be checked.",
                returncode=FAILED,
            )
        if not statement.agrees:
            count = len(statement.differences)
            differing = ", ".join(
                line.currency for line in statement.currencies if not line.agrees
            )
            raise CommandError(
                f"The mirror and LedgePay differ for {statement.month}: {count} "
                f"difference{pluralize(count)}" + (f" ({differing})." if differing else "."),
                returncode=DIFFERS,
            )
        if not as_json:
            self.stdout.write(
                self.style.SUCCESS(f"The mirror agrees with LedgePay for {statement.month}.")
            )
