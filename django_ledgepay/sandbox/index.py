"""The list index of payments: a page of ``GET /payments`` in two binary searches and a slice,
whatever the sandbox holds."""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Mapping
from operator import itemgetter
from typing import Any

from django_ledgepay.sandbox.api import PAYMENT_STATUSES

#: An entry of the list index: a payment's ``created_at``, its creation sequence, its id.
#: Sorted, entries run oldest first; two of one second keep the order they were made in.
IndexEntry = tuple[str, int, str]

_created_at = itemgetter(0)


class PaymentIndex:
    """Every payment, and the payments of each status, sorted by (created_at, sequence).

    Not locked: its owner's lock guards it.
    """

    def __init__(self) -> None:
        self._order = itertools.count()
        #: Each payment's creation sequence, by id.
        self.sequence: dict[str, int] = {}
        self._all: list[IndexEntry] = []
        self._by_status: dict[str, list[IndexEntry]] = {s: [] for s in PAYMENT_STATUSES}

    def add(self, payment: Mapping[str, Any]) -> None:
        """Index a new payment, after those made before it."""
        payment_id = payment["id"]
        sequence = next(self._order)
        self.sequence[payment_id] = sequence
        entry = (payment["created_at"], sequence, payment_id)
        bisect.insort(self._all, entry)
        bisect.insort(self._by_status[payment["status"]], entry)

    def settle(self, payment: Mapping[str, Any], status: str) -> None:
        """Move a pending payment (its status not yet changed) to ``status``'s entries."""
        payment_id = payment["id"]
        entry = (payment["created_at"], self.sequence[payment_id], payment_id)
        pending = self._by_status["pending"]
        del pending[bisect.bisect_left(pending, entry)]
        bisect.insort(self._by_status[status], entry)

    def page(
        self, *, status: str | None, after: str | None, before: str | None, limit: int
    ) -> tuple[list[str], bool]:
        """The ids of the newest ``limit`` payments (of ``status``, if given) created after
        ``after`` and before ``before``, newest first; and whether older ones match too."""
        index = self._all if status is None else self._by_status[status]
        # Oldest first: [low, high) are the entries created after ``after`` and before
        # ``before``; the page is the newest ``limit`` of them.
        low = 0 if after is None else bisect.bisect_right(index, after, key=_created_at)
        high = (
            len(index)
            if before is None
            else bisect.bisect_left(index, before, key=_created_at, lo=low)
        )
        start = max(low, high - limit)
        return [entry[2] for entry in reversed(index[start:high])], start > low
