"""What a project calls to take payments and refunds; views, admin and commands use it too.

The façade over the flows, each in its own module: :mod:`django_ledgepay.payments`
(creating payments), :mod:`django_ledgepay.sync` (syncing), :mod:`django_ledgepay.refunds`
(refunding), and the mirror's general writer :mod:`django_ledgepay.mirror.orm`. Every
change to the local mirror locks the row, applies LedgePay's answer by the rules of
:mod:`django_ledgepay.mirror.rules` (a final status never changes again) and sends each
signal once, after commit.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from django.dispatch import Signal

from django_ledgepay.client import get_client
from django_ledgepay.delivery import SIGNALS
from django_ledgepay.mirror.orm import (
    RefusedNews,
    apply_payment,
    apply_payment_event,
    apply_refund,
)
from django_ledgepay.mirror.rules import (
    FIXED_FACTS,
    PAYMENT_FACTS,
    PAYMENT_TRANSITIONS,
    REFUND_TRANSITIONS,
)
from django_ledgepay.mirror.values import (
    IncompleteDataError,
    iso_z,
    payment_values,
    refund_values,
)
from django_ledgepay.models import MAX_AMOUNT
from django_ledgepay.payments import (
    MAX_IDEMPOTENCY_KEY_LENGTH,
    MAX_URL_LENGTH,
    create_payment,
)
from django_ledgepay.refunds import (
    IN_FLIGHT_POLL,
    IN_FLIGHT_WAIT,
    refund_payment,
    resolve_refund_requests,
    sending_lease,
)
from django_ledgepay.sync import (
    ONE_SECOND,
    PaymentPage,
    SyncResult,
    UnlistedSecond,
    payment_pages,
    sync_payment,
    sync_payments,
)

#: The signals of the payments' final statuses, as the module once named them.
PAYMENT_SIGNALS: Final[Mapping[str, Signal]] = {
    status: SIGNALS[name][0] for status, name in PAYMENT_TRANSITIONS.items()
}

__all__ = [
    "FIXED_FACTS",
    "IN_FLIGHT_POLL",
    "IN_FLIGHT_WAIT",
    "MAX_AMOUNT",
    "MAX_IDEMPOTENCY_KEY_LENGTH",
    "MAX_URL_LENGTH",
    "ONE_SECOND",
    "PAYMENT_FACTS",
    "PAYMENT_SIGNALS",
    "PAYMENT_TRANSITIONS",
    "REFUND_TRANSITIONS",
    "IncompleteDataError",
    "PaymentPage",
    "RefusedNews",
    "SyncResult",
    "UnlistedSecond",
    "apply_payment",
    "apply_payment_event",
    "apply_refund",
    "create_payment",
    "get_client",
    "iso_z",
    "payment_pages",
    "payment_values",
    "refund_payment",
    "refund_values",
    "resolve_refund_requests",
    "sending_lease",
    "sync_payment",
    "sync_payments",
]
