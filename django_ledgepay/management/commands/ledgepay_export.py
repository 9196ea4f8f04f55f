from __future__ import annotations

import contextlib
import datetime
import os
import tempfile
from collections.abc import Callable, Iterable
from typing import IO, Any, Final

from django.core.management.base import CommandError, CommandParser
from django.db import DatabaseError
from django.template.defaultfilters import pluralize

from django_ledgepay import exports
from django_ledgepay.management import arguments
from django_ledgepay.services import iso_z

#: A progress line on standard error every this many rows.
PROGRESS_EVERY: Final = 10_000
#: Lines written at once.
WRITE_EVERY: Final = 500


class Command(arguments.LedgePayCommand):
    help = (
        "Export the mirror's payments or refunds created from --since to --until, one row "
        "each, as CSV or JSON Lines, to standard output or --output FILE. Read from the "
        "database only, never from LedgePay, and streamed: memory stays flat however many "
        "rows. Amounts are exact: minor units and amount_major from the currency's "
        "exponent; times ISO 8601 in UTC. Progress goes to standard error."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--kind",
            choices=exports.KINDS,
            required=True,
            help="payments: ledgepay_id, account, status, amount, currency, amount_major, "
            "amount_refunded, description, customer_email, created_at, completed_at. "
            "refunds: ledgepay_id, payment, account, status, amount, currency, amount_major, "
            "reason, created_at.",
        )
        parser.add_argument(
            "--since",
            metavar="T",
            help="Rows created at or after T (ISO 8601; a date means its midnight, UTC). "
            "Default: from the first.",
        )
        parser.add_argument(
            "--until",
            metavar="T",
            help="Rows created before T (ISO 8601; a date means its midnight, UTC). "
            "Default: to the last.",
        )
        parser.add_argument(
            "--account",
            metavar="A",
            help=f"Only account A's rows. This version has one account, "
            f"{exports.DEFAULT_ACCOUNT!r}, the only name taken. Default: every account.",
        )
        parser.add_argument(
            "--format",
            choices=exports.FORMATS,
            default=exports.CSV,
            help="csv (a header line, then one line per row) or jsonl (one JSON object per "
            "line). Default: csv.",
        )
        parser.add_argument(
            "--output",
            metavar="FILE",
            help="Write to FILE (replaced once the export is complete, readable by its owner "
            "only) instead of standard output.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        kind, fmt = options["kind"], options["format"]
        since, until = self._window(options)
        try:
            exports.check_account(options["account"])
        except exports.UnknownAccountError as err:
            raise arguments.usage_error(f"--account: {err}") from None
        path = options["output"]
        if path == "-":
            path = None
        verbosity = int(options["verbosity"])
        # The file first: a place it cannot be written to is refused before anything is read.
        temporary = _open_temporary(path) if path else None
        queryset = exports.window(kind, since, until)
        described = f"{kind} created {_describe(since, until)}"
        try:
            total = queryset.count() if verbosity >= 1 else 0
            if verbosity >= 1:
                self.stderr.write(f"Exporting {total} {described}.", style_func=str)
            lines = exports.lines(kind, queryset, fmt=fmt)
            if temporary is not None:
                with temporary:
                    written = self._write(lines, temporary.write, total, options)
                os.replace(temporary.name, path)
            else:
                written = self._write(
                    lines, lambda text: self.stdout.write(text, ending=""), total, options
                )
        except BaseException as err:
            if temporary is not None:
                _remove(temporary.name)
            if isinstance(err, OSError):
                raise CommandError(f"The export could not be written: {err}.") from err
            if isinstance(err, DatabaseError):
                raise CommandError(f"The export stopped: the database failed: {err}") from err
            raise
        if verbosity >= 1:
            where = f" to {path}" if path else ""
            self.stderr.write(
                f"Exported {written} {_kind(kind, written)}{where}.", style_func=self.style.SUCCESS
            )

    def _write(
        self, lines: Iterable[str], write: Callable[[str], Any], total: int, options: Any
    ) -> int:
        """Write the lines in batches, with a progress line every :data:`PROGRESS_EVERY`
        rows; return how many rows were written (a CSV header is not one)."""
        kind, verbosity = options["kind"], int(options["verbosity"])
        count = -1 if options["format"] == exports.CSV else 0
        batch: list[str] = []
        for line in lines:
            batch.append(line)
            count += 1
            if len(batch) >= WRITE_EVERY:
                write("".join(batch))
                batch = []
            if verbosity >= 1 and count > 0 and count % PROGRESS_EVERY == 0:
                share = f" ({count * 100 // total}%)" if total else ""
                self.stderr.write(f"Exported {count} of {total} {kind}{share}.", style_func=str)
        if batch:
            write("".join(batch))
        return max(count, 0)

    def _window(
        self, options: dict[str, Any]
    ) -> tuple[datetime.datetime | None, datetime.datetime | None]:
        since = until = None
        if options["since"] is not None:
            since = arguments.moment(options["since"], "--since")
        if options["until"] is not None:
            until = arguments.moment(options["until"], "--until")
        if since is not None and until is not None:
            arguments.window(since, until, "--since", "--until")
        return since, until


def _kind(kind: str, count: int) -> str:
    singular = kind[:-1]
    return f"{singular}{pluralize(count)}"


def _describe(since: datetime.datetime | None, until: datetime.datetime | None) -> str:
    if since is not None and until is not None:
        return f"from {iso_z(since)} to {iso_z(until)}"
    if since is not None:
        return f"from {iso_z(since)} on"
    if until is not None:
        return f"before {iso_z(until)}"
    return "at any time"


def _open_temporary(path: str) -> IO[str]:
    """A file beside ``path`` to write the export to, moved over ``path`` once complete; a
    usage error, in one line, when ``path`` cannot be written."""
    directory = os.path.dirname(os.path.abspath(path))
    problem = ""
    if os.path.isdir(path):
        problem = "it is a directory"
    elif not os.path.isdir(directory):
        problem = f"there is no directory {directory}"
    elif os.path.exists(path) and not os.access(path, os.W_OK):
        problem = "the file is not writable"
    if not problem:
        try:
            return tempfile.NamedTemporaryFile(
                "w",
                encoding="utf-8",
                newline="",
                dir=directory,
                prefix=f".{os.path.basename(path)}.",
                suffix=".partial",
                delete=False,
            )
        except OSError as err:
            problem = err.strerror or str(err)
    raise arguments.usage_error(f"--output {path} cannot be written: {problem}.")


def _remove(name: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(name)
