"""LedgePay's behaviour in memory: the API of LEDGEPAY_API.md without the HTTP.

:class:`LedgePayState` validates requests, keeps payments and refunds, replays idempotent
POSTs, pages lists and settles payments. The sandbox server and ``testing.FakeLedgePay``
both serve it, so both behave alike.
"""

from __future__ import annotations

import bisect
import datetime
import hashlib
import itertools
import json
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any
from urllib.parse import urlsplit

from django_ledgepay.currencies import is_currency

PAYMENT_STATUSES = ("pending", "succeeded", "failed", "canceled")
REFUND_REASONS = ("customer_request", "duplicate", "fraudulent", "other")
DEFAULT_LIMIT = 10
MAX_LIMIT = 100
#: How deep a request body may nest. Deeper bodies are refused: one that can barely be read
#: could fail later, when its payment is written out in an answer or a webhook.
MAX_NESTING = 100

EventListener = Callable[[str, dict[str, Any]], None]
#: An entry of the list index: a payment's ``created_at``, its creation sequence, its id.
#: Sorted, entries run oldest first; two of one second keep the order they were made in.
IndexEntry = tuple[str, int, str]

_created_at = itemgetter(0)


class SnapshotError(ValueError):
    """A snapshot that cannot be restored: not of this format, or not of its shape."""


