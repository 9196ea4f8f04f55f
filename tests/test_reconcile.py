from __future__ import annotations

import datetime
import json
import re
from io import StringIO
from urllib.parse import parse_qsl, urlsplit

import pytest

from django.core.management import CommandError, call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext

from django_ledgepay import reconcile, services, signals
from django_ledgepay.client import LedgePayClient
from django_ledgepay.models import Payment, Reconciliation, RefundRequest, Transition
from django_ledgepay.testing import FakeLedgePay
from tests.conftest import API
from tests.factories import make_payment, payment_data

pytestmark = pytest.mark.django_db

URLS = {"success_url": "https://shop.test/ok", "cancel_url": "https://shop.test/no"}
UTC = datetime.timezone.utc
#: 2024-01-15T10:30:00Z, in the window every test reconciles.
NOON = datetime.datetime(2024, 1, 15, 10, 30, tzinfo=UTC)
WINDOW = ("--since=2024-01-01", "--until=2024-02-01T00:00:00Z")


def seed(fake, count, *, at=NOON, status="pending", amount=700):
    """``count`` payments in LedgePay's state, created at ``at`` (a datetime)."""
    fake.state.clock = lambda: at.timestamp()
    ids = []
    for _ in range(count):
        payment = fake.state.create_payment({"amount": amount, "currency": "EUR", **URLS})
        if status != "pending":
            fake.state.settle(payment["id"], status)
        ids.append(payment["id"])
    return ids


def spread(fake, count, *, start=NOON, status="pending"):
    """``count`` payments, one a second, the newest at ``start``."""
    return [
        seed(fake, 1, at=start - datetime.timedelta(seconds=n), status=status)[0]
        for n in range(count)
    ]


def run(*args, **kwargs):
    """call_command("ledgepay_reconcile", ...); (stdout, stderr, exit status)."""
    out, err = StringIO(), StringIO()
    try:
        call_command("ledgepay_reconcile", *WINDOW, *args, stdout=out, stderr=err, **kwargs)
    except CommandError as error:
        return out.getvalue(), err.getvalue() + str(error), error.returncode
    return out.getvalue(), err.getvalue(), 0


def calls(fake, path="/payments"):
    return [
        dict(parse_qsl(urlsplit(request.url).query))
        for request in fake.requests
        if urlsplit(request.url).path.endswith(path)
    ]


def by_id_calls(fake):
    return [r for r in fake.requests if "/payments/" in urlsplit(r.url).path]


# A mirror in step


def test_a_mirror_in_step_has_no_drift_and_the_run_is_recorded():
    with FakeLedgePay() as fake:
        spread(fake, 150, status="succeeded")
        spread(fake, 20, start=NOON - datetime.timedelta(hours=1))
        services.sync_payments()
        fake.requests.clear()

        out, err, status = run()

    assert status == 0
    assert "No drift remains: 170 payments checked in 2 pages (0 by id)" in out
    assert "Page 1: 100 payments checked, 0 drift so far." in out
    assert len(calls(fake)) == 2 and not by_id_calls(fake)
    record = Reconciliation.objects.get()
    assert (record.outcome, record.checked, record.drift, record.applied) == (
        "clean",
        170,
        [],
        False,
    )
    assert record.since == datetime.datetime(2024, 1, 1, tzinfo=UTC)
    assert record.until == datetime.datetime(2024, 2, 1, tzinfo=UTC)
    assert record.finished_at is not None


def test_payments_outside_the_window_are_not_checked():
    with FakeLedgePay() as fake:
        inside = seed(fake, 1, at=datetime.datetime(2024, 1, 1, tzinfo=UTC))
        seed(fake, 1, at=datetime.datetime(2023, 12, 31, 23, 59, 59, tzinfo=UTC))
        seed(fake, 1, at=datetime.datetime(2024, 2, 1, tzinfo=UTC))

        out, _, status = run("--format=json")

    report = json.loads(out)
    assert status == 1
    assert [entry["payment"] for entry in report["drift"]] == inside
    assert report["checked"] == 1


# Drift found, and repaired


