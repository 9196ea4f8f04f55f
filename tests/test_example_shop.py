"""The example shop's views and receivers, against FakeLedgePay."""

from __future__ import annotations

from io import StringIO

import pytest

from django.apps import apps
from django.contrib.auth.models import User
from django.core.management import call_command
from django.test import Client
from django.urls import reverse

from django_ledgepay.models import Payment
from django_ledgepay.signals import payment_succeeded
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


def pay(client, order):
    return client.post(reverse("shop:pay", args=[order.pk]))


def checkout(client, product):
    """Buy, then press Pay on the order's page: the shopper is sent to the checkout page."""
    buy(client, product)
    order = Order.objects.get()
    response = pay(client, order)
    order.refresh_from_db()
    assert order.payment is not None
    assert response["Location"] == order.payment.checkout_url
    return order


def test_product_list_shows_prices(client, product):
    Product.objects.create(name="Whisk", price=2200, currency="JPY")
    response = client.get(reverse("shop:products"))
    assert response.status_code == 200
    assert "12.50 EUR" in response.content.decode()
    assert "2200 JPY" in response.content.decode()


def test_buy_shows_the_order_with_its_pay_button_and_calls_nobody(client, product, ledgepay):
    response = buy(client, product)
    order = Order.objects.get()
    assert response["Location"] == reverse("shop:order", args=[order.pk])
    page = client.get(response["Location"]).content.decode()
    assert "Not paid yet." in page
    assert f'action="{reverse("shop:pay", args=[order.pk])}"' in page
    assert "Pay 12.50 EUR" in page
    assert ledgepay.requests == []


def test_pay_redirects_to_checkout(client, product, ledgepay):
    order = checkout(client, product)
    assert order.payment is not None
    sent = ledgepay.payments[order.payment.ledgepay_id]
    assert (sent["amount"], sent["currency"]) == (1250, "EUR")
    assert sent["metadata"] == {"order_id": str(order.pk)}
    assert sent["customer"]["email"] == "ann@example.com"
    assert sent["success_url"].endswith(f"/shop/orders/{order.pk}/return/")
    assert ledgepay.requests[0].headers["Idempotency-Key"] == f"example-shop-order-{order.pk}"


def test_a_second_click_on_pay_reuses_the_payment(client, product, ledgepay):
    order = checkout(client, product)
    assert order.payment is not None

    again = pay(client, order)

    assert again["Location"] == order.payment.checkout_url
    assert len(ledgepay.payments) == 1
    assert len(ledgepay.requests) == 1


def test_a_bad_email_is_refused_before_any_call(client, product, ledgepay):
    response = buy(client, product, email="not an email")
    assert response.status_code == 400
    assert "Enter a valid email address." in response.content.decode()
    assert not Order.objects.exists()
    assert ledgepay.requests == []


@pytest.mark.parametrize("status", [None, 500, 429])
def test_ledgepay_down_gives_a_clear_page_not_a_500(client, product, ledgepay, settings, status):
    settings.LEDGEPAY_MAX_RETRIES = 0
    buy(client, product)
    order = Order.objects.get()
    ledgepay.fail_next(status=status)

    response = pay(client, order)

    page = response.content.decode()
    assert response.status_code == 503
    assert "the payment could not start just now" in page
    assert "Nothing has been charged." in page
    assert Order.objects.get().status == "pending"
    # The shopper never sees the exception's text, LedgePay's message or a request line.
    for internal in ("ConnectionError", "dropped", "on purpose", "POST", "/payments", "Error"):
        assert internal not in page


def test_try_again_after_ledgepay_was_down_pays_the_same_order(
    client, product, ledgepay, settings
):
    settings.LEDGEPAY_MAX_RETRIES = 0
    buy(client, product)
    order = Order.objects.get()
    ledgepay.fail_next(status=None)
    unavailable = pay(client, order)
    assert f'action="{reverse("shop:pay", args=[order.pk])}"' in unavailable.content.decode()

    response = pay(client, order)  # "Try again"

    order.refresh_from_db()
    assert order.payment is not None
    assert response["Location"] == order.payment.checkout_url
    assert Order.objects.count() == 1
    assert len(ledgepay.payments) == 1


def test_a_get_never_creates_a_payment_or_an_order(client, product, ledgepay):
    buy(client, product)
    order = Order.objects.get()

    assert client.get(reverse("shop:buy", args=[product.pk])).status_code == 405
    assert client.get(reverse("shop:pay", args=[order.pk])).status_code == 405
    assert ledgepay.requests == []
    assert Order.objects.count() == 1


