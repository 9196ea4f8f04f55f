"""Creating payments: the arguments checked, LedgePay called, the mirror written."""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import urlsplit

from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.utils import timezone

from django_ledgepay.client import (
    get_client,
)
from django_ledgepay.currencies import is_currency
from django_ledgepay.exceptions import (
    AuthenticationError,
    InvalidRequestError,
    LedgePayError,
    LedgePayUnavailableError,
    NotFoundError,
)
from django_ledgepay.mirror.orm import apply_payment
from django_ledgepay.models import (
    MAX_AMOUNT,
    Payment,
    PaymentRequest,
)

logger = logging.getLogger("django_ledgepay.services")


MAX_URL_LENGTH: Final = 2048


MAX_IDEMPOTENCY_KEY_LENGTH: Final = 255


def create_payment(
    *,
    amount: int,
    currency: str,
    success_url: str,
    cancel_url: str,
    description: str = "",
    customer: Mapping[str, str] | None = None,
    metadata: Mapping[str, Any] | None = None,
    idempotency_key: str | None = None,
) -> Payment:
    """Create a payment at LedgePay and record it; then redirect to ``payment.checkout_url``.

    The arguments are checked before any call; a bad one raises InvalidRequestError with its
    name in ``param``. Each call without ``idempotency_key`` is a new payment (its own
    retries keep one key). Pass an ``idempotency_key`` tied to the order
    (``f"order-{order.pk}"``) so that a second click on Pay, or a retry after a lost
    answer, returns the same payment instead of charging twice.
    """
    currency = currency.upper() if isinstance(currency, str) else currency
    params: dict[str, Any] = {
        "amount": _check_amount(amount),
        "currency": _check_currency(currency),
        "description": _check_str(description, "description"),
        "success_url": _check_url(success_url, "success_url"),
        "cancel_url": _check_url(cancel_url, "cancel_url"),
    }
    if customer is not None:
        params["customer"] = _check_customer(customer)
    if metadata is not None:
        params["metadata"] = _check_metadata(metadata)
    if idempotency_key is not None:
        check_idempotency_key(idempotency_key)
        data = get_client().create_payment(params, idempotency_key=idempotency_key)
        # The answer may hold only a few fields: what was sent fills in the rest.
        payment, _ = apply_payment(data, known=params, verified=True)
        return payment

    # Without a key of the caller's, every call is a new payment: one key for this call,
    # kept across its own retries (the client's), and recorded before it is sent.
    request = PaymentRequest.objects.create(
        fingerprint=_fingerprint(params), idempotency_key=f"payment-{uuid.uuid4().hex}"
    )
    try:
        data = get_client().create_payment(params, idempotency_key=request.idempotency_key)
    except (InvalidRequestError, AuthenticationError, NotFoundError) as err:
        _resolve_payment_request(request, PaymentRequest.Outcome.REFUSED, error=str(err))
        raise
    except LedgePayUnavailableError as err:
        # The circuit breaker sent nothing: there is no payment to wonder about.
        _resolve_payment_request(request, PaymentRequest.Outcome.REFUSED, error=str(err))
        raise
    except LedgePayError as err:
        # No answer: LedgePay may have made it. The request stays unknown, with its key;
        # the reconcile finds such a payment (missing) and records it.
        PaymentRequest.objects.filter(pk=request.pk).update(error=str(err))
        raise
    payment, _ = apply_payment(data, known=params, verified=True)
    _resolve_payment_request(request, PaymentRequest.Outcome.MADE, payment=payment)
    return payment


def _fingerprint(params: Mapping[str, Any]) -> str:
    """SHA-256 of the request's arguments: what an operator matches a lost payment by."""
    text = json.dumps(params, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _resolve_payment_request(
    request: PaymentRequest, outcome: str, *, payment: Payment | None = None, error: str = ""
) -> None:
    PaymentRequest.objects.filter(pk=request.pk).update(
        outcome=outcome, payment=payment, error=error, resolved_at=timezone.now()
    )


def check_idempotency_key(key: object) -> str:
    """A key LedgePay can take in a header: 1 to 255 printable ASCII characters."""
    if (
        not isinstance(key, str)
        or not 0 < len(key) <= MAX_IDEMPOTENCY_KEY_LENGTH
        or not (key.isascii() and key.isprintable())
    ):
        raise InvalidRequestError(
            f"idempotency_key must be 1 to {MAX_IDEMPOTENCY_KEY_LENGTH} printable ASCII "
            "characters.",
            param="idempotency_key",
        )
    return key


def _check_amount(amount: object) -> int:
    if not isinstance(amount, int) or isinstance(amount, bool) or not 0 < amount <= MAX_AMOUNT:
        raise InvalidRequestError(
            f"amount must be a positive integer of minor units (cents), not {amount!r}.",
            param="amount",
        )
    return amount


def _check_currency(currency: object) -> str:
    if not is_currency(currency):
        raise InvalidRequestError(
            f"currency must be an ISO 4217 code such as 'EUR', not {currency!r}.",
            param="currency",
        )
    assert isinstance(currency, str)
    return currency


def _check_str(value: object, param: str) -> str:
    if not isinstance(value, str):
        raise InvalidRequestError(f"{param} must be a string.", param=param)
    return value


def _check_url(url: object, param: str) -> str:
    """An absolute http(s) URL. Any host name passes (``http://web:8000/`` in a container,
    ``http://testserver/`` in tests); whitespace and control characters do not."""
    if (
        not isinstance(url, str)
        or len(url) > MAX_URL_LENGTH
        or not url.isprintable()
        or any(char.isspace() for char in url)
    ):
        raise InvalidRequestError(f"{param} must be an absolute http(s) URL.", param=param)
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises ValueError for a port that is not a number)
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in {"http", "https"} or not parts.hostname:
        raise InvalidRequestError(
            f"{param} must be an absolute http(s) URL, not {url!r}.", param=param
        )
    return url


def _check_customer(customer: object) -> dict[str, str]:
    if not isinstance(customer, Mapping) or set(customer) - {"email", "name"}:
        raise InvalidRequestError(
            "customer must be a mapping with the keys 'email' and 'name'.", param="customer"
        )
    checked = {key: _check_str(value, f"customer.{key}") for key, value in customer.items()}
    for key, field in (("email", "customer_email"), ("name", "customer_name")):
        limit = getattr(Payment._meta.get_field(field), "max_length", None)
        if limit is not None and len(checked.get(key, "")) > limit:
            raise InvalidRequestError(
                f"customer.{key} is longer than {limit} characters.", param=f"customer.{key}"
            )
    if checked.get("email"):
        try:
            validate_email(checked["email"])
        except ValidationError as err:
            raise InvalidRequestError(
                "customer.email is not an email address.", param="customer.email"
            ) from err
    return checked


def _check_metadata(metadata: object) -> dict[str, Any]:
    if not isinstance(metadata, Mapping) or not all(isinstance(key, str) for key in metadata):
        raise InvalidRequestError("metadata must be a mapping with string keys.", param="metadata")
    try:
        json.dumps(metadata, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise InvalidRequestError(
            "metadata must be JSON-serializable, without NaN or infinity.", param="metadata"
        ) from err
    return dict(metadata)
