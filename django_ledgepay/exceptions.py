"""The exceptions django-ledgepay raises. All derive from :class:`LedgePayError`."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import SuspiciousOperation


class LedgePayError(Exception):
    """Base class. ``http_status`` is the HTTP status LedgePay answered, or None."""

    default_message = "LedgePay request failed."

    def __init__(
        self,
        message: str = "",
        *,
        http_status: int | None = None,
        error_type: str | None = None,
        param: str | None = None,
    ) -> None:
        self.message = message or self.default_message
        self.http_status = http_status
        self.error_type = error_type
        self.param = param
        super().__init__(self.message)

    def __str__(self) -> str:
        if self.http_status is None:
            return self.message
        return f"{self.message} (HTTP {self.http_status})"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, http_status={self.http_status!r})"


class AuthenticationError(LedgePayError):
    """401: the API key is missing, wrong or revoked."""

    default_message = "LedgePay refused the API key; check LEDGEPAY_API_KEY."


class InvalidRequestError(LedgePayError):
    """400: LedgePay refused the request's parameters."""

    default_message = "LedgePay refused the request's parameters."


class NotFoundError(LedgePayError):
    """404: the object does not exist at LedgePay."""

    default_message = "LedgePay has no such object."


class RateLimitError(LedgePayError):
    """429 after every retry was spent."""

    default_message = "LedgePay's rate limit was exceeded."


class APIError(LedgePayError):
    """5xx, or an answer that could not be read."""

    default_message = "LedgePay answered with an error."


class APIConnectionError(LedgePayError):
    """The request did not get an answer: network error or timeout."""

    default_message = "Could not reach LedgePay."


class LedgePayUnavailableError(APIConnectionError):
    """The circuit breaker is open: ``LEDGEPAY_BREAKER_THRESHOLD`` calls in a row found
    LedgePay down (no connection, a timeout or a 5xx, after their retries), so this call
    failed at once and **sent nothing**. ``retry_after`` is how many seconds remain before
    a call is let through to try again (0 while another call is trying)."""

    default_message = "LedgePay is unavailable; the call was not sent."

    def __init__(self, message: str = "", *, retry_after: float = 0.0, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class RefundError(LedgePayError):
    """A refund refused locally, before any call to LedgePay."""

    default_message = "This payment cannot be refunded."


class RefundsChangedError(RefundError):
    """A refund refused because the payment's refunds no longer add up to what the caller
    saw (``expected_refunded``): a form submitted twice, say. Both totals are in minor
    units."""

    def __init__(
        self, message: str = "", *, expected: int = 0, refunded: int = 0, **kwargs: Any
    ) -> None:
        super().__init__(message, **kwargs)
        self.expected = expected
        self.refunded = refunded


class RefundUnresolvedError(RefundError):
    """An earlier refund request of the payment got no answer, and sending it again got
    none either: nothing new was sent. Try again once LedgePay can be reached."""

    default_message = "A refund of this payment is being resolved."


class WebhookError(LedgePayError):
    """Base class for webhook deliveries that are refused."""


class WebhookSignatureError(WebhookError, SuspiciousOperation):
    """The ``LedgePay-Signature`` header is missing, malformed, stale or does not match."""

    default_message = "The webhook signature is not valid."


class WebhookPayloadError(WebhookError):
    """The webhook body is not an event this app can read."""

    default_message = "The webhook body is not a valid event."
