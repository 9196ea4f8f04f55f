"""The soak project's URLs: the webhook view at /ledgepay/webhook/."""

from __future__ import annotations

from django.urls import include, path

urlpatterns = [path("ledgepay/", include("django_ledgepay.urls"))]
