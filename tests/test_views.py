"""The webhook endpoint over HTTP: its answers, what it stores and applies, its cost."""

from __future__ import annotations

import datetime
import hashlib
import io
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from django.core.management import call_command
from django.db import OperationalError, connection, connections
from django.test import Client
from django.urls import reverse

from django_ledgepay import intake, services, signals, webhooks
from django_ledgepay.models import Payment, Refund, Transition, WebhookEvent
from django_ledgepay.testing import post_webhook, signed_webhook
from tests.conftest import API, concurrent_writers
from tests.factories import make_payment, make_refund, payment_data, refund_data

pytestmark = pytest.mark.django_db
URL = "/ledgepay/webhook/"


def event(event_type: str, data: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"event": event_type, "timestamp": "2024-01-15T10:32:15Z", "data": data, **extra}


def succeeded(payment: Payment, **extra: Any) -> dict[str, Any]:
    data = {"id": payment.ledgepay_id, "amount": payment.amount, "currency": payment.currency}
    return event("payment.succeeded", {**data, **extra})


def post_signed(client: Client, body: bytes, headers: dict[str, str]) -> Any:
    return client.post(URL, body, content_type="application/json", headers=headers)


# Routing and methods


def test_url_name():
    assert reverse("ledgepay:webhook") == URL


@pytest.mark.parametrize("method", ["get", "head", "options", "put", "patch", "delete", "trace"])
def test_only_post(client, method):
    response = getattr(client, method)(URL)
    assert response.status_code == 405
    assert response["Allow"] == "POST"
    if method != "head":
        assert response.json() == {"detail": "Only POST is allowed."}
    assert not WebhookEvent.objects.exists()


def test_csrf_exempt():
    payment = make_payment(status="pending")
    body, headers = signed_webhook(succeeded(payment))
    response = post_signed(Client(enforce_csrf_checks=True), body, headers)
    assert response.status_code == 200


def test_answers_under_login_required_middleware(
    settings, receive, django_capture_on_commit_callbacks
):
    # Django's LoginRequiredMiddleware sends anonymous requests to the login page; LedgePay
    # logs in to nothing, so a signed delivery must still be applied and answered.
    settings.MIDDLEWARE = [
        *settings.MIDDLEWARE,
        "django.contrib.auth.middleware.LoginRequiredMiddleware",
    ]
    payment = make_payment(status="pending")
    paid = receive(signals.payment_succeeded)
    body, headers = signed_webhook(succeeded(payment))
    with django_capture_on_commit_callbacks(execute=True):
        response = post_signed(Client(), body, headers)
    assert response.status_code == 200
    assert response.json() == {"detail": "processed"}
    assert len(paid.calls) == 1
    # An unsigned one is still refused by the signature, not sent to log in.
    assert post_signed(Client(), body, {}).status_code == 400


@pytest.mark.django_db(transaction=True)
def test_not_wrapped_in_atomic_requests(client, monkeypatch):
    monkeypatch.setitem(connections.settings["default"], "ATOMIC_REQUESTS", True)
    seen: list[bool] = []
    process = webhooks.process_event

    def spy(stored: WebhookEvent) -> None:
        seen.append(connection.in_atomic_block)
        process(stored)

    monkeypatch.setattr(webhooks, "process_event", spy)
    unknown = {"event": "payment.disputed", "data": {"id": "pay_1"}}
    assert post_webhook(client, unknown).status_code == 200
    assert seen == [False]


# The signature: checked before anything is stored


def test_valid_signature_applies(client, receive, django_capture_on_commit_callbacks):
    payment = make_payment(status="pending")
    paid = receive(signals.payment_succeeded)
    with django_capture_on_commit_callbacks(execute=True):
        response = post_webhook(client, succeeded(payment))
    assert response.status_code == 200
    assert response.json() == {"detail": "processed"}
    payment.refresh_from_db()
    assert payment.status == "succeeded"
    stored = WebhookEvent.objects.get()
    assert (stored.status, stored.attempts, stored.object_id) == (
        "processed",
        1,
        payment.ledgepay_id,
    )
    assert stored.processed_at is not None
    assert paid.calls == [{"sender": Payment, "payment": payment, "event": stored}]


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
        "t=" + "9" * 400 + ",v1=" + "0" * 64,
        "t=" + "9" * 5000 + ",v1=" + "0" * 64,
    ],
)
def test_missing_or_malformed_signature_is_400(client, header):
    payment = make_payment(status="pending")
    headers = {} if header is None else {"LedgePay-Signature": header}
    response = post_signed(client, json.dumps(succeeded(payment)).encode(), headers)
    assert response.status_code == 400
    assert not WebhookEvent.objects.exists()
    payment.refresh_from_db()
    assert payment.status == "pending"


def test_wrong_secret_is_400_and_echoes_no_secret(client, settings):
    payment = make_payment(status="pending")
    body = json.dumps(succeeded(payment)).encode()
    stamp = int(time.time())
    header = webhooks.signature_header(body, "whsec_someone_else", stamp)
    response = post_signed(client, body, {"LedgePay-Signature": header})
    assert response.status_code == 400
    assert response.json() == {"detail": "No signature matches a configured secret."}
    expected = webhooks.compute_signature(body, settings.LEDGEPAY_WEBHOOK_SECRET, stamp)
    for secret in (settings.LEDGEPAY_WEBHOOK_SECRET, expected, settings.LEDGEPAY_API_KEY):
        assert secret not in response.content.decode()
    assert not WebhookEvent.objects.exists()


