from __future__ import annotations

from django.conf import settings
from django.db import models

from django_ledgepay.currencies import format_amount
from django_ledgepay.models import Payment


class Product(models.Model):
    name = models.CharField(max_length=100)
    description = models.TextField(blank=True)
    price = models.PositiveIntegerField(help_text="In the currency's minor unit.")
    currency = models.CharField(max_length=3, default="EUR")

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def price_display(self) -> str:
        return format_amount(self.price, self.currency)


class Order(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending"
        PAID = "paid"
        FAILED = "failed"
        CANCELED = "canceled"

    product = models.ForeignKey(Product, on_delete=models.PROTECT, related_name="orders")
    email = models.EmailField(blank=True)
    # Who may see the order: this user, or the browser session that made it (the session
    # keeps the ids of its orders; see views.visible_orders).
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="shop_orders",
    )
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    payment = models.OneToOneField(
        Payment, on_delete=models.SET_NULL, null=True, blank=True, related_name="order"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"Order #{self.pk} ({self.product}, {self.status})"
