from __future__ import annotations

import json
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import CommandError, CommandParser
from django.db import DatabaseError

from django_ledgepay import health
from django_ledgepay.management import arguments

#: The exit status when the health could not be judged: as a critical finding, since
#: nothing is known to be well.
UNKNOWN = health.STATUSES.index(health.CRITICAL)


class Command(arguments.LedgePayCommand):
    help = (
        "Report what needs a person, from the database alone (LedgePay is never called): "
        "deliveries (transitions past due or given up), events (failed, or stored and not "
        "applied), refunds (outcome unknown), pending (payments pending for longer than "
        "LEDGEPAY_STALE_PENDING_AFTER minutes), reconcile (drift the last reconciliation "
        "left), webhooks (no valid delivery for long while payments were created). Exit "
        "status: 0 when every check is ok, 1 on a warning, 2 on a critical finding (or "
        "when the database or the settings cannot be read)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--format",
            choices=("text", "json"),
            default="text",
            help='text prints a line per check; json prints {"status": ..., "checks": '
            '[{"name": ..., "status": ..., "detail": ...}, ...]}.',
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            report = health.run_checks()
        except ImproperlyConfigured as err:
            # It names the setting to fix, never its value.
            raise CommandError(f"Health unknown: {err}", returncode=UNKNOWN) from err
        except DatabaseError as err:
            raise CommandError(
                f"Health unknown: the database could not be read: {err}", returncode=UNKNOWN
            ) from err
        if options["format"] == "json":
            self.stdout.write(json.dumps(report.as_dict(), indent=2))
        else:
            styles = {
                health.OK: self.style.SUCCESS,
                health.WARNING: self.style.WARNING,
                health.CRITICAL: self.style.ERROR,
            }
            for check in report.checks:
                line = f"{check.name:<10} {check.status:<8} {check.detail}"
                self.stdout.write(styles[check.status](line))
        if report.exit_status:
            findings = "; ".join(
                f"{status}: {', '.join(names)}"
                for status in reversed(health.STATUSES[1:])
                if (names := [check.name for check in report.checks if check.status == status])
            )
            raise CommandError(f"Health: {findings}.", returncode=report.exit_status)
        if options["format"] != "json":
            self.stdout.write(self.style.SUCCESS("Health: ok."))
