from django.contrib import admin

from .models import Order


@admin.register(Order)
class OrderAdmin(admin.ModelAdmin):
    list_display = ("id", "item", "price", "status", "user", "payment", "created_at")
    list_filter = ("status",)
    raw_id_fields = ("user", "payment")
