from __future__ import annotations

import json
import threading
import time
from io import StringIO
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from django.core.management import CommandError, call_command
from django.db import connection, connections
from django.test import Client
from django.urls import reverse

from django_ledgepay import signals, webhooks
from django_ledgepay.models import Payment, Refund, WebhookEvent
from django_ledgepay.testing import post_webhook, signed_webhook
from tests.conftest import API
from tests.factories import make_payment, make_refund, payment_data, refund_data

pytestmark = pytest.mark.django_db
URL = "/ledgepay/webhook/"


def event(event_type: str, data: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"event": event_type, "timestamp": "2024-01-15T10:32:15Z", "data": data, **extra}


def succeeded(payment: Payment, **extra: Any) -> dict[str, Any]:
    data = {"id": payment.ledgepay_id, "amount": payment.amount, "currency": payment.currency}
    return event("payment.succeeded", {**data, **extra})


# The signature


def test_url_name():
    assert reverse("ledgepay:webhook") == URL


@pytest.mark.parametrize("method", ["get", "put", "patch", "delete"])
def test_only_post(client, method):
    assert getattr(client, method)(URL).status_code == 405


def test_csrf_exempt():
    payment = make_payment(status="pending")
    body, headers = signed_webhook(succeeded(payment))
    response = Client(enforce_csrf_checks=True).post(
        URL, body, content_type="application/json", headers=headers
    )
    assert response.status_code == 200


def test_valid_signature_applies(client, receive, django_capture_on_commit_callbacks):
    payment = make_payment(status="pending")
    paid = receive(signals.payment_succeeded)
    with django_capture_on_commit_callbacks(execute=True):
        response = post_webhook(client, succeeded(payment))
    assert response.status_code == 200
    payment.refresh_from_db()
    assert payment.status == "succeeded"
    stored = WebhookEvent.objects.get()
    assert stored.status == "processed"
    assert stored.attempts == 1
    assert stored.processed_at is not None
    assert [call["event"] for call in paid.calls] == [stored]
    assert paid.calls[0]["payment"] == payment


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "garbage",
        "t=abc,v1=00",
        "v1=" + "0" * 64,
        "t=1700000000",
        "t=now,v1=" + "0" * 64,
    ],
)
def test_missing_or_malformed_signature_is_400(client, header):
    payment = make_payment(status="pending")
    headers = {} if header is None else {"LedgePay-Signature": header}
    response = client.post(
        URL, json.dumps(succeeded(payment)), content_type="application/json", headers=headers
    )
    assert response.status_code == 400
    assert not WebhookEvent.objects.exists()
    payment.refresh_from_db()
    assert payment.status == "pending"


def test_wrong_secret_is_400(client):
    payment = make_payment(status="pending")
    response = post_webhook(client, succeeded(payment), secret="whsec_someone_else")
    assert response.status_code == 400
    assert not WebhookEvent.objects.exists()


def test_body_changed_after_signing_is_400(client):
    payment = make_payment(status="pending")
    body, headers = signed_webhook(succeeded(payment))
    tampered = body.replace(b"5000", b"1")
    response = client.post(URL, tampered, content_type="application/json", headers=headers)
    assert response.status_code == 400


@pytest.mark.parametrize("offset", [-301, 301, -10_000, 86_400])
def test_stale_or_future_signature_is_400(client, offset):
    payment = make_payment(status="pending")
    response = post_webhook(client, succeeded(payment), timestamp=int(time.time()) + offset)
    assert response.status_code == 400


def test_tolerance_setting(client, settings):
    settings.LEDGEPAY_WEBHOOK_TOLERANCE = 1000
    payment = make_payment(status="pending")
    response = post_webhook(client, succeeded(payment), timestamp=int(time.time()) - 900)
    assert response.status_code == 200


def test_several_v1_entries_any_match_passes(client):
    payment = make_payment(status="pending")
    body = json.dumps(succeeded(payment)).encode()
    stamp = int(time.time())
    header = webhooks.signature_header(body, ["whsec_old", "whsec_tests", "whsec_next"], stamp)
    assert header.count("v1=") == 3
    response = client.post(
        URL, body, content_type="application/json", headers={"LedgePay-Signature": header}
    )
    assert response.status_code == 200


def test_secret_rotation_accepts_old_and_new(client, settings):
    settings.LEDGEPAY_WEBHOOK_SECRET = ["whsec_new", "whsec_old"]
    first, second = make_payment(status="pending"), make_payment(status="pending")
    assert post_webhook(client, succeeded(first), secret="whsec_old").status_code == 200
    assert post_webhook(client, succeeded(second), secret="whsec_new").status_code == 200
    assert post_webhook(client, succeeded(second), secret="whsec_gone").status_code == 400