def drifting(fake):
    """LedgePay and a mirror that disagree in every way the listing can show."""
    missing, settled, contradicted, changed_amount, pending = (
        seed(fake, 1, at=NOON - datetime.timedelta(minutes=n))[0] for n in range(5)
    )
    services.sync_payments()
    Payment.objects.filter(ledgepay_id=missing).delete()
    fake.pay(settled)
    Payment.objects.filter(ledgepay_id=contradicted).update(status="succeeded")
    fake.fail(contradicted)
    Payment.objects.filter(ledgepay_id=changed_amount).update(amount=900)
    return missing, settled, contradicted, changed_amount, pending


def test_a_dry_run_reports_each_kind_and_changes_nothing():
    with FakeLedgePay() as fake:
        missing, settled, contradicted, changed_amount, _ = drifting(fake)
        before = sorted(Payment.objects.values_list("ledgepay_id", "status", "amount"))

        out, err, status = run("--format=json")

    assert status == 1
    assert "Drift remains: 4 entries" in err
    report = json.loads(out)  # Nothing but the JSON on stdout.
    kinds = {entry["payment"]: entry["kind"] for entry in report["drift"]}
    assert kinds == {
        missing: "missing",
        settled: "status",
        contradicted: "status",
        changed_amount: "amount",
    }
    entries = {entry["payment"]: entry for entry in report["drift"]}
    assert entries[settled]["mirror_status"] == "pending"
    assert entries[settled]["ledgepay_status"] == "succeeded"
    assert entries[settled]["repairable"] is True
    assert entries[contradicted]["repairable"] is False
    assert entries[changed_amount]["mirror_amount"] == 900
    assert entries[changed_amount]["ledgepay_amount"] == 700
    assert entries[changed_amount]["repairable"] is False
    assert all(entry["repaired"] is False for entry in report["drift"])
    assert report["outcome"] == "drift"
    assert (report["checked"], report["found"], report["remaining"]) == (5, 4, 4)
    assert report["kinds"]["status"] == 2
    assert report["applied"] is False
    assert report["since"] == "2024-01-01T00:00:00Z"
    assert sorted(Payment.objects.values_list("ledgepay_id", "status", "amount")) == before
    record = Reconciliation.objects.get(pk=report["reconciliation"])
    assert record.outcome == "drift"
    assert [(e["kind"], e["payment"]) for e in record.drift] == [
        (e["kind"], e["payment"]) for e in report["drift"]
    ]


def test_apply_repairs_through_the_services_once_and_leaves_final_facts(
    receive, django_capture_on_commit_callbacks
):
    succeeded = receive(signals.payment_succeeded)
    failed = receive(signals.payment_failed)
    with FakeLedgePay() as fake:
        missing, settled, contradicted, changed_amount, pending = drifting(fake)
        fake.pay(missing)
        Transition.objects.all().delete()

        with django_capture_on_commit_callbacks(execute=True):
            out, err, status = run("--apply")
        # A second run finds only what cannot be repaired, and sends nothing again.
        with django_capture_on_commit_callbacks(execute=True):
            _, again, second_status = run("--apply", "--format=json")

    assert status == 1
    assert "Drift remains: 2 entries" in err
    assert f"{missing}" in out and "[repaired]" in out and "[not repairable]" in out
    mirror = dict(Payment.objects.values_list("ledgepay_id", "status"))
    assert mirror[missing] == "succeeded"
    assert mirror[settled] == "succeeded"
    assert mirror[contradicted] == "succeeded"  # Final: never moved.
    assert mirror[pending] == "pending"
    assert Payment.objects.get(ledgepay_id=changed_amount).amount == 900  # A fixed fact.
    assert sorted(call["payment"].ledgepay_id for call in succeeded.calls) == sorted(
        [missing, settled]
    )
    assert failed.calls == []
    transitions = Transition.objects.values_list("payment__ledgepay_id", "signal", "source")
    assert sorted(transitions) == sorted(
        [(missing, "payment_succeeded", "sync"), (settled, "payment_succeeded", "sync")]
    )
    assert second_status == 1 and "Drift remains: 2 entries" in again
    record = Reconciliation.objects.order_by("pk")[0]
    assert (record.applied, record.repaired, record.outcome) == (True, 2, "drift")


