from __future__ import annotations

import logging

from django import forms
from django.db import transaction
from django.db.models import Q, QuerySet
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


#: The session key that holds the ids of the orders made in this browser session.
SESSION_ORDERS = "shop_order_ids"


def visible_orders(request: HttpRequest) -> QuerySet[Order]:
    """The visitor's own orders: those made in this browser session, and, when logged in,
    the user's. Nobody sees, or pays for, another visitor's order."""
    mine = Q(pk__in=request.session.get(SESSION_ORDERS, []))
    if request.user.is_authenticated:
        mine |= Q(user=request.user)
    return Order.objects.filter(mine)


@require_GET
def product_list(request: HttpRequest) -> HttpResponse:
    orders = visible_orders(request).select_related("product")[:10]
    return render(
        request, "shop/product_list.html", {"products": Product.objects.all(), "orders": orders}
    )


class BuyForm(forms.Form):
    email = forms.EmailField(required=False)


@require_POST
def buy(request: HttpRequest, product_id: int) -> HttpResponse:
    """Create the order, in this visitor's session, and show it with its Pay button.

    Paying is a step of its own, so that the order is in the session before LedgePay is
    called: Django does not save the session of a 5xx answer, and the 503 page's "Try
    again" must find the order.
    """
    product = get_object_or_404(Product, pk=product_id)
    form = BuyForm(request.POST)
    if not form.is_valid():
        context = {"products": Product.objects.all(), "form": form, "failed_product": product}
        return render(request, "shop/product_list.html", context, status=400)
    user = request.user if request.user.is_authenticated else None
    order = Order.objects.create(product=product, email=form.cleaned_data["email"], user=user)
    request.session[SESSION_ORDERS] = [*request.session.get(SESSION_ORDERS, []), order.pk]
    return redirect("shop:order", order_id=order.pk)


@require_POST
def pay(request: HttpRequest, order_id: int) -> HttpResponse:
    """Send the shopper to the order's checkout page, creating its payment if need be.

    The idempotency key is the order's: a double click, a retry after a lost answer or a
    "Try again" returns the same payment, never a second one. A paid or closed order is only
    shown.
    """
    order = get_object_or_404(
        visible_orders(request).select_related("product", "payment"), pk=order_id
    )
    if order.status != Order.Status.PENDING:
        return redirect("shop:order", order_id=order.pk)
    if order.payment is not None:
        if order.payment.status == Payment.Status.PENDING:
            return redirect(order.payment.checkout_url)
        return redirect("shop:order", order_id=order.pk)  # Settled; the receivers follow.
    product = order.product
    return_url = request.build_absolute_uri(reverse("shop:order-return", args=[order.pk]))
    try:
        payment = services.create_payment(
            amount=product.price,
            currency=product.currency,
            description=f"Order #{order.pk}: {product.name}",
            customer={"email": order.email, "name": ""} if order.email else None,
            metadata={"order_id": str(order.pk)},
            success_url=return_url,
            cancel_url=return_url,
            idempotency_key=f"example-shop-order-{order.pk}",
        )
    except LedgePayError as err:
        # The details are for the logs; the shopper gets a plain page without them.
        logger.warning("Payment for order %s could not start: %s", order.pk, err)
        return render(request, "shop/payment_unavailable.html", {"order": order}, status=503)
    with transaction.atomic():
        Order.objects.filter(pk=order.pk).update(payment=payment)
    return redirect(payment.checkout_url)


@require_GET
def order_detail(request: HttpRequest, order_id: int) -> HttpResponse:
    orders = visible_orders(request).select_related("product", "payment")
    return order_page(request, get_object_or_404(orders, pk=order_id))


@require_GET
def order_return(request: HttpRequest, order_id: int) -> HttpResponse:
    """Where LedgePay sends the shopper back. The webhook may not have arrived yet, so a
    payment still pending is asked of LedgePay: the page shows the order's true status."""
    orders = visible_orders(request).select_related("product", "payment")
    order = get_object_or_404(orders, pk=order_id)
    checking_failed = False
    if order.payment is not None and order.payment.status == Payment.Status.PENDING:
        try:
            services.sync_payment(order.payment)
        except LedgePayError as err:
            logger.warning("Could not check order %s with LedgePay: %s", order.pk, err)
            checking_failed = True
        order.refresh_from_db()
    return order_page(request, order, checking_failed=checking_failed)


def order_page(
    request: HttpRequest, order: Order, *, checking_failed: bool = False
) -> HttpResponse:
    # The payment is the truth; the order follows it through the signal receivers, which
    # may still be running (in the webhook's request, or in a task worker).
    status = order.status
    if order.payment is not None and order.payment.status in PAYMENT_TO_ORDER:
        status = PAYMENT_TO_ORDER[order.payment.status]
    context = {"order": order, "status": status, "checking_failed": checking_failed}
    return render(request, "shop/order_return.html", context)
