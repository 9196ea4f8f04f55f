"""LedgePay's behaviour in memory: its API (the endpoints docs/howto/sandbox.md lists)
without the HTTP.

:class:`LedgePayState` validates requests, keeps payments and refunds, replays idempotent
POSTs (with ``idempotency``), pages lists (with ``index``) and settles payments. The sandbox
server and ``testing.FakeLedgePay`` both serve it, so both behave alike.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from django_ledgepay.currencies import is_currency
from django_ledgepay.sandbox.api import (
    MAX_NESTING,
    PAYMENT_STATUSES,
    Answer,
    APIFailure,
    bearer_key,
    event_payload,
    failure_answer,
    is_http_url,
    iso,
    json_object,
    parse_time,
)
from django_ledgepay.sandbox.idempotency import IdempotencyRecords, keyed_request
from django_ledgepay.sandbox.index import IndexEntry, PaymentIndex
from django_ledgepay.sandbox.snapshots import SnapshotError, check_payment, check_refund

# Its public names, those defined in api, index and snapshots included.
__all__ = [
    "DEFAULT_LIMIT",
    "MAX_LIMIT",
    "MAX_NESTING",
    "PAYMENT_STATUSES",
    "REFUND_REASONS",
    "APIFailure",
    "Answer",
    "Driver",
    "EventListener",
    "IndexEntry",
    "LedgePayState",
    "SnapshotError",
    "event_payload",
    "is_http_url",
    "iso",
]

REFUND_REASONS = ("customer_request", "duplicate", "fraudulent", "other")
DEFAULT_LIMIT = 10
MAX_LIMIT = 100

EventListener = Callable[[str, dict[str, Any]], None]


class LedgePayState:
    """Payments, refunds and idempotency records, safe to use from several threads."""

    def __init__(
        self,
        *,
        checkout_base: str = "https://checkout.ledgepay.test",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.checkout_base = checkout_base.rstrip("/")
        self.clock = clock
        self.lock = threading.RLock()
        self.payments: dict[str, dict[str, Any]] = {}
        self.refunds: dict[str, dict[str, Any]] = {}
        self.listeners: list[EventListener] = []
        #: Called, with the lock held, after each change of what a snapshot holds.
        self.change_listeners: list[Callable[[], None]] = []
        self._idempotency = IdempotencyRecords()
        self._index = PaymentIndex()
        self._refunds_of: dict[str, list[str]] = {}
        # Each object's JSON since it last changed, so that a snapshot encodes only what
        # changed since the one before. Filled by the first snapshot: empty without one.
        self._encoded: dict[str, str] = {}

    # Requests

    def handle(
        self,
        method: str,
        path: str,
        query: Mapping[str, str],
        body: bytes,
        headers: Mapping[str, str],
    ) -> Answer:
        """Answer one API request; ``path`` is relative to ``/v1``.

        Header names match in any case, as HTTP says.
        """
        headers = {name.lower(): value for name, value in headers.items()}
        api_key = bearer_key(headers)
        if not api_key:
            return failure_answer(
                APIFailure(
                    401,
                    "No API key provided: send Authorization: Bearer <key>.",
                    error_type="authentication_error",
                )
            )
        try:
            if method == "POST":
                params = json_object(body)
                key = headers.get("idempotency-key") or None
                return self._idempotent(api_key, key, method, path, body, params)
            if method == "GET":
                return self._get(path, query)
            raise APIFailure(405, f"{method} is not allowed here.")
        except APIFailure as failure:
            return failure_answer(failure)

    def _idempotent(
        self,
        api_key: str,
        key: str | None,
        method: str,
        path: str,
        body: bytes,
        params: dict[str, Any],
    ) -> Answer:
        request = None if key is None else keyed_request(api_key, key, method, path, body)
        with self.lock:
            if request is not None:
                stored = self._idempotency.replay(request)
                if stored is not None:
                    return stored
            try:
                answer = self._post(path, params)
            except APIFailure as failure:
                answer = failure_answer(failure)
            if request is not None and answer.status < 500:
                self._idempotency.keep(request, answer)
                self._changed()
            return answer

    def _post(self, path: str, params: dict[str, Any]) -> Answer:
        if path == "/payments":
            return Answer(201, self.create_payment(params))
        if path == "/refunds":
            return Answer(201, self.create_refund(params))
        raise APIFailure(404, f"No such endpoint: POST {path}.")

    def _get(self, path: str, query: Mapping[str, str]) -> Answer:
        if path == "/payments":
            return Answer(200, self.list_payments(query))
        if path.startswith("/payments/"):
            return Answer(200, self.retrieve_payment(path.removeprefix("/payments/")))
        raise APIFailure(404, f"No such endpoint: GET {path}.")

    # Payments

    def create_payment(self, params: Mapping[str, Any]) -> dict[str, Any]:
        amount = params.get("amount")
        if not isinstance(amount, int) or isinstance(amount, bool) or amount <= 0:
            raise APIFailure(400, "amount must be a positive integer.", param="amount")
        if not is_currency(params.get("currency")):
            raise APIFailure(400, "currency must be an ISO 4217 code.", param="currency")
        for name in ("success_url", "cancel_url"):
            if not is_http_url(params.get(name)):
                raise APIFailure(400, f"{name} must be an absolute http(s) URL.", param=name)
        description = params.get("description", "")
        if not isinstance(description, str):
            raise APIFailure(400, "description must be a string.", param="description")
        customer = params.get("customer") or {}
        if not isinstance(customer, dict) or not all(
            isinstance(customer.get(key, ""), str) for key in ("email", "name")
        ):
            raise APIFailure(400, "customer must hold an email and a name.", param="customer")
        metadata = params.get("metadata") or {}
        if not isinstance(metadata, dict):
            raise APIFailure(400, "metadata must be an object.", param="metadata")
        payment_id = f"pay_{secrets.token_hex(8)}"
        payment = {
            "id": payment_id,
            "status": "pending",
            "amount": amount,
            "currency": params["currency"],
            "description": description,
            "customer": {"email": customer.get("email", ""), "name": customer.get("name", "")},
            "metadata": metadata,
            "checkout_url": f"{self.checkout_base}/{payment_id}",
            "success_url": params["success_url"],
            "cancel_url": params["cancel_url"],
            "created_at": iso(self.clock()),
            "completed_at": None,
        }
        with self.lock:
            self._add_payment(payment)
            self._changed()
        return dict(payment)

    def _add_payment(self, payment: dict[str, Any]) -> None:
        # The caller holds the lock.
        self.payments[payment["id"]] = payment
        self._index.add(payment)

    def retrieve_payment(self, payment_id: str) -> dict[str, Any]:
        with self.lock:
            payment = self.payments.get(payment_id)
            if payment is None:
                raise APIFailure(404, f"No such payment: {payment_id}.", param="id")
            return dict(payment)

    def list_payments(self, query: Mapping[str, str]) -> dict[str, Any]:
        try:
            limit = int(query.get("limit", DEFAULT_LIMIT))
        except ValueError as err:
            raise APIFailure(400, "limit must be an integer.", param="limit") from err
        if limit < 1:
            raise APIFailure(400, "limit must be at least 1.", param="limit")
        limit = min(limit, MAX_LIMIT)
        status = query.get("status")
        if status is not None and status not in PAYMENT_STATUSES:
            raise APIFailure(400, f"status must be one of {PAYMENT_STATUSES}.", param="status")
        after = query.get("created_after")
        before = query.get("created_before")
        after = parse_time(after, "created_after") if after else None
        before = parse_time(before, "created_before") if before else None
        with self.lock:
            ids, has_more = self._index.page(
                status=status, after=after, before=before, limit=limit
            )
            items = [dict(self.payments[payment_id]) for payment_id in ids]
        return {"data": items, "has_more": has_more}

    def settle(self, payment_id: str, status: str) -> dict[str, Any]:
        """Move a pending payment to ``status`` (a shopper pressed Pay, Fail or Cancel)."""
        if status not in PAYMENT_STATUSES[1:]:
            raise ValueError(f"Cannot settle a payment as {status!r}.")
        with self.lock:
            payment = self.payments.get(payment_id)
            if payment is None:
                raise APIFailure(404, f"No such payment: {payment_id}.")
            if payment["status"] != "pending":
                return dict(payment)
            self._index.settle(payment, status)
            payment["status"] = status
            payment["completed_at"] = iso(self.clock())
            self._encoded.pop(payment_id, None)
            data = dict(payment)
            self._changed()
            self._emit(f"payment.{status}", data)
        return data

    # Refunds

    def create_refund(self, params: Mapping[str, Any]) -> dict[str, Any]:
        payment_id = params.get("payment_id")
        if not isinstance(payment_id, str):
            raise APIFailure(400, "payment_id is required.", param="payment_id")
        reason = params.get("reason", "customer_request")
        if reason not in REFUND_REASONS:
            raise APIFailure(400, f"reason must be one of {REFUND_REASONS}.", param="reason")
        amount = params.get("amount")
        with self.lock:
            payment = self.payments.get(payment_id)
            if payment is None:
                raise APIFailure(404, f"No such payment: {payment_id}.", param="payment_id")
            if payment["status"] != "succeeded":
                raise APIFailure(
                    400, "Only a succeeded payment can be refunded.", param="payment_id"
                )
            remaining = payment["amount"] - self.refunded(payment_id)
            if amount is None:
                amount = remaining
            if not isinstance(amount, int) or isinstance(amount, bool) or amount <= 0:
                raise APIFailure(400, "amount must be a positive integer.", param="amount")
            if amount > remaining:
                raise APIFailure(
                    400, f"amount exceeds what is left to refund ({remaining}).", param="amount"
                )
            refund = {
                "id": f"re_{secrets.token_hex(8)}",
                "payment_id": payment_id,
                "amount": amount,
                "currency": payment["currency"],
                "reason": reason,
                "status": "pending",
                "created_at": iso(self.clock()),
            }
            self._add_refund(refund)
            data = dict(refund)
            self._changed()
            self._emit("refund.created", data)
        return data

    def _add_refund(self, refund: dict[str, Any]) -> None:
        # The caller holds the lock.
        self.refunds[refund["id"]] = refund
        self._refunds_of.setdefault(refund["payment_id"], []).append(refund["id"])

    def refunded(self, payment_id: str) -> int:
        with self.lock:
            refunds = (self.refunds[key] for key in self._refunds_of.get(payment_id, ()))
            return sum(r["amount"] for r in refunds if r["status"] != "failed")

    def complete_refund(self, refund_id: str, status: str = "succeeded") -> dict[str, Any]:
        """Move a pending refund to ``succeeded`` or ``failed``."""
        if status not in ("succeeded", "failed"):
            raise ValueError(f"Cannot complete a refund as {status!r}.")
        with self.lock:
            refund = self.refunds[refund_id]
            if refund["status"] != "pending":
                return dict(refund)
            refund["status"] = status
            self._encoded.pop(refund_id, None)
            data = dict(refund)
            self._changed()
            self._emit(f"refund.{status}", data)
        return data

    # Snapshots

    def snapshot(self) -> str:
        """Everything LedgePay knows, as a JSON object: payments in the order they were
        made, refunds, idempotency records. :meth:`restore` takes it back, decoded.

        Taken under the lock. An object unchanged since the last snapshot is not encoded
        again: nothing changes an object but :meth:`settle` and :meth:`complete_refund`
        (its nested values, a payment's metadata, never change).
        """
        with self.lock:
            payments = ",".join(self._encode(p) for p in self.payments.values())
            refunds = ",".join(self._encode(r) for r in self.refunds.values())
            records = self._idempotency.snapshot()
        return f'{{"payments":[{payments}],"refunds":[{refunds}],"idempotency":[{records}]}}'

    def _encode(self, item: dict[str, Any]) -> str:
        # The caller holds the lock. Ids of payments and refunds never collide (pay_, re_).
        encoded = self._encoded.get(item["id"])
        if encoded is None:
            encoded = self._encoded[item["id"]] = json.dumps(item, separators=(",", ":"))
        return encoded

    def restore(self, snapshot: Mapping[str, Any]) -> None:
        """Replace the state with a :meth:`snapshot`'s; :class:`SnapshotError` if it is not
        one (the state is then left as it was)."""
        fresh = LedgePayState(checkout_base=self.checkout_base, clock=self.clock)
        try:
            for payment in snapshot["payments"]:
                check_payment(payment)
                if payment["id"] in fresh.payments:
                    raise SnapshotError(f"payment {payment['id']} appears twice")
                fresh._add_payment(dict(payment))
            for refund in snapshot["refunds"]:
                check_refund(refund, fresh.payments)
                if refund["id"] in fresh.refunds:
                    raise SnapshotError(f"refund {refund['id']} appears twice")
                fresh._add_refund(dict(refund))
            fresh._idempotency = IdempotencyRecords.restore(snapshot["idempotency"])
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            if isinstance(err, SnapshotError):
                raise
            raise SnapshotError(f"{type(err).__name__}: {err}") from err
        with self.lock:
            self.payments = fresh.payments
            self.refunds = fresh.refunds
            self._idempotency = fresh._idempotency
            self._index = fresh._index
            self._refunds_of = fresh._refunds_of
            self._encoded = fresh._encoded

    def _changed(self) -> None:
        # The caller holds the lock.
        for listener in list(self.change_listeners):
            listener()

    # Events

    def _emit(self, event_type: str, data: dict[str, Any]) -> None:
        """Tell the listeners; the caller holds the lock, so they hear of changes in the
        order the changes were made (a refund never before its payment's success).

        A listener may take locks of its own, but none that is held elsewhere while
        waiting for this one.
        """
        for listener in list(self.listeners):
            listener(event_type, data)


class Driver:
    """What a test or a person can do to LedgePay's state: settle payments, finish refunds.

    Mixed into the sandbox and ``testing.FakeLedgePay``, which both hold a ``state``.
    """

    state: LedgePayState

    @property
    def payments(self) -> dict[str, dict[str, Any]]:
        """A copy of every payment, by id."""
        with self.state.lock:
            return {key: dict(value) for key, value in self.state.payments.items()}

    @property
    def refunds(self) -> dict[str, dict[str, Any]]:
        """A copy of every refund, by id."""
        with self.state.lock:
            return {key: dict(value) for key, value in self.state.refunds.items()}

    def pay(self, payment_id: str) -> dict[str, Any]:
        """The shopper paid: the payment succeeds and ``payment.succeeded`` is sent."""
        return self.state.settle(payment_id, "succeeded")

    def fail(self, payment_id: str) -> dict[str, Any]:
        return self.state.settle(payment_id, "failed")

    def cancel(self, payment_id: str) -> dict[str, Any]:
        return self.state.settle(payment_id, "canceled")

    def complete_refund(self, refund_id: str, status: str = "succeeded") -> dict[str, Any]:
        """A pending refund becomes ``succeeded`` (or ``failed``) and its event is sent."""
        return self.state.complete_refund(refund_id, status)