def test_body_changed_after_signing_is_400(client):
    payment = make_payment(status="pending")
    body, headers = signed_webhook(succeeded(payment))
    response = post_signed(client, body.replace(b"5000", b"1"), headers)
    assert response.status_code == 400
    assert not WebhookEvent.objects.exists()


@pytest.mark.parametrize("offset", [-301, 301, -10_000, 86_400])
def test_stale_or_future_signature_is_400(client, offset):
    payment = make_payment(status="pending")
    response = post_webhook(client, succeeded(payment), timestamp=int(time.time()) + offset)
    assert response.status_code == 400
    assert "tolerance" in response.json()["detail"]
    assert not WebhookEvent.objects.exists()


def test_tolerance_setting(client, settings):
    settings.LEDGEPAY_WEBHOOK_TOLERANCE = 1000
    payment = make_payment(status="pending")
    response = post_webhook(client, succeeded(payment), timestamp=int(time.time()) - 900)
    assert response.status_code == 200


def test_several_v1_entries_any_match_passes(client):
    payment = make_payment(status="pending")
    body = json.dumps(succeeded(payment)).encode()
    header = webhooks.signature_header(
        body, ["whsec_old", "whsec_tests", "whsec_next"], int(time.time())
    )
    assert header.count("v1=") == 3
    assert post_signed(client, body, {"LedgePay-Signature": header}).status_code == 200


def test_secret_rotation_accepts_old_and_new(client, settings):
    settings.LEDGEPAY_WEBHOOK_SECRET = ["whsec_new", "whsec_old"]
    first, second = make_payment(status="pending"), make_payment(status="pending")
    assert post_webhook(client, succeeded(first), secret="whsec_old").status_code == 200
    assert post_webhook(client, succeeded(second), secret="whsec_new").status_code == 200
    third = make_payment(status="pending")
    assert post_webhook(client, succeeded(third), secret="whsec_gone").status_code == 400
    assert WebhookEvent.objects.count() == 2


@pytest.mark.parametrize(
    ("configured", "signer"),
    [
        (b"whsec_bytes", b"whsec_bytes"),
        (["whsec_new", b"whsec_old"], b"whsec_old"),
        # What os.environ holds for a secret that is not UTF-8: its bytes, surrogate-escaped.
        (b"whsec_\xff".decode("utf-8", "surrogateescape"), b"whsec_\xff"),
    ],
)
def test_bytes_and_non_utf8_secrets_verify(client, settings, configured, signer):
    settings.LEDGEPAY_WEBHOOK_SECRET = configured
    payment = make_payment(status="pending")
    assert post_webhook(client, succeeded(payment), secret=signer).status_code == 200
    payment.refresh_from_db()
    assert payment.status == "succeeded"
    other = make_payment(status="pending")
    assert post_webhook(client, succeeded(other), secret=b"whsec_\xfe").status_code == 400


def test_timestamp_is_signed_as_written(client):
    payment = make_payment(status="pending")
    body = json.dumps(succeeded(payment)).encode()
    stamp = f"0{int(time.time())}"  # A leading zero: signed with it, as the header says.
    signature = webhooks.compute_signature(body, "whsec_tests", stamp)
    response = post_signed(client, body, {"LedgePay-Signature": f"t={stamp},v1={signature}"})
    assert response.status_code == 200
    unsigned = webhooks.compute_signature(body, "whsec_tests", int(stamp))
    header = f"t={stamp},v1={unsigned}"
    assert post_signed(client, body, {"LedgePay-Signature": header}).status_code == 400


def test_no_secret_configured_refuses(client, settings):
    settings.LEDGEPAY_WEBHOOK_SECRET = ""
    payment = make_payment(status="pending")
    response = post_webhook(client, succeeded(payment), secret="whsec_tests")
    assert response.status_code == 400
    assert not WebhookEvent.objects.exists()


# The body


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"not json", "not JSON"),
        (b"", "not JSON"),
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
        (b'{"event": "payment.succeeded", "data": {"id": "p", "amount": 1e400}}', "not JSON"),
        (b'{"event": "payment.succeeded", "data": {"id": "p", "amount": 9e99}}', "'amount'"),
        (b'{"event": "payment.failed", "data": {"id": "p", "metadata": []}}', "'metadata'"),
        (b'{"event": "refund.created", "data": {"id": "r"}}', "'payment_id'"),
        (b'{"event": "payment.succeeded", "data": {"id": "p", "amount": NaN}}', "not JSON"),
        (b'{"event": "x", "data": {"id": "a\\u0000b"}}', "NUL"),
        (b'{"event": "x", "data": {"id": "\\ud800"}}', "unpaired surrogate"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b"[" * 100_000, "not JSON"),
    ],
)
def test_unreadable_bodies_are_400_and_kept_as_ignored(client, api, body, reason):
    response = post_webhook(client, body)
    assert response.status_code == 400
    assert reason in response.json()["detail"]
    stored = WebhookEvent.objects.get()  # Signed, so kept: nothing signed is lost.
    assert stored.status == "ignored"
    assert reason in stored.error
    assert len(api.calls) == 0
    # Its redelivery is the same answer, and no second row.
    assert post_webhook(client, body).status_code == 400
    assert WebhookEvent.objects.count() == 1


