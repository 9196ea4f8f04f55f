from __future__ import annotations

from typing import Any, Final

from django.core.management.base import CommandError, CommandParser

from django_ledgepay.erasure import NoSuchPaymentError, erase_personal_data
from django_ledgepay.management import arguments
from django_ledgepay.models import Erasure

#: The exit status when the payment named does not exist.
NOT_FOUND: Final = 1
MAX_REFERENCE: Final = 255


class Command(arguments.LedgePayCommand):
    help = (
        "Erase a customer's personal data from the mirror: the customer_email and "
        "customer_name of their payments (--email: every payment with that address, "
        "whatever its case; --payment: that one), and the same data in the stored webhook "
        "deliveries, payment and refund requests, transitions and receivers' records. Ids, "
        "amounts, currencies, statuses and dates stay, so reports and reconciliation still "
        "add up; a later sync or webhook does not bring the data back. Prints what it "
        "changed, never the data, and records when and by what (model Erasure)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        which = parser.add_mutually_exclusive_group(required=True)
        which.add_argument(
            "--email", metavar="E", help="The customer's e-mail address (compared without case)."
        )
        which.add_argument("--payment", metavar="ID", help="One payment's LedgePay id.")
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="Say what would be erased; change and record nothing.",
        )
        parser.add_argument(
            "--reference",
            metavar="REF",
            default="",
            help="Recorded with the erasure, e.g. the request's ticket number (never "
            f"personal data; at most {MAX_REFERENCE} characters).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        email, payment = options["email"], options["payment"]
        if email is not None and not email.strip():
            raise arguments.usage_error("--email must not be empty.")
        if payment is not None and not payment.strip():
            raise arguments.usage_error("--payment must not be empty.")
        if len(options["reference"]) > MAX_REFERENCE:
            raise arguments.usage_error(f"--reference must be at most {MAX_REFERENCE} characters.")
        try:
            report = erase_personal_data(
                email=email,
                payment=payment.strip() if payment is not None else None,
                dry_run=options["dry_run"],
                reference=options["reference"],
                source=Erasure.Source.COMMAND,
            )
        except NoSuchPaymentError as err:
            raise CommandError(str(err), returncode=NOT_FOUND) from err
        *lines, last = report.lines
        for line in lines:
            self.stdout.write(line)
        self.stdout.write(last if report.dry_run else self.style.SUCCESS(last))
