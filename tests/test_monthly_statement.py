"""``ledgepay_statement --month``: per currency, what succeeded in the month, from the mirror,
checked against LedgePay's list; 0 when they agree, 1 when they differ, 2 when LedgePay
could not be read."""

from __future__ import annotations

import datetime
import json
from io import StringIO
from typing import Any
from urllib.parse import urlsplit

import pytest

from django.core.management import CommandError, call_command

from django_ledgepay import client, monthly, services
from django_ledgepay.client import LedgePayClient
from django_ledgepay.models import Payment, Refund
from django_ledgepay.testing import FakeLedgePay
from tests.factories import make_payment, make_refund

pytestmark = pytest.mark.django_db

UTC = datetime.timezone.utc
URLS = {"success_url": "https://shop.test/ok", "cancel_url": "https://shop.test/no"}
MID_JANUARY = datetime.datetime(2026, 1, 15, 10, 30, tzinfo=UTC)


def seed(
    fake: FakeLedgePay,
    *,
    at: datetime.datetime,
    status: str,
    amount: int = 700,
    currency: str = "EUR",
) -> str:
    """A payment in LedgePay's state, created at ``at``, settled as ``status``."""
    fake.state.clock = lambda: at.timestamp()
    payment = fake.state.create_payment({"amount": amount, "currency": currency, **URLS})
    if status != "pending":
        fake.state.settle(payment["id"], status)
    return str(payment["id"])


def run(*args: str, **options: Any) -> tuple[str, str, int]:
    """call_command("ledgepay_statement", ...): (stdout, stderr and the error, exit status)."""
    out, err = StringIO(), StringIO()
    try:
        call_command("ledgepay_statement", *args, stdout=out, stderr=err, **options)
    except CommandError as error:
        return out.getvalue(), err.getvalue() + str(error), error.returncode
    return out.getvalue(), err.getvalue(), 0


def a_month_in_step(fake: FakeLedgePay) -> None:
    """January 2026 at LedgePay: 120 succeeded EUR payments (two pages), 3 JPY, and others
    that did not succeed; mirrored by a sync; refunds in the mirror."""
    for n in range(120):
        seed(
            fake,
            at=MID_JANUARY - datetime.timedelta(minutes=n),
            status="succeeded",
            amount=1000 + n,
        )
    for n in range(3):
        seed(
            fake,
            at=MID_JANUARY + datetime.timedelta(days=1, seconds=n),
            status="succeeded",
            amount=500,
            currency="JPY",
        )
    seed(fake, at=MID_JANUARY, status="failed")
    seed(fake, at=MID_JANUARY, status="pending")
    seed(fake, at=MID_JANUARY, status="canceled")
    services.sync_payments()


def test_a_month_in_step_agrees_and_prints_the_spec_s_json():
    with FakeLedgePay() as fake:
        a_month_in_step(fake)
        january = Payment.objects.filter(currency="EUR").order_by("created_at")
        make_refund(january[0], amount=300, created_at=MID_JANUARY)
        make_refund(january[1], amount=200, created_at=MID_JANUARY)
        make_refund(january[2], amount=999, status=Refund.Status.FAILED, created_at=MID_JANUARY)
        make_refund(january[3], amount=100, status=Refund.Status.PENDING, created_at=MID_JANUARY)
        fake.requests.clear()

        out, err, status = run("--month=2026-01", "--format=json")

    assert status == 0, err
    statement = json.loads(out)
    eur_sum = sum(1000 + n for n in range(120))
    assert statement["month"] == "2026-01"
    assert statement["currencies"] == [
        {
            "currency": "EUR",
            "payments": {"count": 120, "amount": eur_sum},
            "refunds": {"count": 2, "amount": 500},
            "net": eur_sum - 500,
            "agrees": True,
            "ledgepay": {"payments": {"count": 120, "amount": eur_sum}},
        },
        {
            "currency": "JPY",
            "payments": {"count": 3, "amount": 1500},
            "refunds": {"count": 0, "amount": 0},
            "net": 1500,
            "agrees": True,
            "ledgepay": {"payments": {"count": 3, "amount": 1500}},
        },
    ]
    assert statement["agrees"] is True
    assert statement["differences"] == []
    assert (statement["since"], statement["until"]) == (
        "2026-01-01T00:00:00Z",
        "2026-02-01T00:00:00Z",
    )
    assert statement["error"] == ""
    assert statement["listed"] == 126
    # Two pages of LedgePay's list, and nothing asked by id.
    paths = [urlsplit(r.url).path for r in fake.requests]
    assert paths == ["/v1/payments", "/v1/payments"]
    assert "Page 2: 126 payments listed by LedgePay, 0 differences so far." in err


