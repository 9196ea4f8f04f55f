import logging

from django.db.models import Q
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from django_ledgepay import services
from django_ledgepay.exceptions import LedgePayError
from django_ledgepay.models import Payment

from .models import Order

logger = logging.getLogger(__name__)


def my_orders(request):
    """The visitor's orders: those made in this browser session, and a logged-in user's."""
    mine = Q(pk__in=request.session.get("order_ids", []))
    if request.user.is_authenticated:
        mine |= Q(user=request.user)
    return Order.objects.filter(mine).select_related("payment")


@require_GET
def home(request):
    return render(request, "orders/home.html", {"orders": my_orders(request)})


@require_POST
def order_create(request):
    order = Order.objects.create(
        item="Blue mug",
        amount=1250,
        currency="EUR",
        user=request.user if request.user.is_authenticated else None,
    )
    request.session["order_ids"] = [*request.session.get("order_ids", []), order.pk]
    return redirect(order)


@require_GET
def order_detail(request, pk):
    order = get_object_or_404(my_orders(request), pk=pk)
    return render(request, "orders/order_detail.html", {"order": order})


@require_POST
def pay(request, pk):
    order = get_object_or_404(my_orders(request), pk=pk)
    if order.status != Order.Status.PENDING:
        return redirect(order)  # Paid, failed or canceled already.
    if order.payment is None:
        return_url = request.build_absolute_uri(reverse("orders:return", args=[order.pk]))
        try:
            payment = services.create_payment(
                amount=order.amount,
                currency=order.currency,
                description=str(order),
                metadata={"order_id": str(order.pk)},
                success_url=return_url,
                cancel_url=return_url,
                # A second click, or a retry after a lost answer, gets the same payment.
                idempotency_key=f"order-{order.pk}",
            )
        except LedgePayError:
            logger.exception("The payment of order %s could not start.", order.pk)
            context = {"order": order}
            return render(request, "orders/payment_unavailable.html", context, status=503)
        order.payment = payment
        order.save(update_fields=["payment"])
    return redirect(order.payment.checkout_url)


@require_GET
def payment_return(request, pk):
    """LedgePay sends the shopper back here. Its webhook may not have arrived yet, so a
    payment still pending is asked of LedgePay; the receivers then update the order."""
    order = get_object_or_404(my_orders(request), pk=pk)
    if order.payment is not None and order.payment.status == Payment.Status.PENDING:
        try:
            services.sync_payment(order.payment)
        except LedgePayError:
            logger.warning("Order %s: LedgePay could not be asked; the webhook will tell.", pk)
    return redirect(order)
