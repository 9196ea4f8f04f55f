from django.conf import settings
from django.db import models
from django.urls import reverse


class Order(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending", "Waiting for payment"
        PAID = "paid", "Paid"
        FAILED = "failed", "Payment failed"
        CANCELED = "canceled", "Payment canceled"
        REFUNDED = "refunded", "Refunded"

    item = models.CharField(max_length=100)
    amount = models.PositiveIntegerField(help_text="In cents: 1250 is 12.50 EUR.")
    currency = models.CharField(max_length=3, default="EUR")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    # Who may see the order: a logged-in user, or the browser session that made it.
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    payment = models.OneToOneField(
        "django_ledgepay.Payment", null=True, blank=True, on_delete=models.PROTECT
    )
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self):
        return f"Order {self.pk}: {self.item}"

    def get_absolute_url(self):
        return reverse("orders:detail", args=[self.pk])

    @property
    def price(self):
        return f"{self.amount // 100}.{self.amount % 100:02d} {self.currency}"
