"""The helpers users import for their own tests, used as a user would."""

from __future__ import annotations

from typing import Any

import pytest

from django_ledgepay import services, signals
from django_ledgepay.exceptions import InvalidRequestError
from django_ledgepay.models import Payment, Refund
from django_ledgepay.testing import FakeLedgePay, signed_webhook
from django_ledgepay.webhooks import verify_signature

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
