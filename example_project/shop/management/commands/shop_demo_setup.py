from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from shop.models import Product

PRODUCTS = [
    ("Blue mug", "Stoneware, 350 ml.", 1250, "EUR"),
    ("Tea towel", "Linen, printed with a map of Ghent.", 899, "EUR"),
    ("Matcha whisk", "Bamboo chasen, 100 prongs.", 2200, "JPY"),
]


class Command(BaseCommand):
    help = "Create the demo products and an admin user (admin / admin), once."

    def handle(self, *args: Any, **options: Any) -> None:
        for name, description, price, currency in PRODUCTS:
            Product.objects.get_or_create(
                name=name,
                defaults={"description": description, "price": price, "currency": currency},
            )
        user_model = get_user_model()
        if not user_model.objects.filter(username="admin").exists():
            user_model.objects.create_superuser("admin", "admin@example.com", "admin")
            self.stdout.write(self.style.SUCCESS("Created the admin user admin / admin."))
        self.stdout.write(self.style.SUCCESS(f"{Product.objects.count()} products ready."))
