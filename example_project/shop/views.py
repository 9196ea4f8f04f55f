from __future__ import annotations

import logging

from django import forms
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from django_ledgepay import services
from django_ledgepay.exceptions import LedgePayError
from django_ledgepay.models import Payment
from shop.models import Order, Product

logger = logging.getLogger(__name__)

PAYMENT_TO_ORDER = {
    Payment.Status.SUCCEEDED: Order.Status.PAID,
    Payment.Status.FAILED: Order.Status.FAILED,
    Payment.Status.CANCELED: Order.Status.CANCELED,
}


@require_GET
def product_list(request: HttpRequest) -> HttpResponse:
    orders = Order.objects.select_related("product")[:10]
    return render(
        request, "shop/product_list.html", {"products": Product.objects.all(), "orders": orders}
    )


class BuyForm(forms.Form):
    email = forms.EmailField(required=False)


@require_POST
def buy(request: HttpRequest, product_id: int) -> HttpResponse:
    product = get_object_or_404(Product, pk=product_id)
    form = BuyForm(request.POST)
    if not form.is_valid():
        context = {"products": Product.objects.all(), "form": form, "failed_product": product}
        return render(request, "shop/product_list.html", context, status=400)
    email = form.cleaned_data["email"]
    order = Order.objects.create(product=product, email=email)
    return_url = request.build_absolute_uri(reverse("shop:order-return", args=[order.pk]))
    try:
        payment = services.create_payment(
            amount=product.price,
            currency=product.currency,
            description=f"Order #{order.pk}: {product.name}",
            customer={"email": email, "name": ""} if email else None,
            metadata={"order_id": str(order.pk)},
            success_url=return_url,
            cancel_url=return_url,
            idempotency_key=f"example-shop-order-{order.pk}",
        )
    except LedgePayError as err:
        logger.warning("Payment for order %s could not start: %s", order.pk, err)
        return render(
            request, "shop/payment_unavailable.html", {"order": order, "error": err}, status=503
        )
    with transaction.atomic():
        Order.objects.filter(pk=order.pk).update(payment=payment)
    return redirect(payment.checkout_url)


@require_GET
def order_return(request: HttpRequest, order_id: int) -> HttpResponse:
    """Where LedgePay sends the shopper back. The webhook may not have arrived yet, so a
    payment still pending is asked of LedgePay: the page shows the order's true status."""
    order = get_object_or_404(Order.objects.select_related("product", "payment"), pk=order_id)
    checking_failed = False
    if order.payment is not None and order.payment.status == Payment.Status.PENDING:
        try:
            services.sync_payment(order.payment)
        except LedgePayError as err:
            logger.warning("Could not check order %s with LedgePay: %s", order.pk, err)
            checking_failed = True
        order.refresh_from_db()
    # The payment is the truth; the order follows it through the signal receivers, which
    # may still be running in the webhook's request.
    status = order.status
    if order.payment is not None and order.payment.status in PAYMENT_TO_ORDER:
        status = PAYMENT_TO_ORDER[order.payment.status]
    context = {"order": order, "status": status, "checking_failed": checking_failed}
    return render(request, "shop/order_return.html", context)
