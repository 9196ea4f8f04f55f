"""``ledgepay_export``, the admin's ``export_csv`` and the dashboard's CSV: the columns in
order, exact amounts, times in UTC, streamed, read from the mirror only."""

from __future__ import annotations

import csv
import datetime
import io
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from django.core.management import CommandError, call_command
from django.db import DatabaseError, connection
from django.http import StreamingHttpResponse
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from django_ledgepay import exports
from django_ledgepay.management.commands import ledgepay_export
from django_ledgepay.models import MAX_AMOUNT, Refund
from tests.conftest import staff_client
from tests.factories import make_payment, make_refund

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parent.parent
UTC = datetime.timezone.utc
JAN = datetime.datetime(2026, 1, 15, 10, 30, tzinfo=UTC)
PAYMENT_HEADER = (
    "ledgepay_id,account,status,amount,currency,amount_major,amount_refunded,description,"
    "customer_email,created_at,completed_at"
)
REFUND_HEADER = "ledgepay_id,payment,account,status,amount,currency,amount_major,reason,created_at"


def export(*args: str, **options: Any) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("ledgepay_export", *args, stdout=out, stderr=err, **options)
    return out.getvalue(), err.getvalue()


def parsed(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text, newline="")))


def refused(*args: str) -> CommandError:
    out, err = io.StringIO(), io.StringIO()
    with pytest.raises(CommandError) as excinfo:
        call_command("ledgepay_export", *args, stdout=out, stderr=err)
    assert (out.getvalue(), err.getvalue()) == ("", "")
    assert "\n" not in str(excinfo.value)
    return excinfo.value


# The columns, in order


def test_payments_have_the_columns_in_order_and_exact_amounts(api):
    paid = make_payment(
        ledgepay_id="pay_eur",
        amount=1250,
        currency="EUR",
        created_at=JAN,
        completed_at=JAN + datetime.timedelta(minutes=2),
    )
    make_refund(paid, amount=250, created_at=JAN)
    make_refund(paid, amount=1000, status=Refund.Status.FAILED, created_at=JAN)  # Not counted.
    make_payment(ledgepay_id="pay_jpy", amount=500, currency="JPY", created_at=JAN)
    make_payment(ledgepay_id="pay_kwd", amount=1250, currency="KWD", created_at=JAN)
    make_payment(ledgepay_id="pay_clf", amount=12345, currency="CLF", created_at=JAN)
    make_payment(ledgepay_id="pay_max", amount=MAX_AMOUNT, currency="EUR", created_at=JAN)

    out, _ = export("--kind=payments")

    assert out.splitlines()[0] == PAYMENT_HEADER
    rows = {row["ledgepay_id"]: row for row in parsed(out)}
    assert rows["pay_eur"] == {
        "ledgepay_id": "pay_eur",
        "account": "default",
        "status": "succeeded",
        "amount": "1250",
        "currency": "EUR",
        "amount_major": "12.50",
        "amount_refunded": "250",
        "description": "Order #12345",
        "customer_email": "customer@example.com",
        "created_at": "2026-01-15T10:30:00Z",
        "completed_at": "2026-01-15T10:32:00Z",
    }
    assert rows["pay_jpy"]["amount_major"] == "500"
    assert rows["pay_kwd"]["amount_major"] == "1.250"
    assert rows["pay_clf"]["amount_major"] == "1.2345"
    # The largest amount is exact: no float on the way.
    assert rows["pay_max"]["amount"] == str(MAX_AMOUNT)
    assert rows["pay_max"]["amount_major"] == "92233720368547758.07"
    assert len(api.calls) == 0


def test_refunds_have_the_columns_in_order(api):
    payment = make_payment(ledgepay_id="pay_1", currency="JPY", amount=900, created_at=JAN)
    make_refund(payment, ledgepay_id="re_1", amount=300, reason="duplicate", created_at=JAN)

    out, _ = export("--kind=refunds")

    assert out.splitlines()[0] == REFUND_HEADER
    assert parsed(out) == [
        {
            "ledgepay_id": "re_1",
            "payment": "pay_1",
            "account": "default",
            "status": "succeeded",
            "amount": "300",
            "currency": "JPY",
            "amount_major": "300",
            "reason": "duplicate",
            "created_at": "2026-01-15T10:30:00Z",
        }
    ]
    assert len(api.calls) == 0


