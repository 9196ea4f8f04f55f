from __future__ import annotations

from io import StringIO

import pytest
import requests

from django.core.management import CommandError, call_command

from django_ledgepay.models import Payment
from tests.conftest import API
from tests.factories import make_payment, payment_data

pytestmark = pytest.mark.django_db


def test_sync_command_prints_progress_and_summary(api):
    make_payment(ledgepay_id="pay_a", status="pending")
    page = [
        payment_data(id="pay_a", status="succeeded", created_at="2024-01-15T10:30:01Z"),
        payment_data(id="pay_b", created_at="2024-01-15T10:30:00Z"),
    ]
    api.get(f"{API}/payments", json={"data": page, "has_more": False})
    out = StringIO()
    call_command("ledgepay_sync", "--status", "succeeded", stdout=out)
    output = out.getvalue()
    assert "Page 1: 2 payments so far (1 created, 1 updated)." in output
    assert "Synced 2 payments in 1 page: 1 created, 1 updated, 0 unchanged" in output
    assert "status=succeeded" in api.calls[0].request.url
    assert "limit=100" in api.calls[0].request.url
    assert Payment.objects.get(ledgepay_id="pay_a").status == "succeeded"


def test_sync_command_passes_time_bounds(api):
    api.get(f"{API}/payments", json={"data": [], "has_more": False})
    call_command(
        "ledgepay_sync",
        "--created-after=2024-01-01T00:00:00Z",
        "--created-before=2024-02-01T00:00:00Z",
        stdout=StringIO(),
    )
    url = api.calls[0].request.url
    assert "created_after=2024-01-01T00%3A00%3A00Z" in url
    assert "created_before=2024-02-01T00%3A00%3A00Z" in url


def test_sync_command_refuses_a_bad_time(api):
    with pytest.raises(CommandError, match="--created-after"):
        call_command("ledgepay_sync", "--created-after=last week")
    assert len(api.calls) == 0


def test_sync_command_reports_api_failure_without_the_key(api, settings):
    settings.LEDGEPAY_MAX_RETRIES = 0
    api.get(f"{API}/payments", status=401, json={"error": {"message": "Invalid API key"}})
    with pytest.raises(CommandError) as excinfo:
        call_command("ledgepay_sync", stdout=StringIO())
    assert "Invalid API key" in str(excinfo.value)
    assert settings.LEDGEPAY_API_KEY not in str(excinfo.value)


@pytest.mark.parametrize("api_key", ["", None])
def test_sync_command_without_an_api_key_is_a_command_error(api, settings, api_key):
    settings.LEDGEPAY_API_KEY = api_key

    with pytest.raises(CommandError, match="LEDGEPAY_API_KEY") as excinfo:
        call_command("ledgepay_sync", stdout=StringIO())

    assert str(excinfo.value).startswith("Sync stopped: ")
    assert len(api.calls) == 0


def test_sync_command_with_a_malformed_api_key_is_a_command_error(api, settings):
    settings.LEDGEPAY_API_KEY = "sk_test_from_a_file\n"

    with pytest.raises(CommandError, match="LEDGEPAY_API_KEY") as excinfo:
        call_command("ledgepay_sync", stdout=StringIO())

    assert "sk_test_from_a_file" not in str(excinfo.value)
    assert len(api.calls) == 0


@pytest.mark.parametrize("verbosity", [0, 1])
def test_sync_command_failing_halfway_reports_what_was_done(api, settings, verbosity):
    settings.LEDGEPAY_MAX_RETRIES = 0
    make_payment(ledgepay_id="pay_a", status="pending")
    make_payment(ledgepay_id="pay_c", status="pending")
    page = [
        payment_data(id="pay_a", status="succeeded", created_at="2024-01-15T10:30:02Z"),
        payment_data(id="pay_b", created_at="2024-01-15T10:30:01Z"),
        payment_data(id="pay_c", status="succeeded", created_at="2024-01-15T10:30:00Z"),
    ]
    api.get(f"{API}/payments", json={"data": page, "has_more": True})
    api.get(f"{API}/payments", status=500, json={"error": {"message": "Internal error"}})
    out = StringIO()

    with pytest.raises(CommandError) as excinfo:
        call_command("ledgepay_sync", verbosity=verbosity, stdout=out)

    assert str(excinfo.value) == (
        "Sync stopped after 1 page (3 payments: 1 created, 2 updated): Internal error (HTTP 500)"
    )
    assert len(api.calls) == 2
    # What the first page changed stays.
    assert Payment.objects.get(ledgepay_id="pay_a").status == "succeeded"
    assert Payment.objects.filter(ledgepay_id="pay_b").exists()
    assert ("Page 1:" in out.getvalue()) is (verbosity >= 1)


def test_sync_command_failing_later_counts_every_page_done(api, settings):
    settings.LEDGEPAY_MAX_RETRIES = 0
    first = [payment_data(id="pay_a", created_at="2024-01-15T10:30:05Z")]
    second = [payment_data(id="pay_b", created_at="2024-01-15T10:30:00Z")]
    api.get(f"{API}/payments", json={"data": first, "has_more": True})
    api.get(f"{API}/payments", json={"data": second, "has_more": True})
    api.get(f"{API}/payments", body=requests.ConnectionError("reset"))

    with pytest.raises(CommandError) as excinfo:
        call_command("ledgepay_sync", stdout=StringIO())

    assert str(excinfo.value).startswith(
        "Sync stopped after 2 pages (2 payments: 2 created, 0 updated): "
    )
    assert "Could not reach LedgePay" in str(excinfo.value)
    assert settings.LEDGEPAY_API_KEY not in str(excinfo.value)
    assert len(api.calls) == 3


def test_sync_command_counts_in_words_that_agree(api):
    api.get(f"{API}/payments", json={"data": [payment_data()], "has_more": False})
    out = StringIO()
    call_command("ledgepay_sync", stdout=out)
    assert "Page 1: 1 payment so far" in out.getvalue()
    assert "Synced 1 payment in 1 page: 1 created" in out.getvalue()