@pytest.mark.parametrize(
    "data",
    [
        {"amount": 2**63},
        {"customer": {"email": "e" * 250 + "@x.io"}},
        {"checkout_url": "https://x.io/" + "p" * 2048},
    ],
)
def test_values_that_do_not_fit_are_400_not_500_or_503(client, api, data):
    payment = make_payment(status="pending")
    response = post_webhook(client, succeeded(payment, **data))
    assert response.status_code == 400
    payment.refresh_from_db()
    assert payment.status == "pending"
    assert WebhookEvent.objects.get().status == "ignored"


def test_body_over_the_upload_limit_is_400(client, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    payment = make_payment(status="pending")
    response = post_webhook(client, succeeded(payment, description="x" * 2000))
    assert response.status_code == 400
    assert "DATA_UPLOAD_MAX_MEMORY_SIZE" in response.json()["detail"]
    assert not WebhookEvent.objects.exists()
    payment.refresh_from_db()
    assert payment.status == "pending"


def test_unknown_event_type_is_200_kept_and_ignored(client, api):
    response = post_webhook(client, event("payment.disputed", {"id": "pay_x", "amount": "?"}))
    assert response.status_code == 200
    assert response.json() == {"detail": "ignored"}
    stored = WebhookEvent.objects.get()
    assert (stored.event_type, stored.status) == ("payment.disputed", "ignored")
    assert "Unknown event type" in stored.error
    assert stored.payload["data"] == {"id": "pay_x", "amount": "?"}
    assert len(api.calls) == 0


# Applying


def test_redelivery_changes_nothing_and_fires_nothing(
    client, receive, django_capture_on_commit_callbacks
):
    payment = make_payment(status="pending")
    paid = receive(signals.payment_succeeded)
    body, headers = signed_webhook(succeeded(payment))
    with django_capture_on_commit_callbacks(execute=True):
        first = post_signed(client, body, headers)
    payment.refresh_from_db()
    completed_at = payment.completed_at
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        second = post_signed(client, body, headers)
    assert (first.status_code, second.status_code) == (200, 200)
    assert second.json() == {"detail": "duplicate"}
    assert callbacks == []
    assert len(paid.calls) == 1
    stored = WebhookEvent.objects.get()
    assert stored.attempts == 1
    payment.refresh_from_db()
    assert payment.completed_at == completed_at


def test_same_news_in_another_body_fires_nothing(
    client, receive, django_capture_on_commit_callbacks
):
    payment = make_payment(status="pending")
    paid = receive(signals.payment_succeeded)
    with django_capture_on_commit_callbacks(execute=True):
        post_webhook(client, succeeded(payment))
        response = post_webhook(client, succeeded(payment, timestamp="2024-01-15T10:40:00Z"))
    assert response.status_code == 200
    assert len(paid.calls) == 1
    assert list(WebhookEvent.objects.values_list("status", flat=True)) == ["processed"] * 2


@pytest.mark.parametrize("late", ["payment.failed", "payment.canceled"])
def test_late_contradicting_event_is_kept_not_applied(
    client, receive, late, django_capture_on_commit_callbacks
):
    payment = make_payment(status="succeeded")
    contradicted = receive(signals.payment_failed), receive(signals.payment_canceled)
    data = {"id": payment.ledgepay_id, "amount": 5000, "currency": "EUR"}
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = post_webhook(client, event(late, data))
    assert response.status_code == 200
    assert response.json() == {"detail": "ignored"}
    payment.refresh_from_db()
    assert payment.status == "succeeded"
    stored = WebhookEvent.objects.get()
    assert stored.status == "ignored"
    assert stored.error == "The payment is already succeeded."
    assert callbacks == []
    assert all(r.calls == [] for r in contradicted)


@pytest.mark.parametrize(
    ("event_type", "signal"),
    [
        ("payment.succeeded", signals.payment_succeeded),
        ("payment.failed", signals.payment_failed),
        ("payment.canceled", signals.payment_canceled),
    ],
)
def test_unknown_payment_created_from_the_event_data(
    client, receive, api, event_type, signal, django_capture_on_commit_callbacks
):
    fired = receive(signal)
    data = payment_data(status="pending")  # The type, not the data, says what happened.
    with django_capture_on_commit_callbacks(execute=True):
        response = post_webhook(client, event(event_type, data))
    assert response.status_code == 200
    assert len(api.calls) == 0  # The event said enough.
    payment = Payment.objects.get(ledgepay_id=data["id"])
    assert (payment.status, payment.amount, payment.currency) == (
        event_type.removeprefix("payment."),
        5000,
        "EUR",
    )
    assert payment.metadata == {"order_id": "12345"}
    assert fired.calls == [
        {"sender": Payment, "payment": payment, "event": WebhookEvent.objects.get()}
    ]


def test_unknown_payment_fetched_when_the_event_says_too_little(
    client, api, receive, django_capture_on_commit_callbacks
):
    paid = receive(signals.payment_succeeded)
    remote = payment_data(id="pay_far", status="succeeded", description="Far away")
    api.get(f"{API}/payments/pay_far", json=remote)
    with django_capture_on_commit_callbacks(execute=True):
        response = post_webhook(client, event("payment.succeeded", {"id": "pay_far"}))
    assert response.status_code == 200
    assert len(api.calls) == 1
    payment = Payment.objects.get(ledgepay_id="pay_far")
    assert (payment.status, payment.description) == ("succeeded", "Far away")
    assert len(paid.calls) == 1
    assert paid.calls[0]["event"] == WebhookEvent.objects.get()


def test_unknown_payment_still_pending_at_ledgepay_takes_the_events_status(
    client, api, receive, django_capture_on_commit_callbacks
):
    paid = receive(signals.payment_succeeded)
    api.get(f"{API}/payments/pay_lag", json=payment_data(id="pay_lag", status="pending"))
    with django_capture_on_commit_callbacks(execute=True):
        response = post_webhook(client, event("payment.succeeded", {"id": "pay_lag"}))
    assert response.status_code == 200
    assert Payment.objects.get().status == "succeeded"
    assert len(paid.calls) == 1


def test_unknown_payment_with_the_api_down_is_503_then_redelivery_succeeds(
    client, api, receive, settings, caplog, django_capture_on_commit_callbacks
):
    settings.LEDGEPAY_MAX_RETRIES = 0
    paid = receive(signals.payment_succeeded)
    api.get(f"{API}/payments/pay_far", body=requests.ConnectionError("down"))
    body, headers = signed_webhook(event("payment.succeeded", {"id": "pay_far"}))

    with caplog.at_level(logging.DEBUG), django_capture_on_commit_callbacks(execute=True):
        first = post_signed(client, body, headers)
    assert first.status_code == 503
    assert first.json() == {
        "detail": "The event could not be applied now; it is kept for redelivery."
    }
    stored = WebhookEvent.objects.get()
    assert (stored.status, stored.processed_at) == ("failed", None)
    assert "Could not reach LedgePay" in stored.error
    key = settings.LEDGEPAY_API_KEY
    assert key not in first.content.decode() + stored.error + caplog.text
    assert not Payment.objects.exists()
    assert paid.calls == []

    api.replace("GET", f"{API}/payments/pay_far", json=payment_data(id="pay_far"))
    with django_capture_on_commit_callbacks(execute=True):
        again = post_signed(client, body, headers)
    assert again.status_code == 200
    stored.refresh_from_db()
    assert (stored.status, stored.attempts, stored.error) == ("processed", 2, "")
    assert len(paid.calls) == 1
    assert WebhookEvent.objects.count() == 1

    with django_capture_on_commit_callbacks(execute=True):
        third = post_signed(client, body, headers)
    assert third.json() == {"detail": "duplicate"}
    assert len(paid.calls) == 1


@pytest.mark.parametrize(
    "answer",
    [
        {"status": 500, "json": {"error": {"type": "api_error", "message": "boom"}}},
        {"status": 502, "body": "<html>Bad gateway</html>"},
        {"status": 429, "json": {"error": {"type": "rate_limit_error", "message": "slow"}}},
        {"status": 401, "json": {"error": {"type": "authentication_error", "message": "key"}}},
        {"status": 404, "json": {"error": {"type": "invalid_request_error", "message": "no"}}},
    ],
)
def test_api_errors_while_fetching_are_503_and_kept(client, api, settings, answer):
    settings.LEDGEPAY_MAX_RETRIES = 0
    api.get(f"{API}/payments/pay_far", **answer)
    response = post_webhook(client, event("payment.failed", {"id": "pay_far"}))
    assert response.status_code == 503
    stored = WebhookEvent.objects.get()
    assert stored.status == "failed"
    assert f"HTTP {answer['status']}" in stored.error


def test_a_database_that_fails_is_503_then_redelivery_succeeds(client, monkeypatch, caplog):
    payment = make_payment(status="pending")
    body, headers = signed_webhook(succeeded(payment))

    def locked(*args: Any, **kwargs: Any) -> Any:
        raise OperationalError("database is locked")

    with monkeypatch.context() as patched:
        patched.setattr(intake, "settle_in_one_statement", locked)
        patched.setattr(webhooks, "record_event", locked)
        response = post_signed(client, body, headers)
    assert response.status_code == 503
    assert "database failed" in caplog.text
    assert not WebhookEvent.objects.exists()
    assert post_signed(client, body, headers).status_code == 200
    payment.refresh_from_db()
    assert payment.status == "succeeded"


@pytest.mark.django_db(transaction=True)
def test_a_database_failing_right_after_the_payment_moved_loses_no_signal(
    client, monkeypatch, receive
):
    # The general path (SQLite; on PostgreSQL, an event stored before): once the payment's
    # UPDATE has committed, nothing may run on the database before the signal is sent.
    monkeypatch.setattr(intake, "settle_in_one_statement", lambda body, **kw: None)
    payment = make_payment(status="pending")
    paid = receive(signals.payment_succeeded)
    body, headers = signed_webhook(succeeded(payment))
    table = Payment._meta.db_table
    moved: list[str] = []

    def fail_after_the_update(execute: Any, sql: str, *args: Any) -> Any:
        if moved and table in sql and not paid.calls:
            raise OperationalError("server closed the connection unexpectedly")
        result = execute(sql, *args)
        if sql.startswith("UPDATE") and table in sql:
            moved.append(sql)
        return result

    with connection.execute_wrapper(fail_after_the_update):
        first = post_signed(client, body, headers)
    again = post_signed(client, body, headers)
    assert moved
    assert (first.status_code, again.status_code) == (200, 200)
    # The transition was written with the UPDATE: what the failure interrupted is its
    # delivery, which ledgepay_deliver catches up, once.
    call_command("ledgepay_deliver", "--all", stdout=io.StringIO())
    call_command("ledgepay_deliver", "--all", stdout=io.StringIO())
    assert len(paid.calls) == 1
    assert Transition.objects.get().delivered_at is not None


@pytest.mark.django_db(transaction=True)
def test_a_late_event_for_a_final_payment_costs_one_read(
    client, django_assert_num_queries, monkeypatch
):
    monkeypatch.setattr(intake, "settle_in_one_statement", lambda body, **kw: None)
    payment = make_payment(status="succeeded")
    event_ = webhooks.record_event(signed_webhook(succeeded(payment))[0])[0]
    with django_assert_num_queries(2):  # Read the payment, record the outcome.
        webhooks.process_event(event_)
    assert event_.status == "processed"


def test_refund_for_an_unknown_payment_with_the_api_down_is_503_then_redelivery_succeeds(
    client, api, settings, receive, django_capture_on_commit_callbacks
):
    settings.LEDGEPAY_MAX_RETRIES = 0
    created, done = receive(signals.refund_created), receive(signals.refund_succeeded)
    api.get(f"{API}/payments/pay_far", body=requests.ConnectionError("down"))
    data = refund_data("pay_far")
    body, headers = signed_webhook(event("refund.succeeded", data))
    assert post_signed(client, body, headers).status_code == 503
    assert not Refund.objects.exists()

    remote = payment_data(id="pay_far", status="succeeded")
    api.replace("GET", f"{API}/payments/pay_far", json=remote)
    with django_capture_on_commit_callbacks(execute=True):
        assert post_signed(client, body, headers).status_code == 200
        assert post_webhook(client, event("refund.created", data)).status_code == 200
    refund = Refund.objects.get()
    assert (refund.status, refund.payment.ledgepay_id) == ("succeeded", "pay_far")
    assert (len(created.calls), len(done.calls)) == (1, 1)


def test_refund_succeeded_before_created(client, receive, django_capture_on_commit_callbacks):
    payment = make_payment()
    created = receive(signals.refund_created).calls
    done = receive(signals.refund_succeeded).calls
    data = refund_data(payment.ledgepay_id)
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        assert post_webhook(client, event("refund.succeeded", data)).status_code == 200
        assert post_webhook(client, event("refund.created", data)).status_code == 200
    assert len(callbacks) == 2
    refund = Refund.objects.get()
    assert refund.status == "succeeded"
    assert [c["refund"] for c in created] == [d["refund"] for d in done] == [refund]
    assert created[0]["event"].event_type == "refund.succeeded"
    assert created[0]["payment"] == payment


def test_refund_created_then_succeeded(client, receive, django_capture_on_commit_callbacks):
    payment = make_payment()
    created, done = receive(signals.refund_created), receive(signals.refund_succeeded)
    data = refund_data(payment.ledgepay_id)
    with django_capture_on_commit_callbacks(execute=True):
        post_webhook(client, event("refund.created", data))
    assert (len(created.calls), len(done.calls)) == (1, 0)
    assert Refund.objects.get().status == "pending"
    with django_capture_on_commit_callbacks(execute=True):
        post_webhook(client, event("refund.succeeded", {**data, "status": "succeeded"}))
    assert (len(created.calls), len(done.calls)) == (1, 1)
    assert Refund.objects.get().status == "succeeded"


def test_refund_failed_after_created(client, receive, django_capture_on_commit_callbacks):
    payment = make_payment()
    failed = receive(signals.refund_failed)
    data = refund_data(payment.ledgepay_id)
    with django_capture_on_commit_callbacks(execute=True):
        post_webhook(client, event("refund.created", data))
        post_webhook(client, event("refund.failed", data))
        late = post_webhook(client, event("refund.succeeded", data))
    assert late.json() == {"detail": "ignored"}
    assert Refund.objects.get().status == "failed"
    assert len(failed.calls) == 1
    payment.refresh_from_db()
    assert payment.amount_refunded == 0


def test_refund_for_a_known_refund_made_from_the_admin(
    client, receive, django_capture_on_commit_callbacks
):
    payment = make_payment()
    refund = make_refund(payment, status="pending")
    created = receive(signals.refund_created)
    data = refund_data(payment.ledgepay_id, id=refund.ledgepay_id, amount=refund.amount)
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        assert post_webhook(client, event("refund.created", data)).status_code == 200
    assert created.calls == []
    assert callbacks == []
    assert Refund.objects.count() == 1


# Query budget (transactional tests: no SAVEPOINT wrapping the view's own queries)


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("without_shop_receivers")
def test_known_pending_payment_costs_1_or_8_queries(
    client, django_assert_num_queries, receive, held_deliveries
):
    payment = make_payment(status="pending")
    paid = receive(signals.payment_succeeded)
    # A sale's first delivery, signed as its event happens (one signed long after is taken
    # for a retry and looked up first: tests/test_statements.py).
    just_now = services.iso_z(datetime.datetime.now(datetime.timezone.utc))
    body, headers = signed_webhook({**succeeded(payment), "timestamp": just_now})
    # On PostgreSQL one statement looks the body's hash and the payment up, updates the
    # payment, stores the event and its transition. Elsewhere: INSERT the event, SELECT
    # the payment, UPDATE it and INSERT its transition in one transaction, UPDATE the event.
    # The receivers' delivery comes after, in its task.
    with django_assert_num_queries(1 if connection.vendor == "postgresql" else 8):
        response = post_signed(client, body, headers)
    assert response.status_code == 200
    payment.refresh_from_db()
    assert payment.status == "succeeded"
    assert paid.calls == []
    held_deliveries()
    assert len(paid.calls) == 1
    assert WebhookEvent.objects.get().status == "processed"


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("without_shop_receivers")
def test_duplicate_costs_1_query(client, django_assert_num_queries, receive):
    payment = make_payment(status="pending")
    paid = receive(signals.payment_succeeded)
    body, headers = signed_webhook(succeeded(payment))
    post_signed(client, body, headers)
    # The look-up finds the stored event.
    with django_assert_num_queries(1):
        response = post_signed(client, body, headers)
    assert response.json() == {"detail": "duplicate"}
    assert len(paid.calls) == 1


@pytest.mark.django_db(transaction=True)
def test_duplicate_of_an_ignored_event_costs_1_query(client, django_assert_num_queries):
    payment = make_payment(status="succeeded")
    body, headers = signed_webhook(event("payment.failed", {"id": payment.ledgepay_id}))
    assert post_signed(client, body, headers).json() == {"detail": "ignored"}
    with django_assert_num_queries(1):
        assert post_signed(client, body, headers).json() == {"detail": "duplicate"}


# Never a 500

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=2**63 - 2, max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text()
    | st.text(st.sampled_from(["\x00", "\ud800", "\udc00", "é", "a"]), max_size=5)
)
json_values = st.recursive(
    json_scalars,
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
        "refund.failed",
        "anything.else",
    ]
)
ids = st.one_of(
    st.sampled_from(["pay_known", "pay_final", "re_known", "pay_unknown", ".", "a/b"]),
    st.text(max_size=20),
    st.text(min_size=250, max_size=260),
    json_scalars,
)
data_objects = st.fixed_dictionaries(
    {},
    optional={
        "id": ids,
        "payment_id": ids,
        "amount": st.integers(min_value=-5, max_value=2**64) | json_values,
        "currency": st.sampled_from(["EUR", "eur", "EURO", ""]) | json_values,
        "status": st.sampled_from(["pending", "succeeded", "failed"]) | json_values,
        "metadata": json_values,
        "customer": st.fixed_dictionaries({}, optional={"email": json_scalars}) | json_values,
        "created_at": st.sampled_from(
            [
                "2024-01-15T10:30:00Z",
                "2024-13-45T99:00:00Z",
                "0001-01-01T00:00:00+01:00",
                "9999-12-31T23:59:59-01:00",
            ]
        )
        | json_values,
        "completed_at": st.sampled_from(["2024-01-15T10:31:00Z", "0001-01-01T00:00:00Z"])
        | json_values,
        "checkout_url": st.text(max_size=5) | st.just("x" * 3000),
        "reason": st.sampled_from(["customer_request", "bogus"]) | json_values,
    },
)
times = st.sampled_from(
    ["2024-01-15T10:30:00Z", "2024-01-15T10:30:00", "0001-01-01T00:00:00+01:00", "soon"]
)
# Objects that mostly pass validation, so that applying them is exercised too.
plausible_data = st.fixed_dictionaries(
    {"id": st.sampled_from(["pay_known", "pay_final", "pay_unknown", "re_known", "re_new"])},
    optional={
        "payment_id": st.sampled_from(["pay_known", "pay_final", "pay_unknown", "pay_other"]),
        "amount": st.integers(min_value=1, max_value=10**6),
        "currency": st.sampled_from(["EUR", "JPY", "KWD", "eur"]),
        "status": st.sampled_from(["pending", "succeeded", "failed", "canceled"]),
        "metadata": st.dictionaries(st.text(max_size=5), json_scalars, max_size=3),
        "customer": st.fixed_dictionaries(
            {},
            optional={
                "email": st.sampled_from(["a@example.com", "not an email", "", "é@x.example"]),
                "name": st.text(max_size=10),
            },
        ),
        "description": st.text(max_size=20),
        "created_at": times,
        "completed_at": times,
        "checkout_url": st.sampled_from(["https://pay.example/c", "", "javascript:x"]),
        "reason": st.sampled_from(["customer_request", "duplicate", "bogus"]),
    },
)
raw_tokens = st.sampled_from(
    [b"1e400", b"-1e400", b"NaN", b'"\\u0000"', b'"\\ud800"', b"9" * 5000, b"[" * 5000]
)
plausible_bodies = st.fixed_dictionaries({"event": event_types, "data": plausible_data}).map(
    lambda v: json.dumps(v).encode()
)
bodies = st.one_of(
    plausible_bodies,
    plausible_bodies,
    plausible_bodies,
    st.binary(max_size=200),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({"event": event_types | json_values, "data": data_objects}).map(
        lambda v: json.dumps(v).encode()
    ),
    st.fixed_dictionaries({"event": event_types | json_values, "data": json_values}).map(
        lambda v: json.dumps(v).encode()
    ),
    st.tuples(event_types, raw_tokens).map(
        lambda t: (
            b'{"event": "%s", "data": {"id": "pay_known", "amount": %s}}' % (t[0].encode(), t[1])
        )
    ),
)