def test_apply_with_everything_repairable_ends_clean(django_capture_on_commit_callbacks):
    with FakeLedgePay() as fake:
        ids = spread(fake, 3)
        services.sync_payments()
        fake.pay(ids[0])
        fake.cancel(ids[1])

        with django_capture_on_commit_callbacks(execute=True):
            out, _, status = run("--apply")
        _, _, after = run()

    assert status == 0
    assert "No drift remains" in out and "2 repaired, 0 remaining" in out
    assert after == 0
    assert dict(Payment.objects.values_list("ledgepay_id", "status")) == {
        ids[0]: "succeeded",
        ids[1]: "canceled",
        ids[2]: "pending",
    }


def test_unresolved_refund_requests_are_drift():
    with FakeLedgePay() as fake:
        (paid,) = seed(fake, 1, status="succeeded")
        services.sync_payments()
        payment = Payment.objects.get(ledgepay_id=paid)
        for key, amount in (("k1", 100), ("k2", 250)):
            RefundRequest.objects.create(
                payment=payment,
                amount=amount,
                reason="customer_request",
                idempotency_key=key,
                source="api",
            )
        RefundRequest.objects.create(
            payment=payment,
            amount=5,
            reason="other",
            idempotency_key="k3",
            source="api",
            outcome="made",
        )

        out, _, status = run("--format=json")

    assert status == 1
    (entry,) = json.loads(out)["drift"]
    assert entry["kind"] == "unresolved_refund"
    assert entry["payment"] == paid
    assert (entry["requests"], entry["amount"], entry["currency"]) == (2, 350, "EUR")
    assert entry["repairable"] is hasattr(services, "resolve_refund_requests")


def test_apply_resolves_unresolved_refund_requests_once(
    receive, django_capture_on_commit_callbacks
):
    created = receive(signals.refund_created)
    with FakeLedgePay() as fake:
        (paid,) = seed(fake, 1, status="succeeded")
        services.sync_payments()
        payment = Payment.objects.get(ledgepay_id=paid)
        RefundRequest.objects.create(
            payment=payment,
            amount=300,
            reason="customer_request",
            idempotency_key="lost-answer",
            source="api",
        )

        with django_capture_on_commit_callbacks(execute=True):
            out, _, status = run("--apply", "--format=json")
        with django_capture_on_commit_callbacks(execute=True):
            _, _, again = run("--apply")

    assert status == 0
    (entry,) = json.loads(out)["drift"]
    assert (entry["kind"], entry["repaired"]) == ("unresolved_refund", True)
    (refund,) = fake.refunds.values()
    assert (refund["payment_id"], refund["amount"]) == (paid, 300)
    request = RefundRequest.objects.get()
    assert request.outcome == "made"
    assert request.refund is not None and request.refund.ledgepay_id == refund["id"]
    assert [call["refund"].ledgepay_id for call in created.calls] == [refund["id"]]
    assert again == 0


# What the list cannot show


def test_a_crowded_second_is_unlisted_and_its_pending_payments_are_checked_by_id():
    with FakeLedgePay() as fake:
        crowded = seed(fake, 150)
        seed(fake, 20, status="succeeded")
        # The mirror knows all 150 (the shop created them), though LedgePay's list shows
        # only 100 of them.
        for ledgepay_id in crowded:
            services.apply_payment(fake.payments[ledgepay_id])
        services.sync_payments()
        page = fake.state.list_payments({"limit": "100", "status": "pending"})["data"]
        hidden = [
            ledgepay_id for ledgepay_id in crowded if ledgepay_id not in {p["id"] for p in page}
        ]
        assert len(hidden) == 50
        # Drift only a check by id can see: a fixed fact, and a final status in the mirror.
        Payment.objects.filter(ledgepay_id=hidden[0]).update(amount=900)
        Payment.objects.filter(ledgepay_id=hidden[2]).update(status="failed")
        # Drift the complete list of succeeded payments in that second shows.
        fake.pay(hidden[1])
        fake.requests.clear()

        out, _, status = run("--format=json")

    assert status == 1
    report = json.loads(out)
    unlisted = [entry for entry in report["drift"] if entry["kind"] == "unlisted"]
    assert unlisted == [
        {
            "kind": "unlisted",
            "payment": None,
            "detail": "2024-01-15T10:30:00Z holds more than 100 pending payments: 100 could "
            "be listed, at least 1 more could not: payments missing from the mirror there "
            "cannot be seen.",
            "repairable": False,
            "repaired": False,
            "second": "2024-01-15T10:30:00Z",
            "status": "pending",
            "listed": 100,
            "unverified": 0,
        }
    ]
    # Each payment of that second that the list could not show, asked for by id once.
    asked = [r.url.rsplit("/", 1)[1] for r in by_id_calls(fake)]
    assert sorted(asked) == sorted(set(hidden) - {hidden[1]})
    assert report["checked_by_id"] == 49
    drift = {e["payment"]: (e["kind"], e["repairable"]) for e in report["drift"] if e["payment"]}
    assert drift == {
        hidden[0]: ("amount", False),
        hidden[1]: ("status", True),
        hidden[2]: ("status", False),
    }


