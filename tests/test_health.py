"""``manage.py ledgepay_health``: each check at each status, from the mirror alone, in a
fixed number of queries; the report as text and JSON; its exit statuses."""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
from io import StringIO
from pathlib import Path

import pytest

from django.core.checks import run_checks
from django.core.management import CommandError, call_command
from django.db import DatabaseError
from django.utils import timezone

from django_ledgepay import health
from django_ledgepay.checks import check_health
from django_ledgepay.models import (
    Payment,
    Reconciliation,
    RefundRequest,
    Transition,
    WebhookEvent,
)
from tests.factories import make_payment, next_id

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parent.parent


def minutes(number: float) -> datetime.timedelta:
    return datetime.timedelta(minutes=number)


@pytest.fixture
def now():
    return timezone.now()


def thresholds():
    return health.Thresholds.from_settings()


def transition(now, *, due_in=None, delivered=False, attempts=0):
    """An undelivered transition whose next attempt is ``due_in`` from now (None: given up)."""
    return Transition.objects.create(
        signal=Transition.Signal.PAYMENT_SUCCEEDED,
        payment=make_payment(),
        source=Transition.Source.WEBHOOK,
        created_at=now - minutes(60),
        delivered_at=now if delivered else None,
        next_attempt_at=None if due_in is None else now + due_in,
        attempts=attempts,
    )


def event(now, status, *, ago):
    stored = WebhookEvent.objects.create(
        event_type="payment.succeeded",
        object_id=next_id("pay"),
        payload={"event": "payment.succeeded", "data": {}},
        body_sha256=next_id("sha256"),
        status=status,
    )
    # received_at is set on insert: move it back afterwards.
    WebhookEvent.objects.filter(pk=stored.pk).update(received_at=now - ago)
    return stored


def refund_request(now, outcome, *, ago):
    return RefundRequest.objects.create(
        payment=make_payment(),
        amount=1000,
        reason="customer_request",
        idempotency_key=next_id("key"),
        source=Transition.Source.API,
        outcome=outcome,
        created_at=now - ago,
    )


def reconciliation(now, outcome, drift=(), error=""):
    return Reconciliation.objects.create(
        since=now - datetime.timedelta(days=30),
        until=now,
        started_at=now - minutes(10),
        finished_at=now - minutes(9),
        outcome=outcome,
        drift=list(drift),
        error=error,
    )


def drift(kind, *, repairable, repaired=False):
    return {
        "kind": kind,
        "payment": next_id("pay"),
        "detail": "…",
        "repairable": repairable,
        "repaired": repaired,
    }


def payments(now, count, *, status=Payment.Status.PENDING, ago):
    for _ in range(count):
        make_payment(status=status, created_at=now - ago)


# The whole report


def test_a_healthy_project_is_checked_in_six_queries(now, django_assert_num_queries):
    event(now, WebhookEvent.Status.PROCESSED, ago=minutes(3))
    payments(now, 3, status=Payment.Status.SUCCEEDED, ago=minutes(90))

    with django_assert_num_queries(6):
        report = health.run_checks(now=now)

    assert [check.name for check in report.checks] == [
        "deliveries",
        "events",
        "refunds",
        "pending",
        "reconcile",
        "webhooks",
    ]
    assert {check.status for check in report.checks} == {health.OK}
    assert (report.status, report.exit_status) == (health.OK, 0)


def test_the_worst_check_is_the_report_status():
    checks = (
        health.Check("a", health.OK, ""),
        health.Check("b", health.CRITICAL, ""),
        health.Check("c", health.WARNING, ""),
    )
    assert health.Report(checks).status == health.CRITICAL
    assert health.Report(checks).exit_status == 2
    assert health.Report(checks[::2]).exit_status == 1
    assert health.Report(()).status == health.OK


