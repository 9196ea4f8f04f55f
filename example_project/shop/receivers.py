"""The shop's side of the payment: django-ledgepay's signals mark orders paid or not.

They fire once per change, after commit, whether the news came by webhook or by a sync
from the return page, so the order is updated exactly once either way.
"""

from __future__ import annotations

from typing import Any

from django.dispatch import receiver

from django_ledgepay.models import Payment
from django_ledgepay.signals import payment_canceled, payment_failed, payment_succeeded
from shop.models import Order


def _orders_of(payment: Payment) -> Any:
    order_id = payment.metadata.get("order_id")
    orders = Order.objects.filter(status=Order.Status.PENDING)
    if isinstance(order_id, str) and order_id.isdigit():
        return orders.filter(pk=int(order_id))
    return orders.filter(payment=payment)


@receiver(payment_succeeded)
def mark_paid(sender: type[Payment], payment: Payment, **kwargs: Any) -> None:
    _orders_of(payment).update(status=Order.Status.PAID, payment=payment)


@receiver(payment_failed)
def mark_failed(sender: type[Payment], payment: Payment, **kwargs: Any) -> None:
    _orders_of(payment).update(status=Order.Status.FAILED, payment=payment)


@receiver(payment_canceled)
def mark_canceled(sender: type[Payment], payment: Payment, **kwargs: Any) -> None:
    _orders_of(payment).update(status=Order.Status.CANCELED, payment=payment)