def post_random_body(client: Client, body: bytes, caplog: pytest.LogCaptureFixture) -> None:
    """Post ``body`` signed; the test client raises what a 500 would hide. A 503 must be a
    passing failure (LedgePay unreachable, an object not yet known), never a bug: an
    unexpected exception is logged with its traceback, which fails here."""
    if not Payment.objects.filter(ledgepay_id="pay_known").exists():
        known = make_payment(ledgepay_id="pay_known", status="pending")
        make_payment(ledgepay_id="pay_final", status="failed")
        make_refund(known, ledgepay_id="re_known", status="pending")
    caplog.clear()
    response = post_webhook(client, body)
    assert response.status_code in {200, 400, 503}
    unexpected = [r for r in caplog.records if r.exc_info and r.name.startswith("django_ledgepay")]
    assert unexpected == []
    if response.status_code != 400:
        stored = WebhookEvent.objects.get(body_sha256=hashlib.sha256(body).hexdigest())
        assert (response.status_code == 503) == (stored.status == "failed")


def examples(thorough: int) -> int:
    """``thorough`` examples under ``HYPOTHESIS_PROFILE=ci`` (as CI runs), a third of them
    in the default run, which a newcomer waits for."""
    return thorough if os.environ.get("HYPOTHESIS_PROFILE") == "ci" else max(1, thorough // 3)


random_body_settings = hypothesis_settings(
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@hypothesis_settings(random_body_settings, max_examples=examples(300))
@given(body=bodies)
def test_signed_random_bodies_never_get_a_500(client, api, settings, caplog, body):
    settings.LEDGEPAY_MAX_RETRIES = 0  # An unknown payment meets an unreachable API: 503.
    post_random_body(client, body, caplog)


@pytest.mark.django_db(transaction=True)
@hypothesis_settings(random_body_settings, max_examples=examples(100))
@given(body=bodies)
def test_signed_random_bodies_never_get_a_500_in_autocommit(client, api, settings, caplog, body):
    """As a server runs the view: in autocommit, on PostgreSQL's one-statement path too."""
    settings.LEDGEPAY_MAX_RETRIES = 0
    Payment.objects.filter(ledgepay_id="pay_known").update(status="pending")
    post_random_body(client, body, caplog)


# Concurrency on PostgreSQL


def run_at_once(*calls: Callable[[], Any]) -> list[Any]:
    """Run ``calls`` in threads released together; return their results (or exceptions)."""
    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)

    def run(index: int, call: Callable[[], Any]) -> None:
        try:
            barrier.wait()
            results[index] = call()
        except Exception as err:
            results[index] = err
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run, args=item) for item in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