@pytest.mark.parametrize(
    ("delta", "said"),
    [
        (datetime.timedelta(seconds=59), "0 minutes"),
        (minutes(1), "1 minute"),
        (minutes(119), "119 minutes"),
        (minutes(120), "2 hours"),
        (minutes(47 * 60 + 59), "47 hours"),
        (datetime.timedelta(days=2), "2 days"),
        (-minutes(5), "0 minutes"),
    ],
)
def test_ages_are_said_rounded_down(delta, said):
    assert health.age(delta) == said


# deliveries


def test_deliveries_ok_while_every_transition_is_on_schedule(now, django_assert_num_queries):
    transition(now, delivered=True)
    transition(now, due_in=minutes(5))  # waiting for its task
    transition(now, due_in=-minutes(14), attempts=2)  # due, within the slack for cron

    with django_assert_num_queries(1):
        check = health.deliveries(now, thresholds())

    assert check == health.Check("deliveries", "ok", "No transition is past due or given up.")


def test_deliveries_warning_for_a_transition_past_due(now):
    transition(now, due_in=-minutes(16), attempts=1)
    transition(now, due_in=-minutes(40), attempts=3)

    check = health.deliveries(now, thresholds())

    assert check.status == health.WARNING
    oldest = health.when(now - minutes(40), now)
    assert check.detail == (
        f"2 transitions past due by more than 15 minutes, the oldest due since {oldest} "
        "(is ledgepay_deliver running, are the task workers up?)."
    )
    assert oldest.endswith("(40 minutes ago)")


def test_deliveries_critical_for_a_transition_given_up(now):
    transition(now, due_in=None, attempts=10)
    transition(now, due_in=-minutes(30), attempts=1)

    check = health.deliveries(now, thresholds())

    assert check.status == health.CRITICAL
    assert check.detail.startswith(
        "1 transition given up after LEDGEPAY_DELIVERY_MAX_ATTEMPTS attempts (fix the "
        "receivers whose errors the admin shows, then run ledgepay_deliver --all); "
        "1 transition past due by more than 15 minutes"
    )


def test_deliveries_critical_for_a_transition_past_due_for_a_day(now, settings):
    transition(now, due_in=-minutes(24 * 60 + 1), attempts=1)
    assert health.deliveries(now, thresholds()).status == health.CRITICAL

    settings.LEDGEPAY_HEALTH_CRITICAL_AFTER = 48 * 60
    assert health.deliveries(now, thresholds()).status == health.WARNING

    settings.LEDGEPAY_HEALTH_OVERDUE_AFTER = 25 * 60
    assert health.deliveries(now, thresholds()).status == health.OK


# events


def test_events_ok_while_each_is_applied_or_within_its_grace(now, django_assert_num_queries):
    event(now, WebhookEvent.Status.PROCESSED, ago=datetime.timedelta(days=3))
    event(now, WebhookEvent.Status.IGNORED, ago=datetime.timedelta(days=3))
    # Stored and not applied yet: the grace (5 minutes) and the slack (15) not over.
    event(now, WebhookEvent.Status.RECEIVED, ago=minutes(19))

    with django_assert_num_queries(1):
        check = health.events(now, thresholds())

    assert check == health.Check("events", "ok", "No event failed; none waits to be applied.")


def test_events_warning_for_a_failed_event(now):
    event(now, WebhookEvent.Status.FAILED, ago=minutes(2))

    check = health.events(now, thresholds())

    assert check.status == health.WARNING
    assert check.detail == (
        "1 event failed (LedgePay delivers each again; ledgepay_reprocess applies them "
        f"now); the oldest came at {health.when(now - minutes(2), now)}."
    )


def test_events_warning_for_a_delivery_stored_and_not_applied_past_the_grace(now):
    event(now, WebhookEvent.Status.RECEIVED, ago=minutes(21))
    event(now, WebhookEvent.Status.RECEIVED, ago=minutes(30))

    check = health.events(now, thresholds())

    assert check.status == health.WARNING
    assert check.detail.startswith(
        "2 events stored and not applied 20 minutes after they came (is ledgepay_deliver "
        "running, are the task workers up?); the oldest came at"
    )


