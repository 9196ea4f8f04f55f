"""The demo's promise in a real browser: buy in the example shop, press Pay on the sandbox's
checkout page, and land on a return page that says paid."""

from __future__ import annotations

import pytest

from django_ledgepay.sandbox import Sandbox
from shop.models import Order, Product

pytestmark = [pytest.mark.browser, pytest.mark.live, pytest.mark.django_db(transaction=True)]


def test_buy_and_pay_in_chromium(chromium, live_server, settings):
    Product.objects.create(name="Blue mug", price=1250, currency="EUR")
    with Sandbox(
        webhook_url=f"{live_server.url}/ledgepay/webhook/",
        webhook_secret=settings.LEDGEPAY_WEBHOOK_SECRET,
        delivery_backoff=0.05,
    ) as sandbox:
        settings.LEDGEPAY_API_BASE = sandbox.api_base
        with chromium() as page:
            page.goto(f"{live_server.url}/shop/")
            page.get_by_role("button", name="Buy Blue mug").click()
            page.wait_for_url(f"{sandbox.url}/checkout/*")
            assert "12.50 EUR" in page.content()
            page.get_by_role("button", name="Pay").click()
            page.wait_for_url(f"{live_server.url}/shop/orders/*/return/")
            status = page.locator("#order-status").inner_text()
        sandbox.wait_for_deliveries()
    assert "Paid" in status
    order = Order.objects.get()
    assert order.status == Order.Status.PAID
    assert order.payment is not None
    assert order.payment.status == "succeeded"