def test_buying_and_paying_need_the_csrf_token(product, ledgepay):
    shopper = Client(enforce_csrf_checks=True)
    assert buy(shopper, product).status_code == 403
    assert not Order.objects.exists()

    shopper.get(reverse("shop:products"))  # The page's form sets the CSRF cookie.
    token = shopper.cookies["csrftoken"].value
    url = reverse("shop:buy", args=[product.pk])
    assert shopper.post(url, {"csrfmiddlewaretoken": token}).status_code == 302
    order = Order.objects.get()
    assert pay(shopper, order).status_code == 403
    assert ledgepay.requests == []
    paid = shopper.post(reverse("shop:pay", args=[order.pk]), {"csrfmiddlewaretoken": token})
    assert paid.status_code == 302
    assert len(ledgepay.requests) == 1


def test_a_logged_out_visitor_owns_the_order_through_the_session(client, product, ledgepay):
    order = checkout(client, product)
    assert order.user is None
    assert f"Order #{order.pk}" in client.get(reverse("shop:products")).content.decode()
    assert client.get(reverse("shop:order", args=[order.pk])).status_code == 200
    assert client.get(reverse("shop:order-return", args=[order.pk])).status_code == 200


def test_another_visitor_sees_neither_the_order_nor_its_pages(client, product, ledgepay):
    order = checkout(client, product)
    stranger = Client()

    assert f"Order #{order.pk}" not in stranger.get(reverse("shop:products")).content.decode()
    assert stranger.get(reverse("shop:order", args=[order.pk])).status_code == 404
    assert stranger.get(reverse("shop:order-return", args=[order.pk])).status_code == 404
    assert pay(stranger, order).status_code == 404
    assert len(ledgepay.requests) == 1


def test_a_logged_in_user_finds_the_order_in_another_session(client, product, ledgepay):
    user = User.objects.create_user("ann", password="ann-pw")
    client.force_login(user)
    buy(client, product)
    order = Order.objects.get()
    assert order.user == user

    elsewhere = Client()
    elsewhere.force_login(user)
    assert elsewhere.get(reverse("shop:order", args=[order.pk])).status_code == 200
    assert f"Order #{order.pk}" in elsewhere.get(reverse("shop:products")).content.decode()


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
    order = checkout(client, product)
    assert order.payment is not None
    getattr(ledgepay, action)(order.payment.ledgepay_id)
    with django_capture_on_commit_callbacks(execute=True):
        assert ledgepay.deliver(client) == [200]
    order.refresh_from_db()
    assert order.status == status
    page = client.get(reverse("shop:order-return", args=[order.pk])).content.decode()
    assert text in page
    assert "Pay 12.50 EUR" not in page


def test_paying_a_paid_order_again_only_shows_it(
    client, product, ledgepay, django_capture_on_commit_callbacks
):
    order = checkout(client, product)
    assert order.payment is not None
    ledgepay.pay(order.payment.ledgepay_id)
    with django_capture_on_commit_callbacks(execute=True):
        ledgepay.deliver(client)

    response = pay(client, order)

    assert response["Location"] == reverse("shop:order", args=[order.pk])
    assert len(ledgepay.requests) == 1


def test_return_page_shows_the_truth_before_the_webhook(
    client, product, ledgepay, django_capture_on_commit_callbacks
):
    order = checkout(client, product)
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
    order = checkout(client, product)
    settings.LEDGEPAY_MAX_RETRIES = 0
    ledgepay.fail_next(status=None)
    page = client.get(reverse("shop:order-return", args=[order.pk]))
    assert page.status_code == 200
    assert "LedgePay could not be reached just now" in page.content.decode()
    assert "ConnectionError" not in page.content.decode()


def test_the_receivers_are_connected_once_by_the_app_config():
    def shop_receivers():
        names = [name for name, _ in payment_succeeded.named_receivers(Payment)]
        return [name for name in names if name.startswith("shop.")]

    assert shop_receivers() == ["shop.receivers.mark_paid"]
    apps.get_app_config("shop").ready()  # As when Django starts again in one process.
    assert shop_receivers() == ["shop.receivers.mark_paid"]


def test_demo_setup_is_idempotent():
    call_command("shop_demo_setup", stdout=StringIO())
    call_command("shop_demo_setup", stdout=StringIO())
    assert Product.objects.count() == 3
    assert User.objects.get(username="admin").is_superuser