def test_json_lines_keep_the_order_with_numbers_and_exact_strings(api):
    payment = make_payment(ledgepay_id="pay_1", amount=1999, created_at=JAN)
    make_refund(payment, ledgepay_id="re_1", amount=999, created_at=JAN)

    payments, _ = export("--kind=payments", "--format=jsonl")
    refunds, _ = export("--kind=refunds", "--format=jsonl")

    (line,) = payments.splitlines()
    row = json.loads(line)
    assert list(row) == list(exports.PAYMENT_COLUMNS)
    assert row["amount"] == 1999 and row["amount_refunded"] == 999
    assert row["amount_major"] == "19.99"  # A string: exact, never a float.
    assert row["completed_at"] is None
    (line,) = refunds.splitlines()
    assert list(json.loads(line)) == list(exports.REFUND_COLUMNS)
    assert len(api.calls) == 0


def test_times_are_utc_whatever_the_zone_they_were_given_in(settings):
    settings.TIME_ZONE = "Asia/Tokyo"
    tokyo = datetime.timezone(datetime.timedelta(hours=9))
    make_payment(created_at=datetime.datetime(2026, 1, 1, 8, 0, 5, 123456, tzinfo=tokyo))

    out, _ = export("--kind=payments")

    assert parsed(out)[0]["created_at"] == "2025-12-31T23:00:05Z"


def test_text_is_quoted_and_a_formula_is_kept_as_text_in_csv_only():
    make_payment(ledgepay_id="pay_q", description='Two, "quoted"\nlines', created_at=JAN)
    make_payment(ledgepay_id="pay_f", description='=HYPERLINK("x")', created_at=JAN)
    make_payment(ledgepay_id="pay_m", description="-12", customer_email="@x", created_at=JAN)

    out, _ = export("--kind=payments")
    lines, _ = export("--kind=payments", "--format=jsonl")

    rows = {row["ledgepay_id"]: row for row in parsed(out)}
    assert rows["pay_q"]["description"] == 'Two, "quoted"\nlines'
    assert rows["pay_f"]["description"] == '\'=HYPERLINK("x")'
    assert rows["pay_m"]["description"] == "'-12"
    assert rows["pay_m"]["customer_email"] == "'@x"
    assert out.endswith("\r\n")
    jsonl = {row["ledgepay_id"]: row for row in map(json.loads, lines.splitlines())}
    assert jsonl["pay_f"]["description"] == '=HYPERLINK("x")'


# The window


def test_the_window_takes_since_and_leaves_until_out():
    make_payment(ledgepay_id="pay_before", created_at=JAN - datetime.timedelta(seconds=1))
    make_payment(ledgepay_id="pay_first", created_at=JAN)
    make_payment(ledgepay_id="pay_last", created_at=JAN + datetime.timedelta(hours=1, seconds=-1))
    make_payment(ledgepay_id="pay_until", created_at=JAN + datetime.timedelta(hours=1))
    make_payment(ledgepay_id="pay_undated", created_at=None)

    windowed, _ = export(
        "--kind=payments", "--since=2026-01-15T10:30:00Z", "--until=2026-01-15T11:30Z"
    )
    everything, _ = export("--kind=payments")

    assert [row["ledgepay_id"] for row in parsed(windowed)] == ["pay_first", "pay_last"]
    # Oldest first; without a window, the payments without a creation time too, last.
    assert [row["ledgepay_id"] for row in parsed(everything)] == [
        "pay_before",
        "pay_first",
        "pay_last",
        "pay_until",
        "pay_undated",
    ]
    assert parsed(everything)[-1]["created_at"] == ""


