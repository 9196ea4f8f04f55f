from __future__ import annotations

from django.urls import path

from django_ledgepay import views

app_name = "ledgepay"

urlpatterns = [
    path("webhook/", views.WebhookView.as_view(), name="webhook"),
]
