"""What the ``ledgepay_*`` commands share to read their options.

Every mistake in a command's options is refused the same way, before anything is read or
written: a :class:`~django.core.management.CommandError` with exit status :data:`USAGE` (2,
as argparse exits), which the command line shows as one line on standard error.
"""

from __future__ import annotations

import datetime
from typing import Any, Final, NoReturn

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from django_ledgepay.services import iso_z

#: The exit status of a command given options it cannot use, as argparse's own.
USAGE: Final = 2
#: The largest id a 64-bit primary key holds (PostgreSQL's bigint, SQLite's INTEGER).
MAX_ID: Final = 2**63 - 1


def usage_error(message: str) -> CommandError:
    """The error a command raises for an option it cannot use."""
    return CommandError(message, returncode=USAGE)


class LedgePayCommandParser(CommandParser):
    """Django's parser, whose errors are usage errors: from ``call_command`` a
    :class:`CommandError` with exit status :data:`USAGE` (Django's has 1), from the command
    line one line on standard error and that status (argparse prints the usage first)."""

    def error(self, message: str) -> NoReturn:
        error = usage_error(message)
        if self.called_from_command_line:
            # As BaseCommand.run_from_argv reports a CommandError raised by handle().
            self.exit(error.returncode, f"{CommandError.__name__}: {error}\n")
        raise error


class LedgePayCommand(BaseCommand):
    """A command whose argument errors are usage errors (see :class:`LedgePayCommandParser`)."""

    def create_parser(self, prog_name: str, subcommand: str, **kwargs: Any) -> CommandParser:
        parser = super().create_parser(prog_name, subcommand, **kwargs)
        # BaseCommand.create_parser builds Django's parser and adds the common options to
        # it; only its errors change.
        parser.__class__ = LedgePayCommandParser
        return parser


def whole_number(value: object, flag: str, *, low: int = 1, high: int | None = None) -> int:
    """``value`` (an int, or its digits as typed) when it is from ``low`` to ``high``; a
    usage error otherwise."""
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str):
        try:
            number = int(value)
        except ValueError:
            number = None
    if number is None or number < low or (high is not None and number > high):
        if high is None:
            raise usage_error(f"{flag} must be a whole number, at least {low}.")
        raise usage_error(f"{flag} must be a whole number from {low} to {high}.")
    return number


def ids(values: list[Any] | None, flag: str = "--id") -> list[int]:
    """The ids given with each ``flag``, each a primary key a database can hold."""
    return [whole_number(value, flag, high=MAX_ID) for value in values or ()]


def moment(value: str, flag: str) -> datetime.datetime:
    """An aware datetime in UTC from ISO 8601 (UTC when it names no zone; a date means its
    midnight), within the years 2 to 9998; a usage error for anything else, "" included."""
    try:
        found = parse_datetime(value)
        if found is None:
            day = parse_date(value)
            if day is not None:
                found = datetime.datetime.combine(day, datetime.time())
    except ValueError:
        found = None
    if found is None:
        raise usage_error(
            f"{flag} must be an ISO 8601 time like 2024-01-15T10:30:00Z or a date like "
            f"2024-01-15, not {value!r}."
        )
    if timezone.is_naive(found):
        found = timezone.make_aware(found, datetime.timezone.utc)
    try:
        utc: datetime.datetime | None = found.astimezone(datetime.timezone.utc)
    except OverflowError:
        utc = None
    if utc is None or not datetime.MINYEAR < utc.year < datetime.MAXYEAR:
        raise usage_error(f"{flag} is out of range: {value!r}.")
    return utc


def window(
    start: datetime.datetime, end: datetime.datetime, start_flag: str, end_flag: str
) -> None:
    """A usage error unless ``start`` is before ``end``."""
    if start >= end:
        raise usage_error(
            f"{start_flag} ({iso_z(start)}) must be before {end_flag} ({iso_z(end)})."
        )
