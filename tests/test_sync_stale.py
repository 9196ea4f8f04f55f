"""``ledgepay_sync --stale MINUTES``: each payment pending for too long is asked about by id
(no list call) and LedgePay's answer applied; bad input and LedgePay out of reach end as
every command's do."""

from __future__ import annotations

import datetime
import os
import re
import subprocess
import sys
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
import requests
import responses

from django.core.management import CommandError, call_command
from django.utils import timezone

from django_ledgepay import client, signals, sync
from django_ledgepay.mirror.values import iso_z
from django_ledgepay.models import Payment, Transition
from django_ledgepay.sync import stale_payments
from tests.conftest import API
from tests.factories import make_payment, payment_data

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parent.parent
SUMMARY = re.compile(
    r"Synced (?P<found>\d+) payments? pending since before (?P<before>\S+Z) \(created since "
    r"(?P<since>\S+Z)\); asked LedgePay about (?P<asked>\d+): (?P<counts>.*)\."
)


def ago(**delta: float) -> datetime.datetime:
    return timezone.now() - datetime.timedelta(**delta)


def pending(ledgepay_id: str, **delta: float) -> Payment:
    return make_payment(
        ledgepay_id=ledgepay_id, status=Payment.Status.PENDING, created_at=ago(**delta)
    )


def answer(api: responses.RequestsMock, payment: Payment, status: str) -> None:
    """LedgePay's answer for ``payment``: its facts as recorded, and ``status``."""
    assert payment.created_at is not None
    api.get(
        f"{API}/payments/{payment.ledgepay_id}",
        json=payment_data(
            id=payment.ledgepay_id, status=status, created_at=iso_z(payment.created_at)
        ),
    )


def summary_of(output: str) -> re.Match[str]:
    """The summary line's parts; the test fails when the output is not one."""
    summary = SUMMARY.fullmatch(output.strip())
    assert summary, output
    return summary


def stale(*args: str, **options: Any) -> str:
    out = StringIO()
    call_command("ledgepay_sync", "--stale", *args, stdout=out, **options)
    return out.getvalue()


def test_asks_by_id_about_each_payment_pending_too_long_and_applies_the_answer(
    api, receive, django_capture_on_commit_callbacks
):
    settled = pending("pay_settled", hours=2)
    waiting = pending("pay_waiting", days=3)
    pending("pay_fresh", minutes=30)  # not stale yet
    pending("pay_old", days=8)  # left to ledgepay_reconcile
    make_payment(ledgepay_id="pay_done", status=Payment.Status.FAILED, created_at=ago(hours=5))
    answer(api, settled, "succeeded")
    answer(api, waiting, "pending")
    succeeded = receive(signals.payment_succeeded)

    with django_capture_on_commit_callbacks(execute=True):
        output = stale("60")

    summary = summary_of(output)
    assert summary["found"] == summary["asked"] == "2"
    assert summary["counts"] == "1 succeeded, 0 failed, 0 canceled, 1 still pending"
    # By id, the oldest first; never the list.
    assert [call.request.url for call in api.calls] == [
        f"{API}/payments/pay_waiting",
        f"{API}/payments/pay_settled",
    ]
    assert Payment.objects.get(ledgepay_id="pay_settled").status == Payment.Status.SUCCEEDED
    assert Payment.objects.get(ledgepay_id="pay_waiting").status == Payment.Status.PENDING
    assert [call["payment"].ledgepay_id for call in succeeded.calls] == ["pay_settled"]
    assert succeeded.calls[0]["event"] is None
    transition = Transition.objects.get(payment__ledgepay_id="pay_settled")
    assert transition.source == Transition.Source.SYNC


def test_the_window_is_the_last_7_days_or_days(api):
    old = pending("pay_old", days=8)
    answer(api, old, "canceled")

    output = stale("60")
    assert summary_of(output)["found"] == "0"
    assert len(api.calls) == 0

    output = stale("60", "--days", "10")

    summary = summary_of(output)
    assert summary["counts"] == "0 succeeded, 0 failed, 1 canceled, 0 still pending"
    assert Payment.objects.get(ledgepay_id="pay_old").status == Payment.Status.CANCELED


def test_the_summary_names_the_window_in_utc(api):
    before = timezone.now()
    output = stale("90", "--days=2")
    after = timezone.now()

    summary = summary_of(output)
    window = {
        "before": (
            before - datetime.timedelta(minutes=90),
            after - datetime.timedelta(minutes=90),
        ),
        "since": (before - datetime.timedelta(days=2), after - datetime.timedelta(days=2)),
    }
    for name, (low, high) in window.items():
        assert iso_z(low) <= summary[name] <= iso_z(high)
    assert summary["counts"] == "0 succeeded, 0 failed, 0 canceled, 0 still pending"


def test_stale_payments_reads_one_index_range(django_assert_num_queries):
    now = timezone.now()
    pending("pay_a", minutes=61)
    make_payment(status=Payment.Status.PENDING, created_at=None)

    with django_assert_num_queries(1):
        found = list(stale_payments(minutes=60, now=now))

    assert [payment.ledgepay_id for payment in found] == ["pay_a"]