def test_a_mirror_payment_ledgepay_does_not_know_is_unknown():
    with FakeLedgePay() as fake:
        spread(fake, 3)
        services.sync_payments()
        stray = make_payment(ledgepay_id="pay_stray", status="pending", created_at=NOON)
        make_payment(ledgepay_id="pay_old", created_at=NOON.replace(year=2023))

        out, _, status = run("--format=json")

    assert status == 1
    (entry,) = json.loads(out)["drift"]
    assert (entry["kind"], entry["payment"], entry["mirror_status"]) == (
        "unknown",
        stray.ledgepay_id,
        "pending",
    )
    assert [r.url.rsplit("/", 1)[1] for r in by_id_calls(fake)] == ["pay_stray"]


# Failures and bad input


@pytest.mark.parametrize("listed", [{"amount": "900"}, {"amount": 9.5}, {"currency": 978}])
def test_an_amount_ledgepay_lists_unreadably_is_drift_not_agreement(api, listed):
    make_payment(
        ledgepay_id="pay_1", amount=700, currency="EUR", status="succeeded", created_at=NOON
    )
    data = payment_data(
        id="pay_1",
        amount=700,
        currency="EUR",
        status="succeeded",
        created_at="2024-01-15T10:30:00Z",
    )
    api.get(f"{API}/payments", json={"data": [{**data, **listed}], "has_more": False})
    out, err, status = run("--format", "json")
    assert status == 1
    (entry,) = json.loads(out)["drift"]
    assert (entry["kind"], entry["repairable"]) == ("amount", False)
    assert "cannot be read" in entry["detail"]
    assert Payment.objects.get().amount == 700


def test_a_window_before_the_year_1000_is_asked_and_reported_in_iso_8601(api):
    api.get(f"{API}/payments", json={"data": [], "has_more": False})
    out = StringIO()
    call_command(
        "ledgepay_reconcile",
        "--since=0002-01-01",
        "--until=0002-06-01",
        "--format=json",
        stdout=out,
        stderr=StringIO(),
    )
    report = json.loads(out.getvalue())
    assert (report["since"], report["until"]) == ("0002-01-01T00:00:00Z", "0002-06-01T00:00:00Z")
    query = dict(parse_qsl(urlsplit(api.calls[0].request.url).query))
    assert query["created_after"] == "0001-12-31T23:59:59Z"


def test_a_page_with_more_and_nothing_to_page_by_exits_2(api):
    # Not "clean": the listing could not go on, so what was not listed was not checked.
    page = [payment_data(created_at=None) for _ in range(3)]
    api.get(f"{API}/payments", json={"data": page, "has_more": True})
    out, err, status = run("--format", "json")
    assert status == 2
    assert "created_at to page by" in err + out


def test_ledgepay_unreachable_midway_exits_2_with_what_was_checked(settings, monkeypatch):
    settings.LEDGEPAY_MAX_RETRIES = 0
    with FakeLedgePay() as fake:
        spread(fake, 250)
        services.sync_payments()
        fake.pay(fake.state.list_payments({"limit": "1"})["data"][0]["id"])
        pages = []
        list_payments = LedgePayClient.list_payments

        def drop_the_second_page(self, **kwargs):
            pages.append(kwargs)
            if len(pages) == 2:
                fake.fail_next(None)  # The connection drops.
            return list_payments(self, **kwargs)

        monkeypatch.setattr(LedgePayClient, "list_payments", drop_the_second_page)
        out, err, status = run("--format=json")

    assert status == 2
    assert "LedgePay could not be read: Could not reach LedgePay" in err
    assert "Checked before that: 100 payments checked in 1 page" in err
    report = json.loads(out)
    assert (report["outcome"], report["checked"], len(report["drift"])) == ("failed", 100, 1)
    record = Reconciliation.objects.get()
    assert (record.outcome, record.checked) == ("failed", 100)
    assert "Could not reach LedgePay" in record.error
    assert settings.LEDGEPAY_API_KEY not in err + out + record.error