def test_in_text_each_currency_has_a_line_and_agreement_is_said():
    with FakeLedgePay() as fake:
        a_month_in_step(fake)

        out, _, status = run("--month=2026-01")

    assert status == 0
    lines = out.splitlines()
    assert lines[0].startswith(
        "Statement of 2026-01 (2026-01-01T00:00:00Z to 2026-02-01T00:00:00Z)"
    )
    assert (
        lines[2]
        == "JPY: payments 3, 1500 JPY; refunds 0, 0 JPY; net 1500 JPY. Agrees with LedgePay."
    )
    assert lines[-1] == "The mirror agrees with LedgePay for 2026-01."


def test_the_month_is_utc_from_its_first_second_to_the_next_month_s():
    with FakeLedgePay() as fake:
        edges = {
            "first": datetime.datetime(2026, 1, 1, tzinfo=UTC),
            "last": datetime.datetime(2026, 1, 31, 23, 59, 59, tzinfo=UTC),
            "before": datetime.datetime(2025, 12, 31, 23, 59, 59, tzinfo=UTC),
            "after": datetime.datetime(2026, 2, 1, tzinfo=UTC),
        }
        for name, at in edges.items():
            seed(fake, at=at, status="succeeded", amount=100 if name in ("first", "last") else 7)
        services.sync_payments()

        out, _, status = run("--month=2026-01", "--format=json")

    assert status == 0
    (eur,) = json.loads(out)["currencies"]
    assert eur["payments"] == {"count": 2, "amount": 200}
    assert eur["ledgepay"]["payments"] == {"count": 2, "amount": 200}


def test_refunds_count_in_the_month_they_were_created():
    december = make_payment(amount=5000, created_at=datetime.datetime(2025, 12, 20, tzinfo=UTC))
    make_refund(december, amount=1200, created_at=MID_JANUARY)
    with FakeLedgePay():
        out, _, status = run("--month=2026-01", "--format=json")

    assert status == 0  # Nothing succeeded in January on either side.
    (eur,) = json.loads(out)["currencies"]
    assert eur["payments"] == {"count": 0, "amount": 0}
    assert eur["refunds"] == {"count": 1, "amount": 1200}
    assert eur["net"] == -1200
    assert eur["agrees"] is True


# Differences, each named


def test_each_difference_is_named_and_the_exit_status_is_1():
    with FakeLedgePay() as fake:
        missing = seed(fake, at=MID_JANUARY, status="succeeded", amount=111)
        settled = seed(fake, at=MID_JANUARY, status="succeeded", amount=222)
        failed = seed(fake, at=MID_JANUARY, status="failed", amount=333)
        changed = seed(fake, at=MID_JANUARY, status="succeeded", amount=444)
        moved = seed(fake, at=MID_JANUARY, status="succeeded", amount=555)
        fine = seed(fake, at=MID_JANUARY, status="succeeded", amount=500, currency="JPY")
        services.sync_payments()
        Payment.objects.filter(ledgepay_id=missing).delete()
        Payment.objects.filter(ledgepay_id=settled).update(status="pending", completed_at=None)
        Payment.objects.filter(ledgepay_id=failed).update(status="succeeded")
        Payment.objects.filter(ledgepay_id=changed).update(amount=440)
        Payment.objects.filter(ledgepay_id=moved).update(
            created_at=datetime.datetime(2026, 2, 3, tzinfo=UTC)
        )
        unknown = make_payment(ledgepay_id="pay_only_here", amount=666, created_at=MID_JANUARY)

        out, err, status = run("--month=2026-01", "--format=json")
        text, text_err, text_status = run("--month=2026-01")

    assert (status, text_status) == (1, 1)
    statement = json.loads(out)
    kinds = {(entry["kind"], entry["payment"]) for entry in statement["differences"]}
    assert kinds == {
        ("missing", missing),
        ("status", settled),
        ("status", failed),
        ("amount", changed),
        ("created_at", moved),
        ("not_listed", unknown.ledgepay_id),
    }
    by_kind = {entry["kind"]: entry for entry in statement["differences"]}
    assert by_kind["missing"]["detail"] == "Succeeded at LedgePay (1.11 EUR), not in the mirror."
    assert by_kind["amount"]["detail"] == "4.40 EUR in the mirror, 4.44 EUR at LedgePay."
    assert by_kind["not_listed"]["detail"] == (
        "Succeeded in the mirror (6.66 EUR), not on LedgePay's list of the month."
    )
    eur, jpy = statement["currencies"]
    assert eur["agrees"] is False and jpy["agrees"] is True
    # LedgePay: 111 + 222 + 444 + 555; the mirror: 333 (failed there) + 440 + 666.
    assert eur["ledgepay"]["payments"] == {"count": 4, "amount": 1332}
    assert eur["payments"] == {"count": 3, "amount": 1439}
    assert statement["agrees"] is False
    assert err.endswith("The mirror and LedgePay differ for 2026-01: 6 differences (EUR).")
    assert f"missing     {missing:<24} Succeeded at LedgePay (1.11 EUR)" in text
    assert fine  # In step, in its own currency.