def test_no_secret_configured_refuses(client, settings):
    settings.LEDGEPAY_WEBHOOK_SECRET = ""
    payment = make_payment(status="pending")
    response = post_webhook(client, succeeded(payment), secret="whsec_tests")
    assert response.status_code == 400


def test_signature_comparison_checks_every_entry(monkeypatch):
    compared: list[tuple[str, str]] = []

    def spy(a, b):
        compared.append((a, b))
        return a == b

    monkeypatch.setattr(webhooks, "constant_time_compare", spy)
    body = b"{}"
    header = webhooks.signature_header(body, ["a", "b"], int(time.time()))
    webhooks.verify_signature(body, header, ["a", "b"])
    assert len(compared) == 4  # No early exit on the first match.


# The body


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"not json", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'"text"', "not a JSON object"),
        (b"{}", "no string 'event'"),
        (b'{"event": 5, "data": {}}', "no string 'event'"),
        (b'{"event": "payment.succeeded"}', "no object 'data'"),
        (b'{"event": "payment.succeeded", "data": []}', "no object 'data'"),
        (b'{"event": "payment.succeeded", "data": {}}', "no string 'id'"),
        (b'{"event": "payment.succeeded", "data": {"id": 7}}', "no string 'id'"),
        (b'{"event": "payment.succeeded", "data": {"id": "p", "amount": "5"}}', "'amount'"),
        (b'{"event": "payment.succeeded", "data": {"id": "p", "amount": true}}', "'amount'"),
        (b'{"event": "payment.failed", "data": {"id": "p", "metadata": []}}', "'metadata'"),
        (b'{"event": "refund.created", "data": {"id": "r"}}', "'payment_id'"),
        (b'{"event": "payment.succeeded", "data": {"id": "p", "amount": NaN}}', "not JSON"),
        (b'{"event": "x", "data": {"id": "a\\u0000b"}}', "NUL"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b"[" * 100_000, "not JSON"),
    ],
)
def test_unreadable_bodies_are_400_and_kept(client, body, reason):
    response = post_webhook(client, body)
    assert response.status_code == 400
    assert reason in response.json()["detail"]
    stored = WebhookEvent.objects.get()  # Signed, so kept: nothing signed is lost.
    assert stored.status == "ignored"
    assert reason in stored.error


