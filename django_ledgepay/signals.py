"""Signals sent when a local mirror record changes, after the transaction commits.

``sender`` is the model class. ``event`` is the :class:`~django_ledgepay.models.WebhookEvent`
that brought the change, or None when it came from a sync, an admin action or a refund call.
"""

from __future__ import annotations

from django.dispatch import Signal

#: Sent when a payment becomes ``succeeded``. Kwargs: ``payment``, ``event``.
payment_succeeded = Signal()

#: Sent when a payment becomes ``failed``. Kwargs: ``payment``, ``event``.
payment_failed = Signal()

#: Sent when a payment becomes ``canceled``. Kwargs: ``payment``, ``event``.
payment_canceled = Signal()

#: Sent when a refund is first recorded. Kwargs: ``refund``, ``payment``, ``event``.
refund_created = Signal()

#: Sent when a refund becomes ``succeeded``. Kwargs: ``refund``, ``payment``, ``event``.
refund_succeeded = Signal()

#: Sent when a refund becomes ``failed``. Kwargs: ``refund``, ``payment``, ``event``.
refund_failed = Signal()
