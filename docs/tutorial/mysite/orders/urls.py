from django.urls import path

from . import views

app_name = "orders"

urlpatterns = [
    path("", views.home, name="home"),
    path("orders/", views.order_create, name="create"),
    path("orders/<int:pk>/", views.order_detail, name="detail"),
    path("orders/<int:pk>/pay/", views.pay, name="pay"),
    path("orders/<int:pk>/return/", views.payment_return, name="return"),
]