def test_body_over_the_upload_limit_is_400(client, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    payment = make_payment(status="pending")
    response = post_webhook(client, succeeded(payment, description="x" * 2000))
    assert response.status_code == 400
    payment.refresh_from_db()
    assert payment.status == "pending"


def test_unknown_event_type_is_kept_and_ignored(client):
    response = post_webhook(client, event("payment.disputed", {"id": "pay_x", "amount": "?"}))
    assert response.status_code == 200
    stored = WebhookEvent.objects.get()
    assert (stored.event_type, stored.status) == ("payment.disputed", "ignored")
    assert "Unknown event type" in stored.error


# Applying


def test_redelivery_changes_nothing_and_fires_nothing(
    client, receive, django_capture_on_commit_callbacks
):
    payment = make_payment(status="pending")
    paid = receive(signals.payment_succeeded)
    body, headers = signed_webhook(succeeded(payment))
    with django_capture_on_commit_callbacks(execute=True):
        first = client.post(URL, body, content_type="application/json", headers=headers)
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        second = client.post(URL, body, content_type="application/json", headers=headers)
    assert (first.status_code, second.status_code) == (200, 200)
    assert second.json()["detail"] == "duplicate"
    assert callbacks == []
    assert len(paid.calls) == 1
    assert WebhookEvent.objects.count() == 1


@pytest.mark.parametrize("late", ["payment.failed", "payment.canceled"])
def test_late_contradicting_event_is_kept_not_applied(client, receive, late):
    payment = make_payment(status="succeeded")
    contradicted = receive(signals.payment_failed), receive(signals.payment_canceled)
    data = {"id": payment.ledgepay_id, "amount": 5000, "currency": "EUR"}
    response = post_webhook(client, event(late, data))
    assert response.status_code == 200
    payment.refresh_from_db()
    assert payment.status == "succeeded"
    stored = WebhookEvent.objects.get()
    assert stored.status == "ignored"
    assert "already succeeded" in stored.error
    assert all(r.calls == [] for r in contradicted)


def test_unknown_payment_created_from_the_event_data(client, receive, api):
    paid = receive(signals.payment_succeeded)
    data = payment_data(status="pending")
    response = post_webhook(client, event("payment.succeeded", data))
    assert response.status_code == 200
    assert len(api.calls) == 0  # The event said enough.
    assert Payment.objects.get(ledgepay_id=data["id"]).status == "succeeded"
    assert len(paid.calls) == 0  # Not committed yet inside the test's transaction.


def test_unknown_payment_fetched_when_the_event_says_too_little(
    client, api, receive, django_capture_on_commit_callbacks
):
    paid = receive(signals.payment_succeeded)
    remote = payment_data(id="pay_far", status="succeeded", description="Far away")
    api.get(f"{API}/payments/pay_far", json=remote)
    with django_capture_on_commit_callbacks(execute=True):
        response = post_webhook(client, event("payment.succeeded", {"id": "pay_far"}))
    assert response.status_code == 200
    payment = Payment.objects.get(ledgepay_id="pay_far")
    assert (payment.status, payment.description) == ("succeeded", "Far away")
    assert len(paid.calls) == 1
    assert paid.calls[0]["event"] == WebhookEvent.objects.get()


def test_unknown_payment_with_the_api_down_is_503_then_redelivery_succeeds(
    client, api, receive, settings, django_capture_on_commit_callbacks
):
    settings.LEDGEPAY_MAX_RETRIES = 0
    paid = receive(signals.payment_succeeded)
    api.get(f"{API}/payments/pay_far", body=requests.ConnectionError("down"))
    body, headers = signed_webhook(event("payment.succeeded", {"id": "pay_far"}))

    with django_capture_on_commit_callbacks(execute=True):
        first = client.post(URL, body, content_type="application/json", headers=headers)
    assert first.status_code == 503
    stored = WebhookEvent.objects.get()
    assert stored.status == "failed"
    assert "Could not reach LedgePay" in stored.error
    assert settings.LEDGEPAY_API_KEY not in first.content.decode() + stored.error
    assert not Payment.objects.exists()

    api.replace("GET", f"{API}/payments/pay_far", json=payment_data(id="pay_far"))
    with django_capture_on_commit_callbacks(execute=True):
        again = client.post(URL, body, content_type="application/json", headers=headers)
    assert again.status_code == 200
    stored.refresh_from_db()
    assert (stored.status, stored.attempts, stored.error) == ("processed", 2, "")
    assert len(paid.calls) == 1
    assert WebhookEvent.objects.count() == 1


def test_refund_succeeded_before_created(client, receive, django_capture_on_commit_callbacks):
    payment = make_payment()
    created = receive(signals.refund_created).calls
    done = receive(signals.refund_succeeded).calls
    data = refund_data(payment.ledgepay_id)
    with django_capture_on_commit_callbacks(execute=True):
        assert post_webhook(client, event("refund.succeeded", data)).status_code == 200
        assert post_webhook(client, event("refund.created", data)).status_code == 200
    refund = Refund.objects.get()
    assert refund.status == "succeeded"
    assert len(created) == len(done) == 1
    order = [c["refund"].pk for c in created] + [d["refund"].pk for d in done]
    assert order == [refund.pk, refund.pk]
    assert created[0]["event"].event_type == "refund.succeeded"


def test_refund_created_then_succeeded(client, receive, django_capture_on_commit_callbacks):
    payment = make_payment()
    created, done = receive(signals.refund_created), receive(signals.refund_succeeded)
    data = refund_data(payment.ledgepay_id)
    with django_capture_on_commit_callbacks(execute=True):
        post_webhook(client, event("refund.created", data))
    assert (len(created.calls), len(done.calls)) == (1, 0)
    with django_capture_on_commit_callbacks(execute=True):
        post_webhook(client, event("refund.succeeded", {**data, "status": "succeeded"}))
    assert (len(created.calls), len(done.calls)) == (1, 1)
    assert Refund.objects.get().status == "succeeded"


def test_refund_for_a_known_refund_made_from_the_admin(client, receive):
    payment = make_payment()
    refund = make_refund(payment, status="pending")
    created = receive(signals.refund_created)
    data = refund_data(payment.ledgepay_id, id=refund.ledgepay_id, amount=refund.amount)
    assert post_webhook(client, event("refund.created", data)).status_code == 200
    assert created.calls == []
    assert Refund.objects.count() == 1


# Query budget (transactional tests: no SAVEPOINT wrapping the view's own transactions)


@pytest.mark.django_db(transaction=True)
def test_known_pending_payment_costs_at_most_4_queries(client, django_assert_max_num_queries):
    payment = make_payment(status="pending")
    body, headers = signed_webhook(succeeded(payment))
    with django_assert_max_num_queries(4):
        response = client.post(URL, body, content_type="application/json", headers=headers)
    assert response.status_code == 200
    payment.refresh_from_db()
    assert payment.status == "succeeded"


@pytest.mark.django_db(transaction=True)
def test_duplicate_costs_at_most_2_queries(client, django_assert_max_num_queries):
    payment = make_payment(status="pending")
    body, headers = signed_webhook(succeeded(payment))
    client.post(URL, body, content_type="application/json", headers=headers)
    with django_assert_max_num_queries(2):
        response = client.post(URL, body, content_type="application/json", headers=headers)
    assert response.json()["detail"] == "duplicate"


# Never a 500


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
event_types = st.sampled_from(
    [
        "payment.succeeded",
        "payment.failed",
        "payment.canceled",
        "refund.created",
        "refund.succeeded",
        "anything.else",
    ]
)
data_objects = st.fixed_dictionaries(
    {},
    optional={
        "id": st.one_of(st.text(max_size=20), st.integers(), st.none()),
        "payment_id": st.one_of(st.text(max_size=20), st.none()),
        "amount": json_values,
        "currency": json_values,
        "status": json_values,
        "metadata": json_values,
        "customer": json_values,
    },
)
bodies = st.one_of(
    st.binary(max_size=200),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries(
        {"event": event_types | json_values, "data": data_objects | json_values}
    ).map(lambda v: json.dumps(v).encode()),
)


@hypothesis_settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(body=bodies)
def test_signed_random_bodies_never_get_a_500(client, api, body):
    response = post_webhook(client, body)
    assert response.status_code in {200, 400, 503}


# Concurrency on PostgreSQL


@pytest.mark.skipif(connection.vendor != "postgresql", reason="needs PostgreSQL row locks")
@pytest.mark.django_db(transaction=True)
def test_same_event_to_several_workers_at_once(receive):
    payment = make_payment(status="pending")
    paid = receive(signals.payment_succeeded)
    body, headers = signed_webhook(succeeded(payment))
    barrier = threading.Barrier(6)
    codes: list[int] = []

    def deliver():
        try:
            barrier.wait()
            response = Client().post(URL, body, content_type="application/json", headers=headers)
            codes.append(response.status_code)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=deliver) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert codes == [200] * 6
    assert len(paid.calls) == 1
    payment.refresh_from_db()
    assert payment.status == "succeeded"
    assert WebhookEvent.objects.count() == 1
    assert WebhookEvent.objects.get().status == "processed"