@pytest.mark.parametrize("status", [WebhookEvent.Status.FAILED, WebhookEvent.Status.RECEIVED])
def test_events_critical_for_an_event_left_for_a_day(now, status):
    event(now, status, ago=datetime.timedelta(days=1, minutes=1))

    assert health.events(now, thresholds()).status == health.CRITICAL


# refunds


def test_refunds_ok_while_each_request_has_its_outcome(now, django_assert_num_queries):
    refund_request(now, RefundRequest.Outcome.MADE, ago=datetime.timedelta(days=3))
    refund_request(now, RefundRequest.Outcome.REFUSED, ago=datetime.timedelta(days=3))
    refund_request(now, RefundRequest.Outcome.UNKNOWN, ago=minutes(1))  # being sent

    with django_assert_num_queries(1):
        check = health.refunds(now, thresholds())

    assert check == health.Check("refunds", "ok", "Every refund request has its outcome.")


def test_refunds_warning_for_a_request_without_an_answer(now):
    request = refund_request(now, RefundRequest.Outcome.UNKNOWN, ago=minutes(20))
    RefundRequest.objects.create(
        payment=request.payment,
        amount=500,
        reason="other",
        idempotency_key=next_id("key"),
        source=Transition.Source.ADMIN,
        created_at=now - minutes(16),
    )

    check = health.refunds(now, thresholds())

    assert check.status == health.WARNING
    assert check.detail == (
        "2 refund requests of 1 payment without an answer for more than 15 minutes, the "
        f"oldest asked at {health.when(now - minutes(20), now)}: the next refund of the "
        "payment sends it again, as does ledgepay_reconcile --apply."
    )


def test_refunds_critical_for_a_request_without_an_answer_for_a_day(now):
    refund_request(now, RefundRequest.Outcome.UNKNOWN, ago=datetime.timedelta(days=2))

    check = health.refunds(now, thresholds())

    assert check.status == health.CRITICAL
    assert "1 refund request of 1 payment without an answer" in check.detail
    assert "(2 days ago)" in check.detail


# pending


def test_pending_ok_without_a_stale_payment_in_one_query(now, django_assert_num_queries):
    payments(now, 3, ago=minutes(59))  # not stale yet
    payments(now, 2, ago=datetime.timedelta(days=8))  # left to ledgepay_reconcile
    payments(now, 5, status=Payment.Status.SUCCEEDED, ago=minutes(90))
    make_payment(status=Payment.Status.PENDING, created_at=None)

    with django_assert_num_queries(1):
        check = health.pending(now, thresholds())

    assert check == health.Check(
        "pending",
        "ok",
        "No payment created in the last 7 days has been pending for more than 60 minutes.",
    )


def test_pending_warning_for_a_few_stale_payments(now, django_assert_num_queries):
    payments(now, 2, ago=minutes(90))
    payments(now, 1, ago=datetime.timedelta(days=2))
    payments(now, 30, status=Payment.Status.SUCCEEDED, ago=minutes(80))

    with django_assert_num_queries(2):
        check = health.pending(now, thresholds())

    assert check.status == health.WARNING
    oldest = health.when(now - datetime.timedelta(days=2), now)
    assert check.detail == (
        "3 payments created in the last 7 days pending for more than 60 minutes, the oldest "
        f"created at {oldest}; 0 of the last 20 created more than 60 minutes ago are still "
        "pending (ledgepay_sync --stale asks LedgePay about them; a checkout the shopper "
        "left stays pending)."
    )


def test_pending_critical_when_payments_do_not_settle(now):
    payments(now, 10, status=Payment.Status.SUCCEEDED, ago=minutes(200))
    payments(now, 10, ago=minutes(100))
    payments(now, 3, ago=minutes(30))  # not stale yet: not in the sample

    check = health.pending(now, thresholds())

    assert check.status == health.CRITICAL
    assert "; 10 of the last 20 created more than 60 minutes ago are still pending: " in (
        check.detail
    )
    assert check.detail.endswith(
        "payments do not settle (are webhooks arriving, is ledgepay_sync --stale running?)."
    )


