from __future__ import annotations

import datetime
import json
from io import StringIO
from urllib.parse import parse_qsl, urlsplit

import pytest
import requests
import responses

from django.core.management import CommandError, call_command

from django_ledgepay import services, sync
from django_ledgepay.models import Payment
from django_ledgepay.testing import FakeLedgePay
from tests.conftest import API
from tests.factories import make_payment, next_id, payment_data

pytestmark = pytest.mark.django_db

URLS = {"success_url": "https://shop.test/ok", "cancel_url": "https://shop.test/no"}
#: 2024-01-15T10:30:00Z in Unix seconds.
SECOND = int(datetime.datetime(2024, 1, 15, 10, 30, tzinfo=datetime.timezone.utc).timestamp())


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


def test_sync_command_takes_a_date_as_its_midnight_utc(api):
    api.get(f"{API}/payments", json={"data": [], "has_more": False})
    call_command(
        "ledgepay_sync",
        "--created-after=2024-01-01",
        "--created-before=2024-02-01T01:00:00+01:00",
        stdout=StringIO(),
    )
    url = api.calls[0].request.url
    assert "created_after=2024-01-01T00%3A00%3A00Z" in url
    assert "created_before=2024-02-01T00%3A00%3A00Z" in url


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--created-after=last week",), "--created-after must be an ISO 8601 time like"),
        (("--created-after=",), "--created-after must be an ISO 8601 time like"),
        (("--created-before=",), "--created-before must be an ISO 8601 time like"),
        (
            ("--created-after=0001-01-01T00:00:00+01:00",),
            "--created-after is out of range: '0001-01-01T00:00:00+01:00'.",
        ),
        (
            ("--created-after=2024-02-01", "--created-before=2024-01-01T10:30:00.5Z"),
            "--created-after (2024-02-01T00:00:00Z) must be before "
            "--created-before (2024-01-01T10:30:00Z).",
        ),
        (
            ("--created-after=2024-01-01", "--created-before=2024-01-01"),
            "--created-after (2024-01-01T00:00:00Z) must be before",
        ),
        (("--status=paid",), "argument --status: invalid choice: 'paid'"),
    ],
)
def test_sync_command_refuses_bad_input_as_reconcile_does(api, args, message):
    with pytest.raises(CommandError) as excinfo:
        call_command("ledgepay_sync", *args, stdout=StringIO())
    assert message in str(excinfo.value)
    assert excinfo.value.returncode == 2
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


def test_sync_command_fails_on_a_page_with_more_and_nothing_to_page_by(api):
    page = [payment_data(created_at=None) for _ in range(3)]
    api.get(f"{API}/payments", json={"data": page, "has_more": True})
    with pytest.raises(CommandError) as excinfo:
        call_command("ledgepay_sync", stdout=StringIO())
    assert "Sync stopped after 1 page (3 payments: 3 created" in str(excinfo.value)
    assert "created_at to page by" in str(excinfo.value)
    assert Payment.objects.count() == 3


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


# Seconds holding more than a page of payments


def seed(fake, count, *, at, status="pending"):
    """``count`` payments created in LedgePay's state at the Unix second ``at``."""
    fake.state.clock = lambda: at
    ids = []
    for _ in range(count):
        payment = fake.state.create_payment({"amount": 700, "currency": "EUR", **URLS})
        if status != "pending":
            fake.state.settle(payment["id"], status)
        ids.append(payment["id"])
    return ids


def list_queries(fake):
    return [dict(parse_qsl(urlsplit(r.url).query)) for r in fake.requests if r.method == "GET"]


def test_sync_lists_a_crowded_second_again_by_status():
    with FakeLedgePay() as fake:
        crowded = {
            status: seed(fake, count, at=SECOND, status=status)
            for status, count in (
                ("pending", 90),
                ("succeeded", 80),
                ("failed", 50),
                ("canceled", 30),
            )
        }
        earlier = seed(fake, 20, at=SECOND - 5, status="succeeded")
        out = StringIO()
        call_command("ledgepay_sync", stdout=out)

    assert Payment.objects.count() == 270
    for status, ids in crowded.items():
        assert set(
            Payment.objects.filter(status=status).values_list("ledgepay_id", flat=True)
        ) >= set(ids)
    assert Payment.objects.filter(ledgepay_id__in=earlier).count() == 20
    assert "Synced 270 payments" in out.getvalue()
    by_status = [q for q in list_queries(fake) if "status" in q]
    assert sorted(q["status"] for q in by_status) == sorted(Payment.Status.values)
    assert {(q["created_after"], q["created_before"]) for q in by_status} == {
        ("2024-01-15T10:29:59Z", "2024-01-15T10:30:01Z")
    }