def test_without_an_api_key_exits_2(settings):
    settings.LEDGEPAY_API_KEY = ""
    _, err, status = run()
    assert status == 2
    assert "LEDGEPAY_API_KEY" in err
    assert Reconciliation.objects.get().outcome == "failed"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("--since=2024-03-01", "--until=2024-02-01"),
            "--since (2024-03-01T00:00:00Z) must be before --until (2024-02-01T00:00:00Z).",
        ),
        (("--since=2999-01-01T10:30:00.123456",), "--since (2999-01-01T10:30:00Z) must be"),
        (("--since=",), "--since must be an ISO 8601 time like 2024-01-15T10:30:00Z or a date"),
        (("--until=",), "--until must be an ISO 8601 time"),
        (("--format=xml",), "argument --format: invalid choice: 'xml'"),
        (("--nope",), "unrecognized arguments: --nope"),
        (("--since=2024-02-01", "--until=2024-02-01"), "must be before --until"),
        (("--since=last week",), "--since must be an ISO 8601 time"),
        (("--until=2024-13-01",), "--until must be an ISO 8601 time"),
        (("--since=0001-01-01T00:00:00+01:00",), "--since is out of range"),
        (("--since=2022-01-01", "--until=2024-01-01"), "The window is 730 days long: pass --yes"),
    ],
)
def test_bad_input_is_a_clear_command_error(api, args, message):
    with pytest.raises(CommandError) as excinfo:
        call_command("ledgepay_reconcile", *args, stdout=StringIO(), stderr=StringIO())
    assert message in str(excinfo.value)
    assert excinfo.value.returncode == 2
    assert len(api.calls) == 0
    assert not Reconciliation.objects.exists()


def test_a_reversed_window_names_its_times_as_the_report_does(api):
    # --until is now, to the microsecond; the message has the report's seconds and Z.
    with pytest.raises(CommandError) as excinfo:
        call_command("ledgepay_reconcile", "--since=2999-01-01", stdout=StringIO())
    assert re.fullmatch(
        r"--since \(2999-01-01T00:00:00Z\) must be before --until "
        r"\(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\)\.",
        str(excinfo.value),
    ), str(excinfo.value)
    assert excinfo.value.returncode == 2


def test_a_long_window_runs_with_yes():
    with FakeLedgePay():
        out = StringIO()
        call_command(
            "ledgepay_reconcile", "--since=2022-01-01", "--until=2024-01-01", "--yes", stdout=out
        )
    assert "No drift remains: 0 payments checked in 1 page" in out.getvalue()


def test_the_default_window_is_the_last_30_days():
    now = datetime.datetime.now(UTC)
    with FakeLedgePay() as fake:
        seed(fake, 1, at=now - datetime.timedelta(days=29))
        seed(fake, 1, at=now - datetime.timedelta(days=31))
        out = StringIO()
        with pytest.raises(CommandError):
            call_command("ledgepay_reconcile", "--format=json", stdout=out, stderr=StringIO())
    report = json.loads(out.getvalue())
    assert report["checked"] == 1
    (query,) = calls(fake)
    since = datetime.datetime.fromisoformat(query["created_after"].replace("Z", "+00:00"))
    assert abs(since - (now - datetime.timedelta(days=30, seconds=1))) < datetime.timedelta(
        seconds=5
    )


def test_progress_goes_to_stderr_with_json_and_away_at_verbosity_0():
    with FakeLedgePay() as fake:
        spread(fake, 150)
        services.sync_payments()
        out, err, _ = run("--format=json")
        quiet_out, quiet_err, _ = run(verbosity=0)
    assert json.loads(out)["checked"] == 150
    assert "Page 1: 100 payments checked" in err and "Page 2: 150 payments checked" in err
    assert "Page" not in quiet_out + quiet_err


