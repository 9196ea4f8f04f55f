"""manage.py ledgepay_reprocess: stored webhook events processed again."""

from __future__ import annotations

import json
from io import StringIO
from typing import Any

import pytest
import requests

from django.core.management import CommandError, call_command

from django_ledgepay import signals, webhooks
from django_ledgepay.models import Payment, WebhookEvent
from tests.conftest import API
from tests.factories import make_payment, payment_data

pytestmark = pytest.mark.django_db


def stored(event_type: str, data: dict[str, Any], **fields: Any) -> WebhookEvent:
    body = json.dumps({"event": event_type, "data": data}).encode()
    event, _, _ = webhooks.record_event(body)
    if fields:
        WebhookEvent.objects.filter(pk=event.pk).update(**fields)
        event.refresh_from_db()
    return event


def reprocess(*args: str) -> str:
    out = StringIO()
    call_command("ledgepay_reprocess", *args, stdout=out)
    return out.getvalue()


@pytest.fixture
def far_away(api, settings):
    """An event about a payment never seen, stored as failed while LedgePay was down."""
    settings.LEDGEPAY_MAX_RETRIES = 0
    api.get(f"{API}/payments/pay_far", body=requests.ConnectionError("down"))
    event = stored("payment.succeeded", {"id": "pay_far"})
    webhooks.process_event(event)
    assert event.status == "failed"
    return event


def test_failed_events_are_processed_again(
    far_away, api, receive, django_capture_on_commit_callbacks
):
    paid = receive(signals.payment_succeeded)
    api.replace("GET", f"{API}/payments/pay_far", json=payment_data(id="pay_far"))
    with django_capture_on_commit_callbacks(execute=True):
        out = reprocess()
    far_away.refresh_from_db()
    assert (far_away.status, far_away.attempts, far_away.error) == ("processed", 2, "")
    assert f"Event {far_away.pk} (payment.succeeded pay_far): processed" in out
    assert out.rstrip().endswith("Processed 1 events: 1 processed.")
    assert Payment.objects.get().status == "succeeded"
    assert [call["event"].pk for call in paid.calls] == [far_away.pk]

    with django_capture_on_commit_callbacks(execute=True):
        assert reprocess().rstrip() == "Processed 0 events: none."
    assert len(paid.calls) == 1


def test_the_command_waits_out_a_rate_limit_past_max_wait(far_away, api, settings, sleeps):
    # As ledgepay_sync: an operator's command may wait longer than LEDGEPAY_MAX_WAIT.
    settings.LEDGEPAY_MAX_RETRIES = 1
    url = f"{API}/payments/pay_far"
    api.replace("GET", url, status=429, headers={"Retry-After": "45"})
    api.get(url, json=payment_data(id="pay_far"))
    assert "1 processed" in reprocess()
    assert sleeps == [45.0]


def test_still_failing_is_reported_without_the_api_key(far_away, settings):
    out = reprocess()
    far_away.refresh_from_db()
    assert (far_away.status, far_away.attempts) == ("failed", 2)
    assert f"Event {far_away.pk} (payment.succeeded pay_far): failed: Could not reach" in out
    assert "Processed 1 events: 1 failed." in out
    assert settings.LEDGEPAY_API_KEY not in out


def test_received_events_only_with_all():
    payment = make_payment(status="pending")
    interrupted = stored("payment.succeeded", {"id": payment.ledgepay_id})
    done = stored("payment.disputed", {}, status="processed")
    assert "Processed 0 events" in reprocess()
    payment.refresh_from_db()
    assert payment.status == "pending"  # Received events are left alone by default.

    out = reprocess("--all")
    payment.refresh_from_db()
    assert payment.status == "succeeded"
    assert "Processed 1 events: 1 processed." in out
    interrupted.refresh_from_db()
    done.refresh_from_db()
    assert (interrupted.status, interrupted.attempts) == ("processed", 1)
    assert done.attempts == 0  # Processed events are not touched.


def test_by_id_whatever_the_status(receive, django_capture_on_commit_callbacks):
    payment = make_payment(status="pending")
    paid = receive(signals.payment_succeeded)
    first = stored("payment.succeeded", {"id": payment.ledgepay_id})
    unknown = stored("payment.disputed", {"id": payment.ledgepay_id}, status="processed")
    with django_capture_on_commit_callbacks(execute=True):
        out = reprocess("--id", str(first.pk), "--id", str(unknown.pk))
        reprocess("--id", str(first.pk))  # Again: applied once, signalled once.
    assert f"Event {first.pk} (payment.succeeded {payment.ledgepay_id}): processed" in out
    assert f"Event {unknown.pk} (payment.disputed {payment.ledgepay_id}): ignored: Unknown" in out
    assert "Processed 2 events: 1 ignored, 1 processed." in out
    first.refresh_from_db()
    assert (first.status, first.attempts) == ("processed", 2)
    assert len(paid.calls) == 1


def test_unknown_ids_raise_and_process_nothing():
    payment = make_payment(status="pending")
    event = stored("payment.succeeded", {"id": payment.ledgepay_id})
    with pytest.raises(CommandError, match="No webhook event with id 998, 999."):
        reprocess("--id", str(event.pk), "--id", "999", "--id", "998")
    event.refresh_from_db()
    assert (event.status, event.attempts) == ("received", 0)


def test_ignored_unreadable_bodies_stay_ignored():
    event, _, _ = webhooks.record_event(b"not json")
    out = reprocess("--id", str(event.pk))
    event.refresh_from_db()
    assert (event.status, event.error) == ("ignored", "The body is not JSON.")
    assert "ignored: The body is not JSON." in out


@pytest.mark.parametrize("value", ["0", "-1", "9223372036854775808", "99999999999999999999999"])
def test_an_id_no_database_holds_is_a_usage_error(value):
    with pytest.raises(CommandError) as excinfo:
        reprocess("--id", value)
    assert str(excinfo.value) == "--id must be a whole number from 1 to 9223372036854775807."
    assert excinfo.value.returncode == 2


def test_the_largest_id_a_database_holds_is_looked_up():
    with pytest.raises(CommandError, match="No webhook event with id 9223372036854775807.") as e:
        reprocess("--id", "9223372036854775807")
    assert e.value.returncode == 1
