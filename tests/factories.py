"""Builders for test data: LedgePay API objects (dicts) and local mirror rows."""

from __future__ import annotations

import itertools
from typing import Any

from django_ledgepay.models import Payment, Refund

_ids = itertools.count(1)


def next_id(prefix: str) -> str:
    return f"{prefix}_{next(_ids):010d}"


def payment_data(**overrides: Any) -> dict[str, Any]:
    """A LedgePay payment object as the API returns it."""
    ledgepay_id = overrides.pop("id", None) or next_id("pay")
    data: dict[str, Any] = {
        "id": ledgepay_id,
        "status": "pending",
        "amount": 5000,
        "currency": "EUR",
        "description": "Order #12345",
        "customer": {"email": "customer@example.com", "name": "John Doe"},
        "metadata": {"order_id": "12345"},
        "checkout_url": f"https://checkout.ledgepay.com/{ledgepay_id}",
        "created_at": "2024-01-15T10:30:00Z",
        "completed_at": None,
    }
    data.update(overrides)
    return data


def refund_data(payment_id: str, **overrides: Any) -> dict[str, Any]:
    """A LedgePay refund object as the API returns it."""
    data: dict[str, Any] = {
        "id": overrides.pop("id", None) or next_id("re"),
        "payment_id": payment_id,
        "amount": 2500,
        "currency": "EUR",
        "reason": "customer_request",
        "status": "pending",
        "created_at": "2024-01-15T11:00:00Z",
    }
    data.update(overrides)
    return data


def make_payment(**fields: Any) -> Payment:
    """A local Payment row (succeeded, 50.00 EUR unless told otherwise)."""
    defaults: dict[str, Any] = {
        "ledgepay_id": next_id("pay"),
        "status": Payment.Status.SUCCEEDED,
        "amount": 5000,
        "currency": "EUR",
        "description": "Order #12345",
        "customer_email": "customer@example.com",
        "customer_name": "John Doe",
        "metadata": {"order_id": "12345"},
    }
    defaults.update(fields)
    return Payment.objects.create(**defaults)


def make_refund(payment: Payment, **fields: Any) -> Refund:
    """A local Refund row for ``payment`` (succeeded, 25.00 unless told otherwise)."""
    defaults: dict[str, Any] = {
        "ledgepay_id": next_id("re"),
        "payment": payment,
        "amount": 2500,
        "currency": payment.currency,
        "status": Refund.Status.SUCCEEDED,
    }
    defaults.update(fields)
    return Refund.objects.create(**defaults)
