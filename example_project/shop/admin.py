from __future__ import annotations

from django.contrib import admin

from shop.models import Order, Product


@admin.register(Product)
class ProductAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ("name", "price_display", "currency")


@admin.register(Order)
class OrderAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ("id", "product", "email", "user", "status", "payment", "created_at")
    list_filter = ("status",)
    list_select_related = ("product", "payment", "user")
    raw_id_fields = ("payment", "user")