def test_sync_names_a_second_it_cannot_page_through_and_keeps_the_rest():
    with FakeLedgePay() as fake:
        seed(fake, 150, at=SECOND, status="pending")
        seed(fake, 30, at=SECOND, status="succeeded")
        seed(fake, 10, at=SECOND - 60, status="failed")
        out = StringIO()
        with pytest.raises(CommandError) as excinfo:
            call_command("ledgepay_sync", stdout=out)

    message = str(excinfo.value)
    assert "2024-01-15T10:30:00Z holds more than 100 pending payments" in message
    assert "at least 1 more could not" in message
    assert Payment.objects.filter(status="pending").count() == 100
    assert Payment.objects.filter(status="succeeded").count() == 30
    assert Payment.objects.filter(status="failed").count() == 10
    assert "Synced 140 payments" in out.getvalue()


def test_sync_by_status_names_a_crowded_second_without_listing_it_again():
    with FakeLedgePay() as fake:
        seed(fake, 120, at=SECOND, status="succeeded")
        seed(fake, 3, at=SECOND - 1, status="succeeded")
        result = services.sync_payments(status="succeeded")

    assert [str(u) for u in result.unlisted] == [
        "2024-01-15T10:30:00Z holds more than 100 succeeded payments: 100 could be listed, "
        "at least 1 more could not"
    ]
    assert result.created == 103
    assert all(q.get("status") == "succeeded" for q in list_queries(fake))
    assert not result.complete


class InclusiveList:
    """A list endpoint whose created_after and created_before include their own instant."""

    def __init__(self, payments):
        self.payments = sorted(payments, key=lambda p: (p["created_at"], p["id"]), reverse=True)
        self.queries = []

    def __call__(self, request):
        query = dict(parse_qsl(urlsplit(request.url).query))
        self.queries.append(query)
        items = [
            p
            for p in self.payments
            if p["status"] == query.get("status", p["status"])
            and p["created_at"] <= query.get("created_before", p["created_at"])
            and p["created_at"] >= query.get("created_after", p["created_at"])
        ]
        body = {"data": items[:100], "has_more": len(items) > 100}
        return 200, {}, json.dumps(body)


def test_sync_splits_a_crowded_second_when_the_bounds_include_their_instant(api):
    payments = [
        payment_data(id=next_id("pay"), status=status, created_at=stamp)
        for stamp, counts in (
            ("2024-01-15T10:30:01Z", {"succeeded": 60}),
            ("2024-01-15T10:30:00Z", {"pending": 70, "succeeded": 70, "canceled": 5}),
            ("2024-01-15T10:29:59Z", {"failed": 90}),
        )
        for status, count in counts.items()
        for _ in range(count)
    ]
    server = InclusiveList(payments)
    api.add_callback(responses.GET, f"{API}/payments", callback=server)

    result = services.sync_payments()

    assert result.complete
    assert result.created == Payment.objects.count() == len(payments) == 295
    assert {q["status"] for q in server.queries if "status" in q} == set(Payment.Status.values)
    assert result.pages == len(server.queries)


def test_listing_remembers_only_the_last_seconds(monkeypatch):
    """The walker's memory does not grow with the payments listed (it once kept every id)."""
    import bisect
    import tracemalloc

    class Pages:
        """LedgePay's list, without HTTP: the mock's and the standard library's caches grow
        a little with every distinct URL, which is not the walker's memory."""

        def __init__(self, count: int) -> None:
            self.stamps = sorted(
                (
                    datetime.datetime.fromtimestamp(
                        SECOND - n * 7, datetime.timezone.utc
                    ).strftime("%Y-%m-%dT%H:%M:%SZ"),
                    f"pay_{n:08d}",
                )
                for n in range(count)
            )

        def list_payments(self, *, limit, status, created_after, created_before):
            end = bisect.bisect_left(self.stamps, (created_before or "9999", ""))
            chosen = self.stamps[max(0, end - limit) : end][::-1]
            return [{"id": pay_id, "created_at": stamp} for stamp, pay_id in chosen], end > limit

    def peak_for(count):
        pages = Pages(count)
        monkeypatch.setattr(sync, "get_client", lambda: pages)
        tracemalloc.start()
        listed = sum(len(page.items) for page in services.payment_pages())
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert listed == count
        return peak

    peak_for(100)  # First-use allocations (caches, interned names) out of the way.
    small, large = peak_for(500), peak_for(5000)
    # Flat, give or take a fifth (bounded caches filling); every id kept would be about
    # 100 bytes each, 450 KB more for the large walk: eight times as much.
    assert large < small * 1.5


def test_sync_command_waits_out_a_rate_limit_past_max_wait(api, sleeps):
    # LEDGEPAY_MAX_WAIT (20 s) keeps a web request from waiting 45 s; an operator's
    # command waits, as LedgePay asks, and finishes.
    api.get(f"{API}/payments", status=429, headers={"Retry-After": "45"})
    api.get(f"{API}/payments", json={"data": [payment_data(id="pay_a")], "has_more": False})
    out = StringIO()
    call_command("ledgepay_sync", stdout=out)
    assert "Synced 1 payment in 1 page" in out.getvalue()
    assert sleeps == [45.0]
    assert Payment.objects.filter(ledgepay_id="pay_a").exists()