def test_ledgepay_out_of_reach_is_exit_2_with_the_mirror_s_totals(api):
    make_payment(amount=900, created_at=MID_JANUARY)

    out, err, status = run("--month=2026-01", "--format=json")

    assert status == 2
    assert len(api.calls) == 4  # The first attempt and its three retries.
    statement = json.loads(out)
    assert statement["error"]
    assert statement["agrees"] is False
    assert statement["currencies"][0]["payments"] == {"count": 1, "amount": 900}
    (line,) = err.splitlines()
    assert line.startswith("LedgePay could not be read:")


def test_the_api_key_missing_is_exit_2_naming_the_setting(settings):
    settings.LEDGEPAY_API_KEY = ""

    _, err, status = run("--month=2026-01")

    assert status == 2
    assert "LEDGEPAY_API_KEY" in err


def test_the_list_is_read_as_background_work(monkeypatch):
    seen = []
    original = LedgePayClient.list_payments

    def list_payments(self: LedgePayClient, **kwargs: Any) -> Any:
        seen.append(client._background.get())
        return original(self, **kwargs)

    monkeypatch.setattr(LedgePayClient, "list_payments", list_payments)
    with FakeLedgePay() as fake:
        seed(fake, at=MID_JANUARY, status="succeeded")
        services.sync_payments()
        seen.clear()
        assert monthly.monthly_statement("2026-01").agrees

    assert seen == [True]


# Bad input


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--month=2026-13",), "--month must be a month like 2026-01 (YYYY-MM), not '2026-13'."),
        (("--month=2026-00",), "--month must be a month like 2026-01 (YYYY-MM), not '2026-00'."),
        (("--month=2026-1",), "--month must be a month like 2026-01 (YYYY-MM), not '2026-1'."),
        (("--month=2026-01-01",), "--month must be a month like 2026-01"),
        (("--month=",), "--month must be a month like 2026-01 (YYYY-MM), not ''."),
        (("--month=0000-01",), "--month must be a month like 2026-01"),
        (("--month=9999-12",), "--month must be a month like 2026-01"),
        (("--month=２０２６-01",), "--month must be a month like 2026-01"),
        ((), "the following arguments are required: --month"),
        (("--month=2026-01", "--account=eu"), "--account: Unknown account 'eu'"),
        (("--month=2026-01", "--format=csv"), "argument --format: invalid choice"),
    ],
)
def test_bad_input_is_one_line_and_exit_status_2(api, args, message):
    out, err = StringIO(), StringIO()
    with pytest.raises(CommandError) as excinfo:
        call_command("ledgepay_statement", *args, stdout=out, stderr=err)

    assert str(excinfo.value).startswith(message), str(excinfo.value)
    assert "\n" not in str(excinfo.value)
    assert excinfo.value.returncode == 2
    assert (out.getvalue(), err.getvalue()) == ("", "")
    assert len(api.calls) == 0


def test_the_default_account_is_taken():
    with FakeLedgePay():
        out, _, status = run("--month=2026-01", "--account=default", "--format=json")

    assert status == 0
    assert json.loads(out)["account"] == "default"