def test_pending_thresholds_are_settings(now, settings):
    payments(now, 2, ago=minutes(45))
    assert health.pending(now, thresholds()).status == health.OK

    settings.LEDGEPAY_STALE_PENDING_AFTER = 30
    assert health.pending(now, thresholds()).status == health.WARNING

    settings.LEDGEPAY_HEALTH_PENDING_CRITICAL = 2
    check = health.pending(now, thresholds())
    assert check.status == health.CRITICAL
    assert "2 of the last 2 created more than 30 minutes ago are still pending" in check.detail


# reconcile


def test_reconcile_ok_before_any_run_and_after_a_clean_one(now, django_assert_num_queries):
    with django_assert_num_queries(1):
        check = health.reconcile(now, thresholds())
    assert check == health.Check("reconcile", "ok", "No reconciliation has run yet.")

    reconciliation(now, Reconciliation.Outcome.DRIFT, [drift("status", repairable=False)])
    reconciliation(now, Reconciliation.Outcome.CLEAN)
    # A run still going (or one that died) does not hide the last finished one.
    Reconciliation.objects.create(since=now, until=now)

    check = health.reconcile(now, thresholds())

    assert check == health.Check(
        "reconcile",
        "ok",
        f"The last reconciliation, at {health.when(now - minutes(9), now)}, left no drift.",
    )


def test_reconcile_ok_when_the_drift_was_repaired(now):
    entries = [drift("status", repairable=True, repaired=True)]
    reconciliation(now, Reconciliation.Outcome.CLEAN, entries)

    assert health.reconcile(now, thresholds()).status == health.OK


def test_reconcile_warning_for_drift_that_apply_repairs(now):
    entries = [
        drift("missing", repairable=True),
        drift("status", repairable=True),
        drift("status", repairable=True),
        drift("amount", repairable=False, repaired=True),
    ]
    reconciliation(now, Reconciliation.Outcome.DRIFT, entries)

    check = health.reconcile(now, thresholds())

    assert check.status == health.WARNING
    assert check.detail == (
        f"The last reconciliation, at {health.when(now - minutes(9), now)}, left 3 drift "
        "entries (1 missing, 2 status); ledgepay_reconcile --apply repairs them."
    )


def test_reconcile_warning_when_it_could_not_read_ledgepay(now):
    reconciliation(now, Reconciliation.Outcome.FAILED, error="Could not reach LedgePay.")

    check = health.reconcile(now, thresholds())

    assert check.status == health.WARNING
    assert check.detail.endswith(", could not read LedgePay: Could not reach LedgePay.")


def test_reconcile_critical_for_drift_it_cannot_repair(now):
    entries = [drift("amount", repairable=False), drift("status", repairable=True)]
    reconciliation(now, Reconciliation.Outcome.DRIFT, entries)

    check = health.reconcile(now, thresholds())

    assert check.status == health.CRITICAL
    assert check.detail.endswith(
        "left 2 drift entries (1 amount, 1 status); 1 cannot be repaired by "
        "ledgepay_reconcile --apply: see the dashboard and LedgePay."
    )


# webhooks


def test_webhooks_ok_after_a_recent_delivery_in_one_query(now, django_assert_num_queries):
    payments(now, 5, ago=minutes(120))
    event(now, WebhookEvent.Status.IGNORED, ago=minutes(59))

    with django_assert_num_queries(1):
        check = health.webhooks(now, thresholds())

    assert check == health.Check(
        "webhooks",
        "ok",
        f"The last valid delivery came at {health.when(now - minutes(59), now)}.",
    )


def test_webhooks_ok_when_silent_while_no_payment_needs_a_delivery(now, django_assert_num_queries):
    event(now, WebhookEvent.Status.PROCESSED, ago=minutes(300))
    payments(now, 2, status=Payment.Status.SUCCEEDED, ago=minutes(301))  # before it
    payments(now, 2, ago=minutes(30))  # too new to expect one

    with django_assert_num_queries(2):
        check = health.webhooks(now, thresholds())

    assert check.status == health.OK
    assert check.detail == (
        f"No valid delivery since {health.when(now - minutes(300), now)}; no payment "
        "created since is more than 60 minutes old."
    )