# Cost


def test_queries_per_page_are_constant():
    def queries_for(count):
        Payment.objects.all().delete()
        Reconciliation.objects.all().delete()
        with FakeLedgePay() as fake:
            spread(fake, count, start=NOON - datetime.timedelta(hours=1))
            services.sync_payments()
            with CaptureQueriesContext(connection) as captured:
                report = reconcile.reconcile(
                    since=datetime.datetime(2023, 1, 1, tzinfo=UTC), until=NOON
                )
        assert report.outcome == "clean" and report.checked == count
        return len(captured), report.pages

    small, small_pages = queries_for(150)
    large, large_pages = queries_for(450)
    assert (small_pages, large_pages) == (2, 5)
    # A compare and a check of the mirror's own rows per page; the rest once per run.
    assert large - small == 2 * (large_pages - small_pages)
    assert small <= 2 * small_pages + 4


def test_a_run_stopped_by_anything_else_is_recorded_as_failed(monkeypatch):
    def interrupted(**kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(services, "payment_pages", interrupted)
    with pytest.raises(KeyboardInterrupt):
        reconcile.reconcile(since=NOON.replace(day=1), until=NOON)
    record = Reconciliation.objects.get()
    assert (record.outcome, record.error) == ("failed", "Stopped by KeyboardInterrupt.")
    assert record.finished_at is not None


def test_final_payments_the_list_cannot_show_are_counted_unverified_not_asked_for():
    with FakeLedgePay() as fake:
        crowded = seed(fake, 120, status="succeeded")
        seed(fake, 5, at=NOON - datetime.timedelta(minutes=1))
        for ledgepay_id in crowded:
            services.apply_payment(fake.payments[ledgepay_id])
        services.sync_payments()
        fake.requests.clear()

        out, _, status = run("--format=json")

    assert status == 1
    (entry,) = json.loads(out)["drift"]
    assert (entry["kind"], entry["status"], entry["listed"], entry["unverified"]) == (
        "unlisted",
        "succeeded",
        100,
        20,
    )
    assert by_id_calls(fake) == []


def test_a_rate_limited_page_is_waited_for_and_read_again(sleeps):
    with FakeLedgePay() as fake:
        spread(fake, 150)
        services.sync_payments()
        fake.requests.clear()
        fake.fail_next(429, times=2)

        out, _, status = run()

    assert status == 0
    assert "No drift remains: 150 payments checked in 2 pages" in out
    assert len(calls(fake)) == 4  # Two answered 429, then the two pages.
    assert len(sleeps) == 2


def test_a_refund_request_ledgepay_cannot_answer_stays_in_the_report(settings, monkeypatch):
    settings.LEDGEPAY_MAX_RETRIES = 0
    with FakeLedgePay() as fake:
        (paid,) = seed(fake, 1, status="succeeded")
        services.sync_payments()
        RefundRequest.objects.create(
            payment=Payment.objects.get(ledgepay_id=paid),
            amount=300,
            reason="customer_request",
            idempotency_key="lost-answer",
            source="api",
        )
        list_payments = LedgePayClient.list_payments

        def then_fail(self, **kwargs):
            page = list_payments(self, **kwargs)
            fake.fail_next(None)  # The refund sent again gets no answer.
            return page

        monkeypatch.setattr(LedgePayClient, "list_payments", then_fail)
        out, err, status = run("--apply", "--format=json")

    assert status == 2
    report = json.loads(out)
    assert [(e["kind"], e["repaired"]) for e in report["drift"]] == [("unresolved_refund", False)]
    assert RefundRequest.objects.get().outcome == "unknown"
    assert fake.refunds == {}


def test_the_command_waits_out_a_rate_limit_past_max_wait(api, sleeps):
    # As ledgepay_sync: an operator's command may wait longer than LEDGEPAY_MAX_WAIT.
    api.get(f"{API}/payments", status=429, headers={"Retry-After": "45"})
    api.get(f"{API}/payments", json={"data": [], "has_more": False})
    out, err, status = run()
    assert (status, sleeps) == (0, [45.0])