def delivery(body: bytes, headers: dict[str, str]) -> Callable[[], int]:
    return lambda: post_signed(Client(), body, headers).status_code


@concurrent_writers
@pytest.mark.django_db(transaction=True)
def test_same_event_to_several_workers_at_once(receive):
    payment = make_payment(status="pending")
    paid = receive(signals.payment_succeeded)
    body, headers = signed_webhook(succeeded(payment))
    codes = run_at_once(*[delivery(body, headers)] * 8)
    assert codes == [200] * 8
    assert len(paid.calls) == 1
    payment.refresh_from_db()
    assert payment.status == "succeeded"
    stored = WebhookEvent.objects.get()
    assert stored.status == "processed"
    assert paid.calls[0]["event"].pk == stored.pk


@concurrent_writers
@pytest.mark.django_db(transaction=True)
def test_unknown_payment_to_several_workers_at_once(receive, api):
    paid = receive(signals.payment_succeeded)
    api.get(f"{API}/payments/pay_new", json=payment_data(id="pay_new", status="succeeded"))
    body, headers = signed_webhook(event("payment.succeeded", {"id": "pay_new"}))
    codes = run_at_once(*[delivery(body, headers)] * 6)
    assert codes == [200] * 6
    assert len(paid.calls) == 1
    assert Payment.objects.get().status == "succeeded"
    assert WebhookEvent.objects.get().status == "processed"