def test_webhooks_warning_when_silent_while_payments_were_created(now):
    event(now, WebhookEvent.Status.PROCESSED, ago=minutes(300))
    payments(now, 3, ago=minutes(200))

    check = health.webhooks(now, thresholds())

    assert check.status == health.WARNING
    assert check.detail == (
        f"No valid delivery since {health.when(now - minutes(300), now)}, while 3 payments "
        "created since are more than 60 minutes old; none has settled yet."
    )


def test_webhooks_critical_when_payments_settled_without_a_delivery(now):
    payments(now, 2, ago=minutes(90))
    payments(now, 1, status=Payment.Status.SUCCEEDED, ago=minutes(90))

    check = health.webhooks(now, thresholds())

    assert check.status == health.CRITICAL
    assert check.detail == (
        "No valid delivery stored, while 3 payments created since are more than 60 minutes "
        "old and 1 of them settled all the same: LedgePay's deliveries do not arrive or are "
        "refused (check the webhook URL at LedgePay, LEDGEPAY_WEBHOOK_SECRET and the web "
        "server's log for 400 answers)."
    )


def test_webhooks_silence_is_a_setting(now, settings):
    event(now, WebhookEvent.Status.PROCESSED, ago=minutes(100))
    payments(now, 1, status=Payment.Status.FAILED, ago=minutes(95))
    assert health.webhooks(now, thresholds()).status == health.CRITICAL

    settings.LEDGEPAY_HEALTH_WEBHOOK_SILENCE = 120
    assert health.webhooks(now, thresholds()).status == health.OK


# The command


def test_command_prints_a_line_per_check_and_exits_0_when_healthy(api):
    out = StringIO()

    call_command("ledgepay_health", stdout=out)

    lines = out.getvalue().splitlines()
    assert lines[0] == "deliveries ok       No transition is past due or given up."
    assert [line.split()[:2] for line in lines[:6]] == [
        ["deliveries", "ok"],
        ["events", "ok"],
        ["refunds", "ok"],
        ["pending", "ok"],
        ["reconcile", "ok"],
        ["webhooks", "ok"],
    ]
    assert lines[6:] == ["Health: ok."]
    assert len(api.calls) == 0


def test_command_exits_1_on_a_warning(api, now):
    event(now, WebhookEvent.Status.FAILED, ago=minutes(5))
    payments(now, 1, ago=minutes(90))
    out = StringIO()

    with pytest.raises(CommandError) as excinfo:
        call_command("ledgepay_health", stdout=out)

    assert str(excinfo.value) == "Health: warning: events, pending."
    assert excinfo.value.returncode == 1
    assert "events     warning  1 event failed" in out.getvalue()
    assert "Health: ok." not in out.getvalue()
    assert len(api.calls) == 0


def test_command_exits_2_on_a_critical_finding_and_names_it_first(api, now):
    transition(now, due_in=None, attempts=10)
    event(now, WebhookEvent.Status.FAILED, ago=minutes(5))

    with pytest.raises(CommandError) as excinfo:
        call_command("ledgepay_health", stdout=StringIO())

    assert str(excinfo.value) == "Health: critical: deliveries; warning: events."
    assert excinfo.value.returncode == 2


def test_command_prints_json(api, now):
    refund_request(now, RefundRequest.Outcome.UNKNOWN, ago=datetime.timedelta(days=2))
    out = StringIO()

    with pytest.raises(CommandError) as excinfo:
        call_command("ledgepay_health", "--format", "json", stdout=out)

    report = json.loads(out.getvalue())
    assert report["status"] == "critical"
    assert [check["name"] for check in report["checks"]] == [
        "deliveries",
        "events",
        "refunds",
        "pending",
        "reconcile",
        "webhooks",
    ]
    assert all(set(check) == {"name", "status", "detail"} for check in report["checks"])
    assert report["checks"][2]["status"] == "critical"
    assert report["checks"][0] == {
        "name": "deliveries",
        "status": "ok",
        "detail": "No transition is past due or given up.",
    }
    assert excinfo.value.returncode == 2


