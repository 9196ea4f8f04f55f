"""Reading a snapshot of the sandbox back: what each thing in it must be to be restored."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django_ledgepay.sandbox.api import PAYMENT_STATUSES


class SnapshotError(ValueError):
    """A snapshot that cannot be restored: not of this format, or not of its shape."""


def integer(value: Any, what: str) -> int:
    """``value`` if it is an integer (not a bool); else :class:`SnapshotError` naming ``what``."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise SnapshotError(f"{what} is not an integer: {value!r}")
    return value


def check_payment(payment: Any) -> None:
    if not isinstance(payment, dict) or not isinstance(payment.get("id"), str):
        raise SnapshotError("a payment is not an object with a string id")
    if payment.get("status") not in PAYMENT_STATUSES:
        raise SnapshotError(f"payment {payment['id']} has no known status")
    if not isinstance(payment.get("created_at"), str):
        raise SnapshotError(f"payment {payment['id']} has no created_at")
    integer(payment.get("amount"), f"payment {payment['id']}'s amount")


def check_refund(refund: Any, payments: Mapping[str, Any]) -> None:
    if not isinstance(refund, dict) or not isinstance(refund.get("id"), str):
        raise SnapshotError("a refund is not an object with a string id")
    if refund.get("payment_id") not in payments:
        raise SnapshotError(f"refund {refund['id']} is of no payment in the file")
    if refund.get("status") not in ("pending", "succeeded", "failed"):
        raise SnapshotError(f"refund {refund['id']} has no known status")
    integer(refund.get("amount"), f"refund {refund['id']}'s amount")
