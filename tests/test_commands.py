"""Every ``ledgepay_*`` command refuses bad input by one rule (docs/reference/commands.md):
one line on standard error, no traceback, exit status 2 for a usage error and 1 for an
object that does not exist; LedgePay unreachable exits as each command documents."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from django.core.management import CommandError, call_command
from django.utils import timezone

from django_ledgepay.models import Transition
from tests.conftest import API
from tests.factories import make_payment

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parent.parent
#: The commands this rule covers: the sandbox's command runs a server, and has rules of its own.
COMMANDS = sorted(
    path.stem
    for path in (ROOT / "django_ledgepay" / "management" / "commands").glob("ledgepay_*.py")
    if path.stem != "ledgepay_sandbox"
)
#: What a command needs to get past its required options.
REQUIRED = {
    "ledgepay_prune": ("--days=30",),
    "ledgepay_export": ("--kind=payments",),
    "ledgepay_statement": ("--month=2026-01",),
    "ledgepay_erase": ("--payment=pay_1",),
}
USAGE, MISSING = 2, 1
HUGE = "99999999999999999999999"
BIGINT_PAST = str(2**63)

#: (command, arguments, exit status, the start of the message), by kind of mistake.
CASES = [
    # An option the command does not have.
    *(
        (name, (*REQUIRED.get(name, ()), "--nope"), USAGE, "unrecognized arguments")
        for name in COMMANDS
    ),
    # A required option left out.
    ("ledgepay_prune", (), USAGE, "the following arguments are required: --days"),
    # A value that is not of the option's kind.
    ("ledgepay_deliver", ("--id", "x"), USAGE, "argument --id: invalid int value"),
    ("ledgepay_deliver", ("--id", "²"), USAGE, "argument --id: invalid int value"),
    ("ledgepay_reprocess", ("--id", "x"), USAGE, "argument --id: invalid int value"),
    ("ledgepay_prune", ("--days", "week"), USAGE, "argument --days: invalid int value"),
    ("ledgepay_prune", ("--days=1", "--batch-size=x"), USAGE, "argument --batch-size: invalid"),
    ("ledgepay_sync", ("--status", "paid"), USAGE, "argument --status: invalid choice"),
    ("ledgepay_sync", ("--created-after", "x"), USAGE, "--created-after must be an ISO 8601"),
    ("ledgepay_reconcile", ("--format", "xml"), USAGE, "argument --format: invalid choice"),
    ("ledgepay_reconcile", ("--since", "x"), USAGE, "--since must be an ISO 8601 time"),
    ("ledgepay_health", ("--format", "xml"), USAGE, "argument --format: invalid choice"),
    ("ledgepay_sync", ("--stale", "x"), USAGE, "argument --stale: invalid int value"),
    # A number that no database holds, or out of the option's range.
    ("ledgepay_deliver", ("--id", HUGE), USAGE, "--id must be a whole number from 1 to"),
    ("ledgepay_deliver", ("--id", BIGINT_PAST), USAGE, "--id must be a whole number from 1 to"),
    ("ledgepay_deliver", ("--id", "0"), USAGE, "--id must be a whole number from 1 to"),
    ("ledgepay_reprocess", ("--id", HUGE), USAGE, "--id must be a whole number from 1 to"),
    ("ledgepay_reprocess", ("--id", "-1"), USAGE, "--id must be a whole number from 1 to"),
    ("ledgepay_prune", ("--days=1", f"--batch-size={BIGINT_PAST}"), USAGE, "--batch-size must"),
    ("ledgepay_prune", ("--days=1", "--batch-size=0"), USAGE, "--batch-size must be a whole"),
    ("ledgepay_prune", ("--days=0",), USAGE, "--days must be a whole number, at least 1."),
    ("ledgepay_prune", ("--days=800000",), USAGE, "--days 800000 reaches before the calendar"),
    ("ledgepay_sync", ("--stale=0",), USAGE, "--stale must be a whole number, at least 1."),
    ("ledgepay_sync", ("--created-after=0001-01-01T00:00:00+01:00",), USAGE, "--created-after is"),
    ("ledgepay_reconcile", ("--until=9999-12-31T23:00:00-02:00",), USAGE, "--until is out of"),
    # An empty time: not a default.
    ("ledgepay_sync", ("--created-after=",), USAGE, "--created-after must be an ISO 8601 time"),
    ("ledgepay_sync", ("--created-before=",), USAGE, "--created-before must be an ISO 8601"),
    ("ledgepay_reconcile", ("--since=",), USAGE, "--since must be an ISO 8601 time"),
    ("ledgepay_reconcile", ("--until=",), USAGE, "--until must be an ISO 8601 time"),
    # A window that ends before it starts.
    (
        "ledgepay_sync",
        ("--created-after=2024-02-01", "--created-before=2024-01-01"),
        USAGE,
        "--created-after (2024-02-01T00:00:00Z) must be before --created-before "
        "(2024-01-01T00:00:00Z).",
    ),
    (
        "ledgepay_reconcile",
        ("--since=2024-02-01", "--until=2024-01-01"),
        USAGE,
        "--since (2024-02-01T00:00:00Z) must be before --until (2024-01-01T00:00:00Z).",
    ),
    # An object that does not exist.
    ("ledgepay_deliver", ("--id", "999999"), MISSING, "No transition with id 999999."),
    ("ledgepay_reprocess", ("--id", "999999"), MISSING, "No webhook event with id 999999."),
]


def refused(name, *args, **options):
    """The CommandError ``call_command`` raised, having written nothing."""
    out, err = io.StringIO(), io.StringIO()
    with pytest.raises(CommandError) as excinfo:
        call_command(name, *args, stdout=out, stderr=err, **options)
    assert (out.getvalue(), err.getvalue()) == ("", "")
    return excinfo.value


def test_every_command_but_the_sandbox_is_covered():
    assert COMMANDS == [
        "ledgepay_deliver",
        "ledgepay_erase",
        "ledgepay_export",
        "ledgepay_health",
        "ledgepay_prune",
        "ledgepay_reconcile",
        "ledgepay_reprocess",
        "ledgepay_statement",
        "ledgepay_sync",
    ]
    assert {name for name, *_ in CASES} == set(COMMANDS)


@pytest.mark.parametrize(("name", "args", "status", "message"), CASES)
def test_bad_input_is_one_line_and_its_exit_status(api, name, args, status, message):
    error = refused(name, *args)

    assert str(error).startswith(message), str(error)
    assert "\n" not in str(error)
    assert error.returncode == status
    assert len(api.calls) == 0


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("ledgepay_deliver", {"ids": [10**23]}, "--id must be a whole number from 1 to"),
        ("ledgepay_reprocess", {"ids": ["x"]}, "--id must be a whole number from 1 to"),
        ("ledgepay_prune", {"days": 1, "batch_size": 2**63}, "--batch-size must be"),
        ("ledgepay_prune", {"days": 1, "batch_size": "x"}, "--batch-size must be a whole"),
    ],
)
def test_options_given_as_values_are_checked_as_typed_ones(api, name, options, message):
    # call_command hands an option that is not required to handle() without argparse.
    error = refused(name, **options)

    assert str(error).startswith(message), str(error)
    assert error.returncode == USAGE


def test_deliver_names_the_missing_ids_and_delivers_none():
    transition = Transition.objects.create(
        signal="payment_succeeded", payment=make_payment(), source="sync"
    )

    error = refused("ledgepay_deliver", "--id", "999999", "--id", str(transition.pk), "--id", "5")

    assert str(error) == "No transition with id 5, 999999."
    assert error.returncode == MISSING
    transition.refresh_from_db()
    assert transition.attempts == 0


def test_deliver_says_which_transitions_were_already_delivered():
    transition = Transition.objects.create(
        signal="payment_succeeded",
        payment=make_payment(),
        source="sync",
        delivered_at=timezone.now(),
    )
    out = io.StringIO()

    call_command("ledgepay_deliver", "--id", str(transition.pk), stdout=out)

    assert out.getvalue() == (
        f"Transition {transition.pk}: already delivered.\n"
        "Delivered 0 transitions; 0 still failing.\n"
    )


@pytest.mark.parametrize(
    ("name", "status", "message"),
    [
        ("ledgepay_sync", 1, "Sync stopped: Could not reach LedgePay"),
        ("ledgepay_reconcile", 2, "LedgePay could not be read: Could not reach LedgePay"),
    ],
)
def test_ledgepay_unreachable_exits_as_documented(api, settings, name, status, message):
    settings.LEDGEPAY_MAX_RETRIES = 0
    api.get(f"{API}/payments", body=requests.ConnectionError("down"))
    out = io.StringIO()

    with pytest.raises(CommandError) as excinfo:
        call_command(name, verbosity=0, stdout=out, stderr=io.StringIO())

    assert str(excinfo.value).startswith(message), str(excinfo.value)
    assert "\n" not in str(excinfo.value)
    assert excinfo.value.returncode == status


# From the command line, as cron runs them.


@pytest.fixture(scope="module")
def database(tmp_path_factory):
    """A migrated SQLite database of its own for the commands run in subprocesses."""
    path = tmp_path_factory.mktemp("commands") / "db.sqlite3"
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{path}"}
    done = manage("migrate", "--verbosity=0", env=env)
    assert done.returncode == 0, done.stderr
    return env


def manage(*args, env):
    return subprocess.run(
        [sys.executable, "-m", "django", *args, "--settings=tests.settings"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("name", "args", "status", "message"),
    [
        ("ledgepay_deliver", ("--id", HUGE), USAGE, "--id must be a whole number from 1 to"),
        ("ledgepay_reprocess", ("--id", HUGE), USAGE, "--id must be a whole number from 1 to"),
        ("ledgepay_prune", ("--days=1", f"--batch-size={BIGINT_PAST}"), USAGE, "--batch-size"),
        ("ledgepay_prune", (), USAGE, "the following arguments are required: --days"),
        ("ledgepay_reconcile", ("--format", "xml"), USAGE, "argument --format: invalid choice"),
        (
            "ledgepay_sync",
            ("--created-after=2024-02-01", "--created-before=2024-01-01"),
            USAGE,
            "--created-after (2024-02-01T00:00:00Z) must be before",
        ),
        ("ledgepay_deliver", ("--id", "999999"), MISSING, "No transition with id 999999."),
        ("ledgepay_reprocess", ("--id", "999999"), MISSING, "No webhook event with id 999999."),
    ],
)
def test_bad_input_from_the_command_line(database, name, args, status, message):
    done = manage(name, *args, env=database)

    assert "Traceback" not in done.stderr
    assert done.stderr.startswith(f"CommandError: {message}"), done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stdout == ""
    assert done.returncode == status
