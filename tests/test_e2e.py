"""The whole flow over loopback: the sandbox, a live Django server and its webhook view."""

from __future__ import annotations

import re

import pytest
import requests

from django_ledgepay import services, signals
from django_ledgepay.models import Payment, Refund
from django_ledgepay.sandbox import Sandbox

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def sandbox(live_server, settings):
    with Sandbox(
        webhook_url=f"{live_server.url}/ledgepay/webhook/",
        webhook_secret=settings.LEDGEPAY_WEBHOOK_SECRET,
        refund_delay=0.1,
        delivery_backoff=0.05,
        seed=7,
    ) as running:
        settings.LEDGEPAY_API_BASE = running.api_base
        yield running


def buy(live_server):
    return services.create_payment(
        amount=2599,
        currency="EUR",
        description="Blue mug",
        success_url=f"{live_server.url}/shop/return/",
        cancel_url=f"{live_server.url}/shop/cancel/",
    )


def press(payment: Payment, action: str) -> requests.Response:
    """Press a button on the sandbox's checkout page, as a shopper would."""
    return requests.post(
        payment.checkout_url, data={"action": action}, allow_redirects=False, timeout=5
    )


def status_becomes(sandbox, model, pk, status):
    return sandbox.wait_until(
        lambda: model.objects.filter(pk=pk, status=status).exists(), timeout=10
    )


def test_pay_and_the_webhook_applies(sandbox, live_server, receive):
    paid = receive(signals.payment_succeeded)
    payment = buy(live_server)
    assert payment.checkout_url.startswith(sandbox.url)
    answer = press(payment, "pay")
    assert answer.headers["Location"] == payment.success_url
    assert status_becomes(sandbox, Payment, payment.pk, "succeeded")
    assert sandbox.wait_until(lambda: len(paid.calls) == 1)
    assert paid.calls[0]["event"].event_type == "payment.succeeded"
    assert sandbox.wait_for_deliveries()
    assert len(paid.calls) == 1


@pytest.mark.parametrize(("action", "status"), [("cancel", "canceled"), ("fail", "failed")])
def test_cancel_and_fail(sandbox, live_server, receive, action, status):
    fired = receive(getattr(signals, f"payment_{status}"))
    payment = buy(live_server)
    answer = press(payment, action)
    expected = payment.cancel_url if action == "cancel" else payment.success_url
    assert answer.headers["Location"] == expected
    assert status_becomes(sandbox, Payment, payment.pk, status)
    assert sandbox.wait_until(lambda: len(fired.calls) == 1)


def test_refund_completed_by_its_webhooks(sandbox, live_server, receive):
    created, succeeded = receive(signals.refund_created), receive(signals.refund_succeeded)
    payment = buy(live_server)
    press(payment, "pay")
    assert status_becomes(sandbox, Payment, payment.pk, "succeeded")

    refund = services.refund_payment(payment, amount=599)
    assert refund.status == "pending"
    assert status_becomes(sandbox, Refund, refund.pk, "succeeded")
    assert sandbox.wait_for_deliveries()
    # Once, from whichever recorded it first: the refund call or its refund.created webhook.
    assert len(created.calls) == 1
    assert Refund.objects.count() == 1
    assert len(succeeded.calls) == 1
    assert succeeded.calls[0]["event"].event_type == "refund.succeeded"
    assert Payment.objects.get(pk=payment.pk).refundable_amount == 2000
    assert sandbox.refunds[refund.ledgepay_id]["status"] == "succeeded"


def test_idempotent_retries_under_failures_leave_one_payment_per_call(
    sandbox, live_server, settings
):
    settings.LEDGEPAY_MAX_RETRIES = 10
    sandbox.failure_rate = 0.3
    calls = 25
    for number in range(calls):
        services.create_payment(
            amount=100 + number,
            currency="EUR",
            success_url=f"{live_server.url}/ok/",
            cancel_url=f"{live_server.url}/no/",
            idempotency_key=f"order-{number}",
        )
    assert any(failure.endswith("-after") for failure in sandbox.injected)
    assert len(sandbox.payments) == calls
    assert Payment.objects.count() == calls
    assert sorted(p["amount"] for p in sandbox.payments.values()) == list(range(100, 125))


def form_field(page: str, name: str) -> str:
    match = re.search(rf'name="{name}" value="([^"]*)"', page)
    assert match is not None, name
    return match.group(1)


def test_admin_refund_page_while_its_webhooks_arrive(sandbox, live_server, admin_user):
    """Staff refund from the admin while the refund's own webhooks race the request."""
    payment = buy(live_server)
    press(payment, "pay")
    assert status_becomes(sandbox, Payment, payment.pk, "succeeded")
    staff = requests.Session()
    login = f"{live_server.url}/admin/login/"
    staff.get(login, timeout=5)
    credentials = {"username": admin_user.username, "password": "password"}
    token = staff.cookies["csrftoken"]
    staff.post(login, data={**credentials, "csrfmiddlewaretoken": token}, timeout=5)
    url = f"{live_server.url}/admin/django_ledgepay/payment/{payment.pk}/refund/"
    page = staff.get(url, timeout=5).text
    form = {
        "amount": "5.99",
        "reason": "customer_request",
        "refunded_before": form_field(page, "refunded_before"),
        "csrfmiddlewaretoken": form_field(page, "csrfmiddlewaretoken"),
    }

    answer = staff.post(url, data=form, allow_redirects=False, timeout=30)

    assert answer.status_code == 302, answer.text[:2000]
    refund = Refund.objects.get(payment=payment)
    assert status_becomes(sandbox, Refund, refund.pk, "succeeded")
    assert sandbox.wait_for_deliveries()
    assert Refund.objects.count() == 1
    assert Payment.objects.get(pk=payment.pk).refundable_amount == 2000
    # The same form again, as a double submit would send it: refused, nothing refunded.
    again = staff.post(url, data=form, allow_redirects=False, timeout=30)
    assert again.status_code == 200
    assert len(sandbox.refunds) == 1