@concurrent_writers
@pytest.mark.django_db(transaction=True)
def test_webhook_racing_sync_payment(receive, api):
    payment = make_payment(status="pending")
    paid = receive(signals.payment_succeeded)
    remote = payment_data(id=payment.ledgepay_id, status="succeeded", description="Synced")
    api.get(f"{API}/payments/{payment.ledgepay_id}", json=remote)
    body, headers = signed_webhook(succeeded(payment))

    def sync() -> str:
        return services.sync_payment(payment.ledgepay_id).status

    results = run_at_once(*[delivery(body, headers)] * 4, *[sync] * 4)
    assert results == [200] * 4 + ["succeeded"] * 4
    assert len(paid.calls) == 1
    payment.refresh_from_db()
    # The description the shop sent is a fixed fact: LedgePay's answer does not change it.
    assert (payment.status, payment.description) == ("succeeded", "Order #12345")
    assert WebhookEvent.objects.get().status == "processed"


@concurrent_writers
@pytest.mark.django_db(transaction=True)
def test_refund_events_for_an_unknown_payment_at_once(receive, api):
    paid = receive(signals.payment_succeeded)
    created, done = receive(signals.refund_created), receive(signals.refund_succeeded)
    api.get(f"{API}/payments/pay_r", json=payment_data(id="pay_r", status="succeeded"))
    data = refund_data("pay_r")
    first = signed_webhook(event("refund.created", data))
    second = signed_webhook(event("refund.succeeded", data))
    codes = run_at_once(*[delivery(*first)] * 3, *[delivery(*second)] * 3)
    assert codes == [200] * 6
    assert (len(paid.calls), len(created.calls), len(done.calls)) == (1, 1, 1)
    refund = Refund.objects.get()
    assert (refund.status, refund.payment.ledgepay_id) == ("succeeded", "pay_r")
    assert set(WebhookEvent.objects.values_list("status", flat=True)) == {"processed"}


