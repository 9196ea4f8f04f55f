"""Signals sent when a local mirror record changes, after the transaction commits.

``sender`` is the model class. ``event`` is the :class:`~django_ledgepay.models.WebhookEvent`
that brought the change, or None when it came from a sync, an admin action or a refund call.
``transition`` is the :class:`~django_ledgepay.models.Transition` that records the change:
receivers run at least once each, and ``transition.pk`` is a stable key for a receiver that
calls another system (see :mod:`django_ledgepay.reactions`).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Hashable
from typing import Any

from django import dispatch

Receiver = Callable[..., Any]


def _identity(target: object) -> Hashable:
    """What identifies a receiver or a sender, as Django's dispatcher tells them apart."""
    if hasattr(target, "__func__"):
        return (id(target.__self__), id(target.__func__))  # type: ignore[attr-defined]
    return id(target)


def receiver_name(receiver: Receiver, dispatch_uid: Hashable | None = None) -> str:
    """A name for ``receiver`` that is the same in every process: its ``dispatch_uid`` when
    it has one, else where it is defined (``module.qualname``)."""
    if dispatch_uid is not None:
        return str(dispatch_uid)
    target = getattr(receiver, "__func__", receiver)
    if not hasattr(target, "__qualname__"):
        target = type(target)  # A callable instance: named by its class.
    return f"{target.__module__}.{target.__qualname__}"


class Signal(dispatch.Signal):
    """A Django signal whose receivers django-ledgepay can run one at a time.

    ``connect()`` and ``disconnect()`` behave as Django's; each connection is also kept here,
    by name, so that each receiver's success is recorded and never run again. Only Django's
    public ``connect``/``disconnect`` are overridden: no private dispatcher state is read.
    """

    def __init__(self) -> None:
        super().__init__()
        #: (receiver identity or dispatch_uid, sender identity) -> (name, reference, sender)
        self._ledgepay_receivers: dict[
            tuple[Hashable, Hashable], tuple[str, Callable[[], Receiver | None], Any]
        ] = {}

    def connect(
        self,
        receiver: Receiver,
        sender: object | None = None,
        weak: bool = True,
        dispatch_uid: Hashable | None = None,
    ) -> None:
        super().connect(receiver, sender=sender, weak=weak, dispatch_uid=dispatch_uid)
        key = (
            dispatch_uid if dispatch_uid is not None else _identity(receiver),
            _identity(sender),
        )
        if key in self._ledgepay_receivers:
            return  # Connected already: Django keeps the first connection too.
        reference: Callable[[], Receiver | None]
        if not weak:
            reference = _strong(receiver)
        elif hasattr(receiver, "__self__") and hasattr(receiver, "__func__"):
            reference = weakref.WeakMethod(receiver)
        else:
            reference = weakref.ref(receiver)
        name = receiver_name(receiver, dispatch_uid)
        taken = {entry[0] for entry in self._ledgepay_receivers.values()}
        unique, number = name, 1
        while unique in taken:  # Two receivers defined in one place: number them.
            number += 1
            unique = f"{name}#{number}"
        self._ledgepay_receivers[key] = (unique, reference, sender)

    def disconnect(
        self,
        receiver: Receiver | None = None,
        sender: object | None = None,
        dispatch_uid: Hashable | None = None,
    ) -> bool:
        disconnected = super().disconnect(receiver, sender=sender, dispatch_uid=dispatch_uid)
        key = (
            dispatch_uid if dispatch_uid is not None else _identity(receiver),
            _identity(sender),
        )
        self._ledgepay_receivers.pop(key, None)
        return disconnected

    def named_receivers(self, sender: object) -> list[tuple[str, Receiver]]:
        """The live receivers for ``sender``, with their names, in the order connected."""
        live = []
        for key, (name, reference, for_sender) in list(self._ledgepay_receivers.items()):
            receiver = reference()
            if receiver is None:
                del self._ledgepay_receivers[key]  # Garbage-collected: gone from Django too.
                continue
            if for_sender is None or _identity(for_sender) == _identity(sender):
                live.append((name, receiver))
        return live


def _strong(receiver: Receiver) -> Callable[[], Receiver]:
    return lambda: receiver


#: Sent when a payment becomes ``succeeded``. Kwargs: ``payment``, ``event``, ``transition``.
payment_succeeded = Signal()

#: Sent when a payment becomes ``failed``. Kwargs: ``payment``, ``event``, ``transition``.
payment_failed = Signal()

#: Sent when a payment becomes ``canceled``. Kwargs: ``payment``, ``event``, ``transition``.
payment_canceled = Signal()

#: Sent when a refund is first recorded. Kwargs: ``refund``, ``payment``, ``event``,
#: ``transition``.
refund_created = Signal()

#: Sent when a refund becomes ``succeeded``. Kwargs: ``refund``, ``payment``, ``event``,
#: ``transition``.
refund_succeeded = Signal()

#: Sent when a refund becomes ``failed``. Kwargs: ``refund``, ``payment``, ``event``,
#: ``transition``.
refund_failed = Signal()