def test_a_window_of_refunds_follows_their_own_creation_time():
    payment = make_payment(created_at=JAN - datetime.timedelta(days=40))
    make_refund(payment, ledgepay_id="re_in", created_at=JAN)
    make_refund(payment, ledgepay_id="re_out", created_at=JAN - datetime.timedelta(days=30))

    out, _ = export("--kind=refunds", "--since=2026-01-01", "--until=2026-02-01")

    assert [row["ledgepay_id"] for row in parsed(out)] == ["re_in"]


def test_the_only_account_is_default_and_another_is_refused():
    make_payment(created_at=JAN)

    out, _ = export("--kind=payments", "--account=default")

    assert parsed(out)[0]["account"] == "default"
    error = refused("--kind=payments", "--account=eu")
    assert error.returncode == 2
    assert str(error).startswith("--account: Unknown account 'eu'")


# Bad input: one line, a non-zero exit, nothing read or written


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--kind=payments", "--since=2026-02-01", "--until=2026-01-01"), "--since (2026-02-01"),
        (("--kind=payments", "--since=x"), "--since must be an ISO 8601 time"),
        (("--kind=payments", "--until="), "--until must be an ISO 8601 time"),
        (("--kind=payments", "--format=xlsx"), "argument --format: invalid choice"),
        (("--kind=invoices",), "argument --kind: invalid choice"),
        ((), "the following arguments are required: --kind"),
        (("--kind=payments", "--output=/no/such/dir/x.csv"), "--output /no/such/dir/x.csv cannot"),
    ],
)
def test_bad_input_is_one_line_and_exit_status_2(api, args, message):
    error = refused(*args)

    assert str(error).startswith(message), str(error)
    assert error.returncode == 2
    assert len(api.calls) == 0


def test_an_unwritable_output_is_refused_before_anything_is_read(
    tmp_path, monkeypatch, django_assert_num_queries
):
    def denied(*args: Any, **kwargs: Any) -> Any:
        raise PermissionError(13, "Permission denied")

    with django_assert_num_queries(0):
        directory = refused("--kind=payments", f"--output={tmp_path}")
    monkeypatch.setattr(tempfile, "NamedTemporaryFile", denied)
    with django_assert_num_queries(0):
        error = refused("--kind=payments", f"--output={tmp_path / 'x.csv'}")

    assert str(directory) == f"--output {tmp_path} cannot be written: it is a directory."
    assert str(error) == f"--output {tmp_path / 'x.csv'} cannot be written: Permission denied."
    assert (directory.returncode, error.returncode) == (2, 2)


def test_a_read_only_output_file_is_refused_and_kept(tmp_path):
    locked = tmp_path / "locked.csv"
    locked.write_text("kept")
    locked.chmod(0o400)
    if os.access(locked, os.W_OK):
        pytest.skip("running as a user who may write to any file (root)")

    error = refused("--kind=payments", f"--output={locked}")

    assert str(error) == f"--output {locked} cannot be written: the file is not writable."
    assert locked.read_text() == "kept"


def test_from_the_command_line_bad_input_is_one_line(tmp_path):
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "django",
            "ledgepay_export",
            "--kind=payments",
            "--since=2026-02-01",
            "--until=2026-01-01",
            "--settings=tests.settings",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr == (
        "CommandError: --since (2026-02-01T00:00:00Z) must be before --until "
        "(2026-01-01T00:00:00Z).\n"
    )


# The file


def test_output_replaces_the_file_once_complete_readable_by_its_owner(tmp_path):
    make_payment(ledgepay_id="pay_1", created_at=JAN)
    target = tmp_path / "payments.csv"
    target.write_text("an older export")

    out, err = export("--kind=payments", f"--output={target}")

    assert out == ""
    with open(target, newline="") as written:
        assert parsed(written.read())[0]["ledgepay_id"] == "pay_1"
    assert target.stat().st_mode & 0o777 == 0o600
    assert err.splitlines() == [
        "Exporting 1 payments created at any time.",
        f"Exported 1 payment to {target}.",
    ]
    assert os.listdir(tmp_path) == ["payments.csv"]


