from __future__ import annotations

from django.urls import path

from shop import views

app_name = "shop"

urlpatterns = [
    path("", views.product_list, name="products"),
    path("buy/<int:product_id>/", views.buy, name="buy"),
    path("orders/<int:order_id>/", views.order_detail, name="order"),
    path("orders/<int:order_id>/pay/", views.pay, name="pay"),
    path("orders/<int:order_id>/return/", views.order_return, name="order-return"),
]
