from django.dispatch import receiver

from django_ledgepay.signals import (
    payment_canceled,
    payment_failed,
    payment_succeeded,
    refund_succeeded,
)

from .models import Order


def order_of(payment):
    """The order a payment was made for: its id travels in the payment's metadata."""
    return Order.objects.filter(pk=payment.metadata.get("order_id"))


@receiver(payment_succeeded)
def mark_paid(sender, payment, **kwargs):
    order_of(payment).filter(status=Order.Status.PENDING).update(
        status=Order.Status.PAID, payment=payment
    )


@receiver(payment_failed)
def mark_failed(sender, payment, **kwargs):
    order_of(payment).filter(status=Order.Status.PENDING).update(status=Order.Status.FAILED)


@receiver(payment_canceled)
def mark_canceled(sender, payment, **kwargs):
    order_of(payment).filter(status=Order.Status.PENDING).update(status=Order.Status.CANCELED)


@receiver(refund_succeeded)
def mark_refunded(sender, refund, payment, **kwargs):
    if payment.refundable_amount == 0:  # Refunded in full, perhaps in several refunds.
        order_of(payment).filter(status=Order.Status.PAID).update(status=Order.Status.REFUNDED)
