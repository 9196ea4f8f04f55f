"""The helpers users import for their own tests, used as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import requests

from django.core.exceptions import ImproperlyConfigured

from django_ledgepay import services, signals
from django_ledgepay.exceptions import (
    APIConnectionError,
    APIError,
    InvalidRequestError,
    RateLimitError,
    WebhookSignatureError,
)
from django_ledgepay.models import Payment, Refund
from django_ledgepay.testing import FakeLedgePay, post_webhook, signed_webhook
from django_ledgepay.webhooks import compute_signature, verify_signature
from tests.factories import make_payment

pytestmark = pytest.mark.django_db

URLS: dict[str, Any] = {
    "success_url": "https://shop.example/ok",
    "cancel_url": "https://shop.example/no",
}


def test_signed_webhook_verifies_with_the_configured_secret(settings):
    body, headers = signed_webhook({"event": "x", "data": {}})
    assert verify_signature(
        body, headers["LedgePay-Signature"], [settings.LEDGEPAY_WEBHOOK_SECRET]
    )


def test_fake_ledgepay_runs_a_whole_payment(client, receive, django_capture_on_commit_callbacks):
    paid = receive(signals.payment_succeeded)
    refunded = receive(signals.refund_succeeded)
    with FakeLedgePay() as fake:
        payment = services.create_payment(amount=1999, currency="EUR", **URLS)
        assert fake.payments[payment.ledgepay_id]["status"] == "pending"
        assert payment.checkout_url.endswith(payment.ledgepay_id)

        fake.pay(payment.ledgepay_id)
        with django_capture_on_commit_callbacks(execute=True):
            assert fake.deliver(client) == [200]
        payment.refresh_from_db()
        assert payment.status == Payment.Status.SUCCEEDED
        assert len(paid.calls) == 1

        refund = services.refund_payment(payment, amount=999)
        fake.complete_refund(refund.ledgepay_id)
        with django_capture_on_commit_callbacks(execute=True):
            assert fake.deliver(client) == [200, 200]  # refund.created, refund.succeeded
        refund.refresh_from_db()
        assert refund.status == Refund.Status.SUCCEEDED
        assert len(refunded.calls) == 1
        assert payment.refundable_amount == 1000


def test_fake_ledgepay_honours_idempotency_keys():
    with FakeLedgePay() as fake:
        first = services.create_payment(amount=500, currency="JPY", idempotency_key="k1", **URLS)
        again = services.create_payment(amount=500, currency="JPY", idempotency_key="k1", **URLS)
        assert first.pk == again.pk
        assert len(fake.payments) == 1
        assert len(fake.requests) == 2


def test_fake_ledgepay_can_be_started_again_and_keeps_its_state():
    fake = FakeLedgePay()
    with fake:
        first = services.create_payment(amount=500, currency="EUR", **URLS)
    fake.start()
    try:
        second = services.create_payment(amount=600, currency="EUR", **URLS)
        assert services.sync_payment(first.ledgepay_id).amount == 500
    finally:
        fake.stop()
    assert sorted(fake.payments) == sorted([first.ledgepay_id, second.ledgepay_id])


def test_fake_ledgepay_refuses_like_ledgepay():
    with FakeLedgePay() as fake:
        payment = services.create_payment(amount=500, currency="EUR", **URLS)
        fake.pay(payment.ledgepay_id)
        with pytest.raises(InvalidRequestError, match="exceeds") as excinfo:
            services.get_client().create_refund({"payment_id": payment.ledgepay_id, "amount": 501})
        assert (excinfo.value.http_status, excinfo.value.param) == (400, "amount")


def test_fake_ledgepay_lists_for_sync():
    with FakeLedgePay() as fake:
        for amount in (100, 200, 300):
            fake.state.create_payment({"amount": amount, "currency": "EUR", **URLS})
        result = services.sync_payments()
    assert result.created == 3
    assert sorted(Payment.objects.values_list("amount", flat=True)) == [100, 200, 300]
    assert fake.requests[0].url is not None and "limit=100" in fake.requests[0].url


# signed_webhook and post_webhook


def test_signed_webhook_sends_bytes_and_str_as_they_are():
    for payload, body in ((b"\xff raw", b"\xff raw"), ('{"a": "é"}', '{"a": "é"}'.encode())):
        signed, headers = signed_webhook(payload, secret="s", timestamp=1705314735)
        assert signed == body
        expected = compute_signature(body, "s", 1705314735)
        assert headers == {"LedgePay-Signature": f"t=1705314735,v1={expected}"}


def test_signed_webhook_uses_the_first_secret_of_a_rotation(settings):
    settings.LEDGEPAY_WEBHOOK_SECRET = ["whsec_new", "whsec_old"]
    body, headers = signed_webhook({"event": "x", "data": {}})
    verify_signature(body, headers["LedgePay-Signature"], ["whsec_new"])
    with pytest.raises(WebhookSignatureError):
        verify_signature(body, headers["LedgePay-Signature"], ["whsec_old"])


def test_signed_webhook_without_a_secret_says_what_to_set(settings):
    settings.LEDGEPAY_WEBHOOK_SECRET = ""
    with pytest.raises(ImproperlyConfigured, match="LEDGEPAY_WEBHOOK_SECRET"):
        signed_webhook({"event": "x", "data": {}})


def test_post_webhook_posts_to_the_endpoint(client):
    payment = make_payment(status="pending")
    data = {"id": payment.ledgepay_id, "amount": 5000, "currency": "EUR"}
    response = post_webhook(client, {"event": "payment.failed", "data": data})
    assert response.status_code == 200
    payment.refresh_from_db()
    assert payment.status == "failed"
    assert post_webhook(client, b"{}", url="/elsewhere/").status_code == 404


def test_post_webhook_with_a_stale_timestamp_is_refused(client):
    response = post_webhook(client, {"event": "x", "data": {}}, timestamp=1)
    assert response.status_code == 400


# FakeLedgePay, driven


def test_fake_webhook_builds_events_to_redeliver_or_reorder(
    client, receive, django_capture_on_commit_callbacks
):
    created, done = receive(signals.refund_created), receive(signals.refund_succeeded)
    with FakeLedgePay() as fake:
        payment = services.create_payment(amount=1000, currency="EUR", **URLS)
        fake.pay(payment.ledgepay_id)
        refund_id = fake.state.create_refund({"payment_id": payment.ledgepay_id})["id"]
        fake.complete_refund(refund_id)
        fake.events.clear()  # Deliver them by hand, out of order and twice.

        succeeded = fake.webhook("refund.succeeded", refund_id)
        assert succeeded["event"] == "refund.succeeded"
        assert succeeded["data"]["payment_id"] == payment.ledgepay_id
        with django_capture_on_commit_callbacks(execute=True):
            for payload in (
                fake.webhook("payment.succeeded", payment.ledgepay_id),
                succeeded,
                fake.webhook("refund.created", refund_id),
                succeeded,
            ):
                assert post_webhook(client, payload).status_code == 200
    refund = Refund.objects.get(ledgepay_id=refund_id)
    assert (refund.status, refund.amount) == ("succeeded", 1000)
    assert (len(created.calls), len(done.calls)) == (1, 1)


def test_fake_webhook_for_an_unknown_object():
    with FakeLedgePay() as fake, pytest.raises(KeyError, match="no refund 're_x'"):
        fake.webhook("refund.created", "re_x")


def test_fake_fail_next_with_a_status(settings):
    settings.LEDGEPAY_MAX_RETRIES = 0
    with FakeLedgePay() as fake:
        fake.fail_next(503)
        with pytest.raises(APIError) as excinfo:
            services.create_payment(amount=500, currency="EUR", **URLS)
        assert excinfo.value.http_status == 503
        assert fake.payments == {}
        fake.fail_next(429)
        with pytest.raises(RateLimitError):
            services.create_payment(amount=500, currency="EUR", **URLS)
        payment = services.create_payment(amount=500, currency="EUR", **URLS)
    assert list(fake.payments) == [payment.ledgepay_id]
    assert len(fake.requests) == 3


def test_fake_fail_next_dropped_connections_are_retried(settings):
    settings.LEDGEPAY_MAX_RETRIES = 2
    with FakeLedgePay() as fake:
        fake.fail_next(None, times=2)
        payment = services.create_payment(amount=500, currency="EUR", **URLS)
        assert len(fake.requests) == 3
        assert list(fake.payments) == [payment.ledgepay_id]
        settings.LEDGEPAY_MAX_RETRIES = 0
        fake.fail_next(None)
        with pytest.raises(APIConnectionError):
            services.sync_payment(payment.ledgepay_id)


def test_fake_unknown_payment_while_down_then_redelivered(
    client, settings, receive, django_capture_on_commit_callbacks
):
    settings.LEDGEPAY_MAX_RETRIES = 0
    paid = receive(signals.payment_succeeded)
    with FakeLedgePay() as fake:
        payment_id = fake.state.create_payment({"amount": 700, "currency": "EUR", **URLS})["id"]
        fake.pay(payment_id)
        payload = {"event": "payment.succeeded", "data": {"id": payment_id}}  # Says little.
        fake.fail_next(None)
        with django_capture_on_commit_callbacks(execute=True):
            assert post_webhook(client, payload).status_code == 503
            assert post_webhook(client, payload).status_code == 200
    assert Payment.objects.get(ledgepay_id=payment_id).amount == 700
    assert len(paid.calls) == 1


def test_fake_refund_idempotency_and_one_event():
    with FakeLedgePay() as fake:
        payment = fake.state.create_payment({"amount": 900, "currency": "EUR", **URLS})
        fake.pay(payment["id"])
        fake.events.clear()
        api = services.get_client()
        params = {"payment_id": payment["id"], "amount": 400}
        first = api.create_refund(params, idempotency_key="refund-1")
        again = api.create_refund(params, idempotency_key="refund-1")
        assert first == again
        assert len(fake.refunds) == 1
        assert [e["event"] for e in fake.events] == ["refund.created"]
        other = api.create_refund(params, idempotency_key="refund-2")
        assert other["id"] != first["id"]
        assert len(fake.refunds) == 2


def test_fake_lists_filter_and_page():
    with FakeLedgePay() as fake:
        ids = [
            fake.state.create_payment({"amount": n, "currency": "EUR", **URLS})["id"]
            for n in (100, 200, 300)
        ]
        fake.cancel(ids[1])
        api = services.get_client()
        canceled, more = api.list_payments(status="canceled")
        assert ([p["id"] for p in canceled], more) == ([ids[1]], False)
        page, more = api.list_payments(limit=2)
        assert (len(page), more) == (2, True)


def test_fake_requires_the_api_key_header(settings):
    with FakeLedgePay() as fake:
        answer = requests.get(f"{fake.api_base}/payments", timeout=5)
    assert answer.status_code == 401
    assert answer.json()["error"]["type"] == "authentication_error"


def test_the_signing_helpers_work_without_responses_installed():
    # A shop that only posts signed deliveries need not install responses.
    script = (
        "import sys; sys.modules['responses'] = None\n"
        "import django; django.setup()\n"
        "from django_ledgepay.testing import signed_webhook\n"
        "body, headers = signed_webhook({'event': 'x', 'data': {}}, secret='s')\n"
        "print(sorted(headers))\n"
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings"}
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=Path(__file__).resolve().parent.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['LedgePay-Signature']"
