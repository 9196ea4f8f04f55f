from __future__ import annotations

import pytest

from django.core.exceptions import SuspiciousOperation

from django_ledgepay import exceptions
from django_ledgepay.exceptions import (
    APIConnectionError,
    APIError,
    AuthenticationError,
    InvalidRequestError,
    LedgePayError,
    LedgePayUnavailableError,
    NotFoundError,
    RateLimitError,
    RefundError,
    RefundsChangedError,
    RefundUnresolvedError,
    WebhookError,
    WebhookPayloadError,
    WebhookSignatureError,
)

SPEC_CLASSES = [
    AuthenticationError,
    InvalidRequestError,
    NotFoundError,
    RateLimitError,
    APIError,
    APIConnectionError,
    RefundError,
]
ALL_CLASSES = [LedgePayError, *SPEC_CLASSES, WebhookError, WebhookPayloadError]
ALL_CLASSES.append(WebhookSignatureError)
ALL_CLASSES.append(RefundsChangedError)
ALL_CLASSES.append(RefundUnresolvedError)
ALL_CLASSES.append(LedgePayUnavailableError)


def test_an_unresolved_refund_is_a_refund_error():
    # Callers that catch RefundError (the admin's actions) show it as a refusal, in words.
    assert issubclass(RefundUnresolvedError, RefundError)


@pytest.mark.parametrize("error_class", [*SPEC_CLASSES, WebhookError])
def test_every_class_derives_from_ledgepay_error(error_class):
    assert issubclass(error_class, LedgePayError)
    assert issubclass(error_class, Exception)


def test_webhook_errors_share_a_base():
    assert issubclass(WebhookSignatureError, WebhookError)
    assert issubclass(WebhookPayloadError, WebhookError)


def test_a_bad_signature_is_a_suspicious_operation():
    assert issubclass(WebhookSignatureError, SuspiciousOperation)
    assert not issubclass(WebhookPayloadError, SuspiciousOperation)
    assert not issubclass(LedgePayError, SuspiciousOperation)


def test_the_spec_classes_are_distinct():
    for error_class in SPEC_CLASSES:
        others = [other for other in SPEC_CLASSES if other is not error_class]
        assert not issubclass(error_class, tuple(others))


@pytest.mark.parametrize("error_class", ALL_CLASSES)
def test_message_and_http_status(error_class):
    error = error_class("Something went wrong.", http_status=418)

    assert error.message == "Something went wrong."
    assert error.http_status == 418
    assert error.error_type is None
    assert error.param is None
    assert str(error) == "Something went wrong. (HTTP 418)"
    assert error.args == ("Something went wrong.",)


@pytest.mark.parametrize("error_class", ALL_CLASSES)
def test_without_a_status(error_class):
    error = error_class("Refused locally.")

    assert error.http_status is None
    assert str(error) == "Refused locally."


@pytest.mark.parametrize("error_class", ALL_CLASSES)
def test_an_empty_message_falls_back_to_the_class_default(error_class):
    error = error_class()

    assert error.message == error_class.default_message
    assert error.message
    assert str(error) == error_class.default_message


def test_default_messages_differ_per_class():
    messages = [error_class.default_message for error_class in SPEC_CLASSES]

    assert len(set(messages)) == len(messages)


def test_authentication_default_message_names_the_setting():
    assert "LEDGEPAY_API_KEY" in AuthenticationError.default_message


def test_error_type_and_param_are_kept():
    error = InvalidRequestError(
        "Amount must be positive.",
        http_status=400,
        error_type="invalid_request_error",
        param="amount",
    )

    assert error.error_type == "invalid_request_error"
    assert error.param == "amount"


def test_status_and_details_are_keyword_only():
    with pytest.raises(TypeError):
        APIError("message", 500)  # type: ignore[misc]


def test_repr_names_the_class_message_and_status():
    error = NotFoundError("No such payment: pay_1.", http_status=404)

    assert repr(error) == "NotFoundError('No such payment: pay_1.', http_status=404)"


def test_can_be_raised_caught_by_base_and_chained():
    cause = ValueError("low level")

    with pytest.raises(LedgePayError) as excinfo:
        try:
            raise cause
        except ValueError as err:
            raise APIConnectionError("Could not reach LedgePay.") from err

    assert type(excinfo.value) is APIConnectionError
    assert excinfo.value.__cause__ is cause


def test_every_public_exception_is_listed_here():
    public = {
        obj
        for obj in vars(exceptions).values()
        if isinstance(obj, type) and issubclass(obj, LedgePayError)
    }

    assert public == set(ALL_CLASSES)


def test_refunds_changed_is_a_refund_error_with_both_totals():
    error = RefundsChangedError("Changed.", expected=1000, refunded=2500)

    assert isinstance(error, RefundError)
    assert (error.expected, error.refunded, str(error)) == (1000, 2500, "Changed.")


def test_an_open_breaker_is_a_connection_error():
    # Code that catches APIConnectionError (a shop's "try again later" page) catches it too.
    assert issubclass(LedgePayUnavailableError, APIConnectionError)
