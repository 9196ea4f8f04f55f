"""The project's webhook view at /ledgepay/webhook/, and the baselines at /bare/<path>/.

With ``BENCH_RECEIVER=1`` in the environment (``bench/run.py`` sets it for the ``receiver``
path), :func:`bench.bare.receipt_receiver` is connected to ``payment_succeeded``.
"""

from __future__ import annotations

import os

from django.urls import include, path

from bench.bare import bare_webhook, receipt_receiver
from django_ledgepay.models import Payment
from django_ledgepay.signals import payment_succeeded

RECEIVER_UID = "bench.receipt"

if os.environ.get("BENCH_RECEIVER") == "1":
    payment_succeeded.connect(receipt_receiver, sender=Payment, dispatch_uid=RECEIVER_UID)

urlpatterns = [
    path("ledgepay/", include("django_ledgepay.urls")),
    path("bare/<slug:path>/", bare_webhook, name="bench-bare"),
]
