from django.test import TestCase
from django.urls import reverse

from django_ledgepay import services
from django_ledgepay.testing import FakeLedgePay

from .models import Order


class OrderPaymentTests(TestCase):
    def setUp(self):
        # LedgePay in memory: no request leaves the test.
        self.ledgepay = FakeLedgePay()
        self.ledgepay.start()
        self.addCleanup(self.ledgepay.stop)

    def order_and_pay(self):
        """Order a mug and press Pay: the shopper is sent to LedgePay's checkout."""
        self.client.post(reverse("orders:create"))
        order = Order.objects.get()
        response = self.client.post(reverse("orders:pay", args=[order.pk]))
        order.refresh_from_db()
        self.assertRedirects(response, order.payment.checkout_url, fetch_redirect_response=False)
        return order

    def test_paid_then_refunded(self):
        order = self.order_and_pay()

        self.ledgepay.pay(order.payment.ledgepay_id)  # The shopper pays at LedgePay.
        with self.captureOnCommitCallbacks(execute=True):  # Receivers run after commit.
            self.assertEqual(self.ledgepay.deliver(self.client), [200])  # The webhook.
        order.refresh_from_db()
        self.assertEqual(order.status, Order.Status.PAID)

        refund = services.refund_payment(order.payment)
        self.ledgepay.complete_refund(refund.ledgepay_id)
        with self.captureOnCommitCallbacks(execute=True):
            self.assertEqual(self.ledgepay.deliver(self.client), [200, 200])
        order.refresh_from_db()
        self.assertEqual(order.status, Order.Status.REFUNDED)

    def test_the_return_page_asks_ledgepay_before_the_webhook(self):
        order = self.order_and_pay()
        self.ledgepay.pay(order.payment.ledgepay_id)  # No webhook delivered yet.

        with self.captureOnCommitCallbacks(execute=True):
            response = self.client.get(reverse("orders:return", args=[order.pk]))

        self.assertRedirects(response, order.get_absolute_url())
        order.refresh_from_db()
        self.assertEqual(order.status, Order.Status.PAID)
        self.assertContains(self.client.get(order.get_absolute_url()), "Paid")

    def test_ledgepay_unreachable(self):
        self.client.post(reverse("orders:create"))
        order = Order.objects.get()
        with self.settings(LEDGEPAY_MAX_RETRIES=0):
            self.ledgepay.fail_next(status=None)  # A dropped connection.
            with self.assertLogs("orders.views", "ERROR"):
                response = self.client.post(reverse("orders:pay", args=[order.pk]))

        self.assertContains(response, "could not start just now", status_code=503)
        self.assertNotContains(response, "Connection", status_code=503)

    def test_a_get_never_starts_a_payment(self):
        self.client.post(reverse("orders:create"))
        order = Order.objects.get()

        response = self.client.get(reverse("orders:pay", args=[order.pk]))

        self.assertEqual(response.status_code, 405)
        self.assertEqual(self.ledgepay.requests, [])

    def test_another_visitor_cannot_see_the_order(self):
        self.client.post(reverse("orders:create"))
        order = Order.objects.get()
        self.client.logout()  # A new session: another visitor.

        response = self.client.get(order.get_absolute_url())

        self.assertEqual(response.status_code, 404)