def test_command_prints_json_alone_when_healthy():
    out = StringIO()

    call_command("ledgepay_health", "--format=json", stdout=out)

    assert json.loads(out.getvalue())["status"] == "ok"


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("LEDGEPAY_STALE_PENDING_AFTER", "soon", "LEDGEPAY_STALE_PENDING_AFTER must be a number."),
        (
            "LEDGEPAY_HEALTH_CRITICAL_AFTER",
            0,
            "LEDGEPAY_HEALTH_CRITICAL_AFTER must be a number of minutes above 0, at most 100 "
            "years.",
        ),
        (
            "LEDGEPAY_HEALTH_OVERDUE_AFTER",
            -1,
            "LEDGEPAY_HEALTH_OVERDUE_AFTER must be a number of minutes, 0 or more.",
        ),
        (
            "LEDGEPAY_HEALTH_WEBHOOK_SILENCE",
            10**12,
            "LEDGEPAY_HEALTH_WEBHOOK_SILENCE must be a number of minutes above 0, at most 100 "
            "years.",
        ),
        (
            "LEDGEPAY_HEALTH_PENDING_CRITICAL",
            0,
            "LEDGEPAY_HEALTH_PENDING_CRITICAL must be at least 1.",
        ),
    ],
)
def test_command_with_a_threshold_that_is_not_a_number_exits_2(settings, name, value, message):
    setattr(settings, name, value)

    with pytest.raises(CommandError) as excinfo:
        call_command("ledgepay_health", stdout=StringIO())

    assert str(excinfo.value) == f"Health unknown: {message}"
    assert excinfo.value.returncode == 2
    assert [m.id for m in check_health()] == ["django_ledgepay.W007"]
    assert check_health()[0].msg == message


def test_command_exits_2_when_the_database_cannot_be_read(monkeypatch):
    def broken(**kwargs):
        raise DatabaseError("connection refused")

    monkeypatch.setattr(health, "run_checks", broken)

    with pytest.raises(CommandError) as excinfo:
        call_command("ledgepay_health", stdout=StringIO())

    assert str(excinfo.value) == (
        "Health unknown: the database could not be read: connection refused"
    )
    assert excinfo.value.returncode == 2


def test_command_refuses_an_unknown_format():
    with pytest.raises(CommandError) as excinfo:
        call_command("ledgepay_health", "--format", "yaml", stdout=StringIO())

    assert str(excinfo.value).startswith("argument --format: invalid choice: 'yaml'")
    assert excinfo.value.returncode == 2


def test_from_cron_a_database_without_the_tables_is_one_line_and_exit_status_2(tmp_path):
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path / 'empty.sqlite3'}"}

    done = subprocess.run(
        [sys.executable, "-m", "django", "ledgepay_health", "--settings=tests.settings"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("CommandError: Health unknown: the database could not be read")
    assert done.stderr.count("\n") == 1, done.stderr
    assert "Traceback" not in done.stderr


# Settings and system checks


def test_the_thresholds_default_to_the_documented_values():
    assert health.Thresholds.from_settings() == health.Thresholds(
        stale_pending=minutes(60),
        overdue=minutes(15),
        critical=minutes(24 * 60),
        webhook_silence=minutes(60),
        pending_critical=10,
    )
    assert check_health() == []


def test_manage_py_check_reports_w007_for_a_health_threshold(settings):
    settings.LEDGEPAY_HEALTH_OVERDUE_AFTER = float("nan")

    ids = [message.id for message in run_checks()]

    assert "django_ledgepay.W007" in ids
    out, err = StringIO(), StringIO()
    call_command("check", stdout=out, stderr=err)
    assert "django_ledgepay.W007" in err.getvalue()
    assert "LEDGEPAY_HEALTH_OVERDUE_AFTER must be a number." in err.getvalue()
