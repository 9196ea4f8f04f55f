"""The admin: a read-only mirror of LedgePay, with refunds for staff who may issue them.

Nothing here edits a payment, refund or event by hand: LedgePay is the source of truth.
Refunds and syncs go through :mod:`django_ledgepay.services`, never the client. Importing
this package (Django's autodiscovery does) registers the four model admins.
"""

from __future__ import annotations

from django_ledgepay.admin.display import (
    AmountMixin,
    delivery_state,
    nowrap,
    pretty_json,
)
from django_ledgepay.admin.events import WebhookEventAdmin
from django_ledgepay.admin.filters import (
    CurrencyListFilter,
    DeliveryFilter,
    UnresolvedRefundFilter,
)
from django_ledgepay.admin.inlines import (
    READ_ONLY_INLINE,
    ReactionInline,
    ReadOnlyInline,
    RefundInline,
    RefundRequestInline,
    TransitionInline,
)
from django_ledgepay.admin.payments import PaymentAdmin, refunded_total
from django_ledgepay.admin.permissions import ACTION_LIMIT, ReadOnlyMixin
from django_ledgepay.admin.refunding import RefundingAdmin
from django_ledgepay.admin.refunds import RefundAdmin
from django_ledgepay.admin.transitions import TransitionAdmin

__all__ = [
    "ACTION_LIMIT",
    "READ_ONLY_INLINE",
    "AmountMixin",
    "CurrencyListFilter",
    "DeliveryFilter",
    "PaymentAdmin",
    "ReactionInline",
    "ReadOnlyInline",
    "ReadOnlyMixin",
    "RefundAdmin",
    "RefundInline",
    "RefundRequestInline",
    "RefundingAdmin",
    "TransitionAdmin",
    "TransitionInline",
    "UnresolvedRefundFilter",
    "WebhookEventAdmin",
    "delivery_state",
    "nowrap",
    "pretty_json",
    "refunded_total",
]