def test_a_failure_half_way_leaves_the_older_file_and_no_partial_one(tmp_path, monkeypatch):
    make_payment(created_at=JAN)
    target = tmp_path / "payments.csv"
    target.write_text("an older export")

    def failing(*args: Any, **kwargs: Any) -> Any:
        yield dict.fromkeys(exports.PAYMENT_COLUMNS, "x")
        raise DatabaseError("connection lost")

    monkeypatch.setitem(exports.ROWS, exports.PAYMENTS, failing)
    with pytest.raises(CommandError) as excinfo:
        export("--kind=payments", f"--output={target}")

    assert str(excinfo.value) == "The export stopped: the database failed: connection lost"
    assert target.read_text() == "an older export"
    assert os.listdir(tmp_path) == ["payments.csv"]


# Streamed


def test_rows_are_read_in_chunks_with_no_query_per_row(api):
    def queries(count: int) -> int:
        for _ in range(count):
            payment = make_payment(created_at=JAN)
            make_refund(payment, amount=100, created_at=JAN)
        with CaptureQueriesContext(connection) as captured:
            out, _ = export("--kind=payments")
        assert len(parsed(out)) == Refund.objects.count()
        return len(captured)

    # The count for the progress line, then the rows: the same however many.
    assert queries(3) == queries(30)
    assert len(api.calls) == 0


def test_rows_are_an_iterator_read_with_a_chunk_size(monkeypatch):
    for _ in range(5):
        make_payment(created_at=JAN)
    chunks = []
    original = type(exports.payments()).iterator

    def iterator(self: Any, chunk_size: int | None = None) -> Any:
        chunks.append(chunk_size)
        return original(self, chunk_size=chunk_size)

    monkeypatch.setattr(type(exports.payments()), "iterator", iterator)
    lines = exports.lines(exports.PAYMENTS, exports.payments(), chunk_size=2)

    assert next(lines) == PAYMENT_HEADER + "\r\n"  # Nothing read yet.
    assert chunks == []
    assert len(list(lines)) == 5
    assert chunks == [2]


def test_a_long_run_prints_its_progress_on_stderr(monkeypatch):
    monkeypatch.setattr(ledgepay_export, "PROGRESS_EVERY", 2)
    monkeypatch.setattr(ledgepay_export, "WRITE_EVERY", 3)
    for _ in range(5):
        make_payment(created_at=JAN)

    out, err = export("--kind=payments", "--since=2026-01-01")
    quiet_out, quiet_err = export("--kind=payments", verbosity=0)

    assert len(parsed(out)) == 5
    assert err.splitlines() == [
        "Exporting 5 payments created from 2026-01-01T00:00:00Z on.",
        "Exported 2 of 5 payments (40%).",
        "Exported 4 of 5 payments (80%).",
        "Exported 5 payments.",
    ]
    assert quiet_out == out and quiet_err == ""


# The admin's action and the dashboard's download


@pytest.mark.parametrize("kind", ["payment", "refund"])
def test_the_admin_exports_the_selection_as_streamed_csv(django_user_model, api, kind):
    viewer = staff_client(django_user_model, "view_payment", "view_refund")
    first = make_payment(ledgepay_id="pay_1", created_at=JAN)
    second = make_payment(ledgepay_id="pay_2", created_at=JAN - datetime.timedelta(days=1))
    make_payment(ledgepay_id="pay_3", created_at=JAN)
    refunds = [
        make_refund(first, ledgepay_id="re_1", created_at=JAN),
        make_refund(second, created_at=JAN - datetime.timedelta(days=1)),
    ]
    selected = [first, second] if kind == "payment" else refunds

    page = viewer.get(f"/admin/django_ledgepay/{kind}/")
    response = viewer.post(
        f"/admin/django_ledgepay/{kind}/",
        {"action": "export_csv", "_selected_action": [obj.pk for obj in selected], "index": 0},
    )

    assert 'value="export_csv"' in page.content.decode()
    assert isinstance(response, StreamingHttpResponse)
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"].startswith(f'attachment; filename="ledgepay-{kind}s-')
    text = b"".join(response.streaming_content).decode()
    header = PAYMENT_HEADER if kind == "payment" else REFUND_HEADER
    assert text.splitlines()[0] == header
    ids = [row["ledgepay_id"] for row in parsed(text)]
    # Oldest first, the selection only.
    assert ids == (["pay_2", "pay_1"] if kind == "payment" else [refunds[1].ledgepay_id, "re_1"])
    if kind == "payment":
        assert parsed(text)[1]["amount_refunded"] == "2500"
    assert len(api.calls) == 0


