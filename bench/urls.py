"""The project's webhook view at /ledgepay/webhook/, and the bare baseline at /bare/."""

from __future__ import annotations

from django.urls import include, path

from bench.bare import bare_webhook

urlpatterns = [
    path("ledgepay/", include("django_ledgepay.urls")),
    path("bare/", bare_webhook, name="bench-bare"),
]
