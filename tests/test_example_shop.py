"""The example shop's views and receivers, against FakeLedgePay."""

from __future__ import annotations

from io import StringIO

import pytest

from django.core.management import call_command
from django.urls import reverse

from django_ledgepay.testing import FakeLedgePay
from shop.models import Order, Product

pytestmark = pytest.mark.django_db


@pytest.fixture
def product():
    return Product.objects.create(name="Blue mug", price=1250, currency="EUR")


@pytest.fixture
def ledgepay():
    with FakeLedgePay() as fake:
        yield fake


def buy(client, product, email="ann@example.com"):
    return client.post(reverse("shop:buy", args=[product.pk]), {"email": email})


def test_product_list_shows_prices(client, product):
    Product.objects.create(name="Whisk", price=2200, currency="JPY")
    response = client.get(reverse("shop:products"))
    assert response.status_code == 200
    assert "12.50 EUR" in response.content.decode()
    assert "2200 JPY" in response.content.decode()


def test_buy_redirects_to_checkout(client, product, ledgepay):
    response = buy(client, product)
    order = Order.objects.get()
    assert response.status_code == 302
    assert order.payment is not None
    assert response["Location"] == order.payment.checkout_url
    sent = ledgepay.payments[order.payment.ledgepay_id]
    assert (sent["amount"], sent["currency"]) == (1250, "EUR")
    assert sent["metadata"] == {"order_id": str(order.pk)}
    assert sent["success_url"].endswith(f"/shop/orders/{order.pk}/return/")
    assert ledgepay.requests[0].headers["Idempotency-Key"] == f"example-shop-order-{order.pk}"


def test_a_bad_email_is_refused_before_any_call(client, product, ledgepay):
    response = buy(client, product, email="not an email")
    assert response.status_code == 400
    assert "Enter a valid email address." in response.content.decode()
    assert not Order.objects.exists()
    assert ledgepay.requests == []


def test_ledgepay_down_gives_a_clear_page_not_a_500(client, product, ledgepay, settings):
    settings.LEDGEPAY_MAX_RETRIES = 0
    ledgepay.fail_next(status=None)
    response = buy(client, product)
    assert response.status_code == 503
    assert "the payment could not start" in response.content.decode()
    assert Order.objects.get().status == "pending"


@pytest.mark.parametrize(
    ("action", "status", "text"),
    [
        ("pay", "paid", "Paid. Thank you!"),
        ("fail", "failed", "The payment failed."),
        ("cancel", "canceled", "The payment was canceled."),
    ],
)
def test_webhook_marks_the_order(
    client, product, ledgepay, action, status, text, django_capture_on_commit_callbacks
):
    buy(client, product)
    order = Order.objects.get()
    assert order.payment is not None
    getattr(ledgepay, action)(order.payment.ledgepay_id)
    with django_capture_on_commit_callbacks(execute=True):
        assert ledgepay.deliver(client) == [200]
    order.refresh_from_db()
    assert order.status == status
    page = client.get(reverse("shop:order-return", args=[order.pk]))
    assert text in page.content.decode()


def test_return_page_shows_the_truth_before_the_webhook(
    client, product, ledgepay, django_capture_on_commit_callbacks
):
    buy(client, product)
    order = Order.objects.get()
    assert order.payment is not None
    ledgepay.pay(order.payment.ledgepay_id)  # The webhook has not arrived.
    with django_capture_on_commit_callbacks(execute=True):
        page = client.get(reverse("shop:order-return", args=[order.pk]))
    assert "Paid. Thank you!" in page.content.decode()
    order.refresh_from_db()
    assert order.status == "paid"  # The sync's signal marked it.
    with django_capture_on_commit_callbacks(execute=True):
        assert ledgepay.deliver(client) == [200]  # The late webhook changes nothing.
    assert Order.objects.get().status == "paid"


def test_return_page_when_ledgepay_cannot_be_asked(client, product, ledgepay, settings):
    buy(client, product)
    order = Order.objects.get()
    settings.LEDGEPAY_MAX_RETRIES = 0
    ledgepay.fail_next(status=None)
    page = client.get(reverse("shop:order-return", args=[order.pk]))
    assert page.status_code == 200
    assert "LedgePay could not be reached just now" in page.content.decode()


def test_demo_setup_is_idempotent():
    call_command("shop_demo_setup", stdout=StringIO())
    call_command("shop_demo_setup", stdout=StringIO())
    assert Product.objects.count() == 3
    from django.contrib.auth.models import User

    assert User.objects.get(username="admin").is_superuser