class APIFailure(Exception):
    """An error answer in LedgePay's shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        error_type: str = "invalid_request_error",
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type
        self.param = param

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"type": self.error_type, "message": self.message}
        if self.param is not None:
            error["param"] = self.param
        return {"error": error}


@dataclass
class Answer:
    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)

    def json(self) -> str:
        return json.dumps(self.body)


def iso(moment: float) -> str:
    """``moment`` (Unix seconds) as LedgePay writes times: UTC, whole seconds, ``Z``.

    The year always has four digits, so these strings sort as the times do.
    """
    when = datetime.datetime.fromtimestamp(int(moment), datetime.timezone.utc)
    return when.replace(tzinfo=None).isoformat(timespec="seconds") + "Z"


def _parse_time(value: str, param: str) -> str:
    text = value.strip().replace("Z", "+00:00")
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError as err:
        raise APIFailure(400, f"{param} is not an ISO 8601 time.", param=param) from err
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    try:
        return iso(moment.timestamp())
    except (OverflowError, OSError, ValueError) as err:
        # A time near year 1 or 9999 whose offset takes it out of datetime's range in UTC.
        raise APIFailure(
            400, f"{param} must lie between the years 1 and 9999 in UTC.", param=param
        ) from err


def is_http_url(value: object) -> bool:
    """Whether ``value`` is an absolute http(s) URL that can go in a Location header."""
    if not isinstance(value, str):
        return False
    # Control characters and whitespace (isprintable() lets only the ASCII space through)
    # would break the checkout's redirect, or add headers to it.
    if not value.isprintable() or " " in value:
        return False
    try:
        parts = urlsplit(value)
    except ValueError:
        # An unclosed IPv6 bracket: "http://[::1".
        return False
    return parts.scheme in {"http", "https"} and bool(parts.netloc)


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
        # By (a digest of the API key, the Idempotency-Key): the request's fingerprint and
        # the first answer. The key itself is never kept, so a snapshot never holds it.
        self._idempotency: dict[tuple[str, str], tuple[str, Answer]] = {}
        self._order = itertools.count()
        self._sequence: dict[str, int] = {}
        # The list index: every payment, and the payments of each status, sorted by
        # (created_at, sequence), so that a page is two binary searches and a slice.
        self._index: list[IndexEntry] = []
        self._index_by_status: dict[str, list[IndexEntry]] = {s: [] for s in PAYMENT_STATUSES}
        self._refunds_of: dict[str, list[str]] = {}
        # Each object's JSON since it last changed, so that a snapshot encodes only what
        # changed since the one before. Filled by the first snapshot: empty without one.
        self._encoded: dict[str, str] = {}
        self._encoded_records: dict[tuple[str, str], str] = {}

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
        api_key = _bearer(headers)
        if not api_key:
            return _failure(
                APIFailure(
                    401,
                    "No API key provided: send Authorization: Bearer <key>.",
                    error_type="authentication_error",
                )
            )
        try:
            if method == "POST":
                params = _json_object(body)
                key = headers.get("idempotency-key") or None
                return self._idempotent(api_key, key, method, path, body, params)
            if method == "GET":
                return self._get(path, query)
            raise APIFailure(405, f"{method} is not allowed here.")
        except APIFailure as failure:
            return _failure(failure)

    def _idempotent(
        self,
        api_key: str,
        key: str | None,
        method: str,
        path: str,
        body: bytes,
        params: dict[str, Any],
    ) -> Answer:
        if key is not None and not 0 < len(key) <= 255:
            raise APIFailure(400, "Idempotency-Key must be 1 to 255 characters.")
        fingerprint = hashlib.sha256(f"{method} {path} ".encode() + body).hexdigest()
        owner = hashlib.sha256(api_key.encode()).hexdigest()
        with self.lock:
            if key is not None:
                stored = self._idempotency.get((owner, key))
                if stored is not None:
                    if stored[0] != fingerprint:
                        raise APIFailure(
                            400,
                            "This Idempotency-Key was used with another request.",
                            error_type="idempotency_error",
                        )
                    return stored[1]
            try:
                answer = self._post(path, params)
            except APIFailure as failure:
                answer = _failure(failure)
            if key is not None and answer.status < 500:
                self._idempotency[(owner, key)] = (fingerprint, answer)
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
        payment_id = payment["id"]
        sequence = next(self._order)
        self.payments[payment_id] = payment
        self._sequence[payment_id] = sequence
        entry = (payment["created_at"], sequence, payment_id)
        bisect.insort(self._index, entry)
        bisect.insort(self._index_by_status[payment["status"]], entry)

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
        after = _parse_time(after, "created_after") if after else None
        before = _parse_time(before, "created_before") if before else None
        with self.lock:
            index = self._index if status is None else self._index_by_status[status]
            # Oldest first: [low, high) are the entries created after ``after`` and before
            # ``before``; the page is the newest ``limit`` of them.
            low = 0 if after is None else bisect.bisect_right(index, after, key=_created_at)
            high = (
                len(index)
                if before is None
                else bisect.bisect_left(index, before, key=_created_at, lo=low)
            )
            start = max(low, high - limit)
            items = [dict(self.payments[entry[2]]) for entry in reversed(index[start:high])]
        return {"data": items, "has_more": start > low}

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
            entry = (payment["created_at"], self._sequence[payment_id], payment_id)
            pending = self._index_by_status["pending"]
            del pending[bisect.bisect_left(pending, entry)]
            bisect.insort(self._index_by_status[status], entry)
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
            records = ",".join(self._encode_record(ident) for ident in self._idempotency)
        return f'{{"payments":[{payments}],"refunds":[{refunds}],"idempotency":[{records}]}}'

    def _encode(self, item: dict[str, Any]) -> str:
        # The caller holds the lock. Ids of payments and refunds never collide (pay_, re_).
        encoded = self._encoded.get(item["id"])
        if encoded is None:
            encoded = self._encoded[item["id"]] = json.dumps(item, separators=(",", ":"))
        return encoded

    def _encode_record(self, ident: tuple[str, str]) -> str:
        # The caller holds the lock. A record never changes once made.
        encoded = self._encoded_records.get(ident)
        if encoded is None:
            fingerprint, answer = self._idempotency[ident]
            record = [*ident, fingerprint, answer.status, answer.body, answer.headers]
            encoded = self._encoded_records[ident] = json.dumps(record, separators=(",", ":"))
        return encoded

    def restore(self, snapshot: Mapping[str, Any]) -> None:
        """Replace the state with a :meth:`snapshot`'s; :class:`SnapshotError` if it is not
        one (the state is then left as it was)."""
        fresh = LedgePayState(checkout_base=self.checkout_base, clock=self.clock)
        try:
            for payment in snapshot["payments"]:
                _check_payment(payment)
                if payment["id"] in fresh.payments:
                    raise SnapshotError(f"payment {payment['id']} appears twice")
                fresh._add_payment(dict(payment))
            for refund in snapshot["refunds"]:
                _check_refund(refund, fresh.payments)
                if refund["id"] in fresh.refunds:
                    raise SnapshotError(f"refund {refund['id']} appears twice")
                fresh._add_refund(dict(refund))
            for owner, key, fingerprint, status, body, headers in snapshot["idempotency"]:
                if not all(isinstance(value, str) for value in (owner, key, fingerprint)):
                    raise SnapshotError("an idempotency record is not of strings")
                answer = Answer(_int(status, "an idempotency record's status"), body)
                answer.headers.update(headers)
                fresh._idempotency[(owner, key)] = (fingerprint, answer)
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            if isinstance(err, SnapshotError):
                raise
            raise SnapshotError(f"{type(err).__name__}: {err}") from err
        with self.lock:
            self.payments = fresh.payments
            self.refunds = fresh.refunds
            self._idempotency = fresh._idempotency
            self._order = fresh._order
            self._sequence = fresh._sequence
            self._index = fresh._index
            self._index_by_status = fresh._index_by_status
            self._refunds_of = fresh._refunds_of
            self._encoded = fresh._encoded
            self._encoded_records = fresh._encoded_records

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


def event_payload(
    event_type: str, data: Mapping[str, Any], *, clock: float | None = None
) -> dict[str, Any]:
    """A webhook body as LedgePay sends it."""
    return {
        "event": event_type,
        "timestamp": iso(time.time() if clock is None else clock),
        "data": dict(data),
    }


def _bearer(headers: Mapping[str, str]) -> str:
    """The API key of an ``Authorization: Bearer`` header; ``headers`` has lower-case names."""
    value = headers.get("authorization") or ""
    scheme, _, key = value.partition(" ")
    return key.strip() if scheme.lower() == "bearer" else ""


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        params = json.loads(body or b"{}")
    except (ValueError, UnicodeDecodeError) as err:
        raise APIFailure(400, "The body is not valid JSON.") from err
    except RecursionError as err:
        raise APIFailure(400, f"The body nests deeper than {MAX_NESTING} levels.") from err
    if not isinstance(params, dict):
        raise APIFailure(400, "The body must be a JSON object.")
    if _nests_deeper(params, MAX_NESTING):
        raise APIFailure(400, f"The body nests deeper than {MAX_NESTING} levels.")
    return params


def _nests_deeper(value: Any, levels: int) -> bool:
    """Whether ``value`` has objects or arrays more than ``levels`` deep (without recursing,
    which is what fails on such a value)."""
    pending: list[tuple[Any, int]] = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            if depth > levels:
                return True
            pending.extend((child, depth + 1) for child in item)
    return False


def _int(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise SnapshotError(f"{what} is not an integer: {value!r}")
    return value


def _check_payment(payment: Any) -> None:
    if not isinstance(payment, dict) or not isinstance(payment.get("id"), str):
        raise SnapshotError("a payment is not an object with a string id")
    if payment.get("status") not in PAYMENT_STATUSES:
        raise SnapshotError(f"payment {payment['id']} has no known status")
    if not isinstance(payment.get("created_at"), str):
        raise SnapshotError(f"payment {payment['id']} has no created_at")
    _int(payment.get("amount"), f"payment {payment['id']}'s amount")


def _check_refund(refund: Any, payments: Mapping[str, Any]) -> None:
    if not isinstance(refund, dict) or not isinstance(refund.get("id"), str):
        raise SnapshotError("a refund is not an object with a string id")
    if refund.get("payment_id") not in payments:
        raise SnapshotError(f"refund {refund['id']} is of no payment in the file")
    if refund.get("status") not in ("pending", "succeeded", "failed"):
        raise SnapshotError(f"refund {refund['id']} has no known status")
    _int(refund.get("amount"), f"refund {refund['id']}'s amount")


def _failure(failure: APIFailure) -> Answer:
    return Answer(failure.status, failure.body())