@pytest.mark.django_db(transaction=True)
def test_a_failing_receiver_is_logged_and_the_delivery_still_200(client, receive, caplog):
    payment = make_payment(status="pending")

    def broken(sender: Any, **kwargs: Any) -> None:
        raise RuntimeError("receiver bug")

    signals.payment_succeeded.connect(broken)
    later = receive(signals.payment_succeeded)
    try:
        with caplog.at_level(logging.ERROR):
            response = post_webhook(client, succeeded(payment))
    finally:
        signals.payment_succeeded.disconnect(broken)
    assert response.status_code == 200
    assert "receiver bug" in caplog.text
    assert len(later.calls) == 1  # The others still run.
    assert WebhookEvent.objects.get().status == "processed"
    payment.refresh_from_db()
    assert payment.status == "succeeded"


@pytest.mark.django_db(transaction=True)
def test_a_failing_receiver_does_not_stop_the_next_signal(client, receive, caplog):
    payment = make_payment()

    def broken(sender: Any, **kwargs: Any) -> None:
        raise RuntimeError("receiver bug")

    signals.refund_created.connect(broken)
    done = receive(signals.refund_succeeded)
    try:
        with caplog.at_level(logging.ERROR):
            data = refund_data(payment.ledgepay_id)
            response = post_webhook(client, event("refund.succeeded", data))
    finally:
        signals.refund_created.disconnect(broken)
    assert response.status_code == 200
    assert "receiver bug" in caplog.text
    assert len(done.calls) == 1
    assert Refund.objects.get().status == "succeeded"