# Processing again


def test_reprocess_command_retries_failed_events(api, settings, receive):
    settings.LEDGEPAY_MAX_RETRIES = 0
    api.get(f"{API}/payments/pay_far", body=requests.ConnectionError("down"))
    post_webhook(Client(), event("payment.succeeded", {"id": "pay_far"}))
    stored = WebhookEvent.objects.get()
    assert stored.status == "failed"

    api.replace("GET", f"{API}/payments/pay_far", json=payment_data(id="pay_far"))
    out = StringIO()
    call_command("ledgepay_reprocess", stdout=out)
    stored.refresh_from_db()
    assert stored.status == "processed"
    assert "Processed 1 events: 1 processed." in out.getvalue()
    assert Payment.objects.get().status == "succeeded"


def test_reprocess_command_by_id_and_unknown_id():
    stored = WebhookEvent.objects.create(
        event_type="payment.unknown",
        payload={"event": "payment.unknown", "data": {}},
        body_sha256="0" * 64,
    )
    out = StringIO()
    call_command("ledgepay_reprocess", "--id", str(stored.pk), stdout=out)
    assert f"Event {stored.pk} (payment.unknown ): ignored" in out.getvalue()
    with pytest.raises(CommandError, match="No webhook event with id 999"):
        call_command("ledgepay_reprocess", "--id", "999")


def test_reprocess_all_includes_interrupted_events():
    payment = make_payment(status="pending")
    WebhookEvent.objects.create(
        event_type="payment.succeeded", payload=succeeded(payment), body_sha256="1" * 64
    )
    call_command("ledgepay_reprocess", stdout=StringIO())
    payment.refresh_from_db()
    assert payment.status == "pending"  # Received events are left alone by default.
    call_command("ledgepay_reprocess", "--all", stdout=StringIO())
    payment.refresh_from_db()
    assert payment.status == "succeeded"


def test_process_event_records_an_unexpected_error(monkeypatch):
    payment = make_payment(status="pending")
    stored = WebhookEvent.objects.create(
        event_type="payment.succeeded", payload=succeeded(payment), body_sha256="2" * 64
    )

    def boom(*args, **kwargs):
        raise RuntimeError("bug")

    monkeypatch.setattr("django_ledgepay.services.apply_payment_event", boom)
    webhooks.process_event(stored)
    stored.refresh_from_db()
    assert (stored.status, stored.error) == ("failed", "RuntimeError: bug")