def test_a_payment_ledgepay_does_not_know_is_named_after_the_others_are_synced(api):
    gone = pending("pay_gone", hours=3)
    settled = pending("pay_settled", hours=2)
    api.get(
        f"{API}/payments/{gone.ledgepay_id}",
        status=404,
        json={"error": {"message": "No such payment"}},
    )
    answer(api, settled, "failed")
    out = StringIO()

    with pytest.raises(CommandError) as excinfo:
        call_command("ledgepay_sync", "--stale", "60", stdout=out)

    assert str(excinfo.value) == (
        "LedgePay did not answer for 1 stale payment: pay_gone: No such payment (HTTP 404). "
        "The others are synced."
    )
    assert excinfo.value.returncode == 1
    summary = summary_of(out.getvalue())
    assert (
        summary["counts"] == "0 succeeded, 1 failed, 0 canceled, 0 still pending, 1 not answered"
    )
    assert Payment.objects.get(ledgepay_id="pay_settled").status == Payment.Status.FAILED


def test_ledgepay_out_of_reach_stops_with_what_was_done(api, settings):
    settings.LEDGEPAY_MAX_RETRIES = 0
    first = pending("pay_first", hours=4)
    second = pending("pay_second", hours=3)
    pending("pay_third", hours=2)
    answer(api, first, "succeeded")
    api.get(f"{API}/payments/{second.ledgepay_id}", body=requests.ConnectionError("down"))

    with pytest.raises(CommandError) as excinfo:
        stale("60")

    assert str(excinfo.value).startswith(
        "Sync stopped after asking about 1 of 3 stale payments (1 settled): Could not reach "
        "LedgePay"
    )
    assert "\n" not in str(excinfo.value)
    assert excinfo.value.returncode == 1
    assert len(api.calls) == 2  # the third is not asked
    assert Payment.objects.get(ledgepay_id="pay_first").status == Payment.Status.SUCCEEDED


def test_ledgepay_out_of_reach_at_once(api, settings):
    settings.LEDGEPAY_MAX_RETRIES = 0
    first = pending("pay_first", hours=4)
    api.get(f"{API}/payments/{first.ledgepay_id}", status=503, json={"error": {"message": "Down"}})

    with pytest.raises(CommandError) as excinfo:
        stale("60")

    assert str(excinfo.value) == "Sync stopped: Down (HTTP 503)"
    assert excinfo.value.returncode == 1


def test_without_an_api_key_nothing_is_sent(api, settings):
    settings.LEDGEPAY_API_KEY = ""
    pending("pay_first", hours=4)

    with pytest.raises(CommandError, match="LEDGEPAY_API_KEY") as excinfo:
        stale("60")

    assert str(excinfo.value).startswith("Sync stopped: ")
    assert excinfo.value.returncode == 1
    assert len(api.calls) == 0


def test_it_runs_as_background_work(api, monkeypatch):
    seen = []

    def sweep(**kwargs):
        seen.append((client._background.get(), kwargs["minutes"], kwargs["days"]))
        return sync.sync_stale_payments(**kwargs)

    monkeypatch.setattr(
        "django_ledgepay.management.commands.ledgepay_sync.sync_stale_payments", sweep
    )

    stale("15", "--days", "1")

    assert seen == [(True, 15, 1)]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--stale", "0"), "--stale must be a whole number, at least 1."),
        (("--stale=-5",), "--stale must be a whole number, at least 1."),
        (("--stale", "x"), "argument --stale: invalid int value: 'x'"),
        (("--stale", "60", "--days", "0"), "--days must be a whole number, at least 1."),
        (("--stale", "60", "--days", "soon"), "argument --days: invalid int value: 'soon'"),
        (("--days", "3"), "--days goes with --stale."),
        (("--stale", "60", "--status", "pending"), "--stale cannot be combined with --status."),
        (
            ("--stale", "60", "--created-after", "2024-01-01", "--created-before", "2024-02-01"),
            "--stale cannot be combined with --created-after or --created-before.",
        ),
        (
            ("--stale", "10080"),
            "--stale 10080 is not less than --days 7 (10080 minutes): no payment created in "
            "the window can have been pending that long.",
        ),
        (("--stale", "60", "--days", "800000"), "--days 800000 reaches before the calendar's"),
    ],
)
def test_bad_input_is_a_usage_error(api, args, message):
    out, err = StringIO(), StringIO()

    with pytest.raises(CommandError) as excinfo:
        call_command("ledgepay_sync", *args, stdout=out, stderr=err)

    assert str(excinfo.value).startswith(message), str(excinfo.value)
    assert "\n" not in str(excinfo.value)
    assert excinfo.value.returncode == 2
    assert (out.getvalue(), err.getvalue()) == ("", "")
    assert len(api.calls) == 0


def test_bad_input_from_the_command_line_is_one_line(tmp_path):
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}"}

    done = subprocess.run(
        [sys.executable, "-m", "django", "ledgepay_sync", "--stale", "0"]
        + ["--settings=tests.settings"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert done.returncode == 2
    assert done.stderr == "CommandError: --stale must be a whole number, at least 1.\n"
    assert done.stdout == ""