@pytest.mark.skipif(connection.vendor != "postgresql", reason="the one-statement path")
@pytest.mark.django_db(transaction=True)
def test_one_statement_path_stores_the_event_and_signals_with_it(client, receive):
    payment = make_payment(status="pending", metadata={"order_id": "1"})
    paid = receive(signals.payment_succeeded)
    data = {
        "id": payment.ledgepay_id,
        "amount": 5000,
        "currency": "EUR",
        "metadata": {"order_id": "1"},  # A fixed fact: what the shop sent.
        "completed_at": "2024-01-15T10:32:15Z",
    }
    body, headers = signed_webhook({"event": "payment.succeeded", "data": data})
    assert post_signed(client, body, headers).json() == {"detail": "processed"}
    stored = WebhookEvent.objects.get()
    assert (stored.status, stored.attempts, stored.object_id) == (
        "processed",
        1,
        payment.ledgepay_id,
    )
    assert stored.processed_at is not None
    assert stored.payload["data"] == data
    payment.refresh_from_db()
    assert payment.status == "succeeded"
    assert payment.metadata == {"order_id": "1"}
    assert payment.completed_at is not None
    assert payment.completed_at.isoformat() == "2024-01-15T10:32:15+00:00"
    assert len(paid.calls) == 1
    assert paid.calls[0]["event"].pk == stored.pk
    assert paid.calls[0]["payment"].status == "succeeded"
    assert paid.calls[0]["payment"].metadata == {"order_id": "1"}
    # A redelivery: the payment is no longer pending, the body is stored.
    assert post_signed(client, body, headers).json() == {"detail": "duplicate"}
    assert len(paid.calls) == 1


@pytest.mark.skipif(connection.vendor != "postgresql", reason="the one-statement path")
@pytest.mark.django_db(transaction=True)
def test_one_statement_path_leaves_contradictions_to_the_general_path(client, receive):
    payment = make_payment(status="succeeded")
    failed = receive(signals.payment_failed)
    data = {"id": payment.ledgepay_id, "amount": 5000, "currency": "EUR"}
    response = post_webhook(client, {"event": "payment.failed", "data": data})
    assert response.status_code == 200
    stored = WebhookEvent.objects.get()
    assert stored.status == "ignored"
    payment.refresh_from_db()
    assert payment.status == "succeeded"
    assert failed.calls == []