def test_the_admin_export_needs_the_view_permission(django_user_model):
    payment = make_payment()
    viewer = staff_client(django_user_model, "view_refund")  # Refunds only.

    response = viewer.post(
        "/admin/django_ledgepay/payment/",
        {"action": "export_csv", "_selected_action": [payment.pk], "index": 0},
    )

    assert response.status_code == 403


def test_the_dashboard_downloads_its_per_day_table_as_csv(django_user_model, settings):
    settings.TIME_ZONE = "UTC"
    viewer = staff_client(django_user_model, "view_payment")
    today = timezone.now().replace(hour=12, minute=0, second=0, microsecond=0)
    yesterday = today - datetime.timedelta(days=1)
    paid = make_payment(amount=1250, created_at=today)
    make_payment(amount=999, status="pending", created_at=today)
    make_payment(amount=700, currency="JPY", created_at=yesterday)
    make_refund(paid, amount=250, created_at=today)

    page = viewer.get("/admin/django_ledgepay/payment/dashboard/?days=7")
    response = viewer.get("/admin/django_ledgepay/payment/dashboard/?days=7&format=csv")

    assert 'href="?days=7&amp;format=csv"' in page.content.decode()
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"].startswith('attachment; filename="ledgepay-per-day-')
    rows = parsed(response.content.decode())
    assert list(rows[0]) == [
        "day",
        "currency",
        "succeeded_amount",
        "succeeded_major",
        "refunded_amount",
        "refunded_major",
        "refunds",
        "payments_succeeded",
        "payments_pending",
        "payments_failed",
        "payments_canceled",
    ]
    assert rows == [
        {
            "day": today.date().isoformat(),
            "currency": "EUR",
            "succeeded_amount": "1250",
            "succeeded_major": "12.50",
            "refunded_amount": "250",
            "refunded_major": "2.50",
            "refunds": "1",
            "payments_succeeded": "1",
            "payments_pending": "1",
            "payments_failed": "0",
            "payments_canceled": "0",
        },
        {
            "day": yesterday.date().isoformat(),
            "currency": "JPY",
            "succeeded_amount": "700",
            "succeeded_major": "700",
            "refunded_amount": "0",
            "refunded_major": "0",
            "refunds": "0",
            "payments_succeeded": "1",
            "payments_pending": "0",
            "payments_failed": "0",
            "payments_canceled": "0",
        },
    ]


def test_the_dashboard_download_needs_the_view_permission(django_user_model):
    other = staff_client(django_user_model, "view_refund")

    response = other.get("/admin/django_ledgepay/payment/dashboard/?format=csv")

    assert response.status_code == 403


# The benchmark, in a small form


def test_the_memory_benchmark_runs_and_reports(tmp_path):
    env = {
        k: v for k, v in os.environ.items() if k not in ("DJANGO_SETTINGS_MODULE", "DATABASE_URL")
    }
    done = subprocess.run(
        [
            sys.executable,
            "bench/export_memory.py",
            "--sizes=300,3000",
            f"--workdir={tmp_path}",
            "--no-target",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "machine:" in done.stdout
    for size in ("300", "3000"):
        assert f"payments {int(size):>9,}" in done.stdout, done.stdout
