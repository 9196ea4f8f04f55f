from __future__ import annotations

import email.utils
import json
import logging
import random
import sys
import threading
from types import TracebackType
from typing import Any

import pytest
import requests
import responses
import urllib3

from django.core.exceptions import ImproperlyConfigured
from django.test import RequestFactory, override_settings
from django.views.debug import ExceptionReporter

from django_ledgepay import client, services
from django_ledgepay.client import (
    BACKOFF_BASE,
    BACKOFF_CAP,
    MAX_PAGE_SIZE,
    RATE_LIMIT_WAIT_CAP,
    RAW_ERROR_CHARS,
    LedgePayClient,
    RateLimit,
)
from django_ledgepay.exceptions import (
    APIConnectionError,
    APIError,
    AuthenticationError,
    InvalidRequestError,
    LedgePayError,
    NotFoundError,
    RateLimitError,
)
from django_ledgepay.models import RefundRequest
from tests.conftest import API
from tests.factories import make_payment

KEY = "sk_test_tests_secret_key_123"
PAYMENT: dict[str, Any] = {
    "id": "pay_1",
    "status": "pending",
    "amount": 5000,
    "currency": "EUR",
    "created_at": "2024-01-15T10:30:00Z",
}
REFUND: dict[str, Any] = {
    "id": "re_1",
    "payment_id": "pay_1",
    "amount": 2500,
    "currency": "EUR",
    "status": "pending",
}
PARAMS: dict[str, Any] = {
    "amount": 5000,
    "currency": "EUR",
    "success_url": "https://shop.example/ok",
    "cancel_url": "https://shop.example/cancel",
}


def error_body(
    message: str, error_type: str = "invalid_request_error", param: Any = None
) -> dict[str, Any]:
    error: dict[str, Any] = {"type": error_type, "message": message}
    if param is not None:
        error["param"] = param
    return {"error": error}


def backoff_bound(retry: int) -> float:
    return min(BACKOFF_CAP, BACKOFF_BASE * float(2**retry))


class Clock:
    """A clock for ``client.now`` that only moves when the client sleeps."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.time = start
        self.waits: list[float] = []

    def now(self) -> float:
        return self.time

    def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.time += seconds


@pytest.fixture
def clock(monkeypatch):
    fake = Clock()
    monkeypatch.setattr(client, "now", fake.now)
    monkeypatch.setattr(client, "sleep", fake.sleep)
    return fake


@pytest.fixture
def top_of_backoff(monkeypatch):
    """Full jitter always picks the upper bound, so backoff waits are exact."""
    monkeypatch.setattr(random, "uniform", lambda low, high: high)


# Errors: status to class, message, type and param


@pytest.mark.parametrize(
    ("status", "error_class"),
    [
        (400, InvalidRequestError),
        (401, AuthenticationError),
        (403, AuthenticationError),
        (404, NotFoundError),
        (409, InvalidRequestError),
        (422, InvalidRequestError),
        (429, RateLimitError),
        (500, APIError),
        (502, APIError),
        (503, APIError),
        (504, APIError),
    ],
)
def test_each_status_raises_its_class_with_status_message_type_and_param(
    api, settings, status, error_class
):
    settings.LEDGEPAY_MAX_RETRIES = 0
    body = error_body(f"Refused with {status}.", error_type="some_error", param="amount")
    api.post(f"{API}/payments", json=body, status=status)

    with pytest.raises(LedgePayError) as excinfo:
        LedgePayClient().create_payment(PARAMS)

    error = excinfo.value
    assert type(error) is error_class
    assert error.http_status == status
    assert error.message == f"Refused with {status}."
    assert error.error_type == "some_error"
    assert error.param == "amount"
    assert str(error) == f"Refused with {status}. (HTTP {status})"
    assert len(api.calls) == 1


def test_error_message_falls_back_to_the_raw_text(api):
    api.get(f"{API}/payments/pay_1", body="No such payment here", status=404)

    with pytest.raises(NotFoundError) as excinfo:
        LedgePayClient().retrieve_payment("pay_1")

    assert excinfo.value.message == "No such payment here"
    assert excinfo.value.http_status == 404
    assert excinfo.value.error_type is None
    assert excinfo.value.param is None


def test_raw_text_of_an_error_is_cut_short(api):
    api.get(f"{API}/payments/pay_1", body="x" * 5000, status=400)

    with pytest.raises(InvalidRequestError) as excinfo:
        LedgePayClient().retrieve_payment("pay_1")

    assert excinfo.value.message == "x" * RAW_ERROR_CHARS


@pytest.mark.parametrize(
    ("body", "content_type", "message"),
    [
        (
            "<html><body><h1>400 Bad Request</h1></body></html>",
            "text/html",
            "<html><body><h1>400 Bad Request</h1></body></html>",
        ),
        ("", "text/plain", InvalidRequestError.default_message),
        ("   \n ", "text/plain", InvalidRequestError.default_message),
        ("[1, 2, 3]", "application/json", "[1, 2, 3]"),
        ('"just a string"', "application/json", '"just a string"'),
        ("null", "application/json", "null"),
        ("{not json", "application/json", "{not json"),
        ('{"error": "plain words"}', "application/json", "plain words"),
        ('{"error": {"message": ""}}', "application/json", '{"error": {"message": ""}}'),
        ('{"error": null, "detail": "x"}', "application/json", '{"error": null, "detail": "x"}'),
        ('{"error": {"message": 42}}', "application/json", "42"),
        ('{"error": ["a", "b"]}', "application/json", '{"error": ["a", "b"]}'),
        ('{"message": "top level"}', "application/json", '{"message": "top level"}'),
        (b"\xff\xfe\x00garbage\x80", "application/octet-stream", None),
        ("[" * 100_000, "application/json", "[" * RAW_ERROR_CHARS),
        ('{"a":' * 100_000, "application/json", '{"a":' * (RAW_ERROR_CHARS // 5)),
    ],
)
def test_unexpected_error_bodies_never_crash(api, body, content_type, message):
    api.get(f"{API}/payments/pay_1", body=body, status=400, content_type=content_type)

    with pytest.raises(InvalidRequestError) as excinfo:
        LedgePayClient().retrieve_payment("pay_1")

    error = excinfo.value
    assert error.http_status == 400
    assert error.message
    assert error.error_type is None
    assert error.param is None
    if message is not None:
        assert error.message == message


def test_unexpected_error_body_of_a_5xx_is_an_api_error(api, settings):
    settings.LEDGEPAY_MAX_RETRIES = 0
    api.get(f"{API}/payments/pay_1", body="", status=502)

    with pytest.raises(APIError) as excinfo:
        LedgePayClient().retrieve_payment("pay_1")

    assert excinfo.value.http_status == 502
    assert excinfo.value.message == APIError.default_message


def test_error_type_and_param_that_are_not_strings_are_dropped(api):
    body = {"error": {"type": 7, "message": "Bad amount.", "param": ["amount"]}}
    api.post(f"{API}/payments", json=body, status=400)

    with pytest.raises(InvalidRequestError) as excinfo:
        LedgePayClient().create_payment(PARAMS)

    assert excinfo.value.message == "Bad amount."
    assert excinfo.value.error_type is None
    assert excinfo.value.param is None


# Retries


@pytest.mark.parametrize(
    ("status", "error_class"),
    [(400, InvalidRequestError), (401, AuthenticationError), (404, NotFoundError)],
)
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_client_errors_are_never_retried(api, sleeps, status, error_class, method):
    api.add(method, f"{API}/payments/pay_1", json=error_body("No."), status=status)
    api.add(method, f"{API}/payments/pay_1", json=PAYMENT, status=200)

    with pytest.raises(error_class):
        LedgePayClient().request(method, "/payments/pay_1")

    assert len(api.calls) == 1
    assert sleeps == []


@pytest.mark.parametrize(
    ("status", "error_class"),
    [(429, RateLimitError), (500, APIError), (502, APIError), (503, APIError), (599, APIError)],
)
def test_retryable_statuses_are_retried_up_to_max_retries(
    api, settings, sleeps, status, error_class
):
    settings.LEDGEPAY_MAX_RETRIES = 2
    api.post(f"{API}/payments", json=error_body("Busy."), status=status)

    with pytest.raises(error_class) as excinfo:
        LedgePayClient().create_payment(PARAMS)

    assert excinfo.value.http_status == status
    assert len(api.calls) == 3
    assert len(sleeps) == 2


@pytest.mark.parametrize(
    "failure",
    [
        requests.ConnectionError("connection reset by peer"),
        requests.ConnectTimeout("connect timed out"),
        requests.ReadTimeout("read timed out"),
        requests.Timeout("timed out"),
    ],
)
def test_network_failures_are_retried_then_raise_a_connection_error(
    api, settings, sleeps, failure
):
    settings.LEDGEPAY_MAX_RETRIES = 2
    api.get(f"{API}/payments/pay_1", body=failure)

    with pytest.raises(APIConnectionError) as excinfo:
        LedgePayClient().retrieve_payment("pay_1")

    assert excinfo.value.http_status is None
    assert excinfo.value.__cause__ is failure
    assert type(failure).__name__ in excinfo.value.message
    assert len(api.calls) == 3
    assert len(sleeps) == 2


def test_default_max_retries_comes_from_settings(api, sleeps):
    api.get(f"{API}/payments/pay_1", status=500)

    with pytest.raises(APIError):
        LedgePayClient().retrieve_payment("pay_1")

    assert len(api.calls) == 1 + 3  # tests/settings.py: LEDGEPAY_MAX_RETRIES = 3


def test_max_retries_defaults_to_three_without_the_setting(api, settings, sleeps):
    del settings.LEDGEPAY_MAX_RETRIES
    api.get(f"{API}/payments/pay_1", status=503)

    with pytest.raises(APIError):
        LedgePayClient().retrieve_payment("pay_1")

    assert len(api.calls) == 4


@pytest.mark.parametrize(
    "failure",
    [
        requests.exceptions.ChunkedEncodingError(
            "Connection broken: IncompleteRead(7 bytes read)"
        ),
        urllib3.exceptions.ProtocolError("Connection aborted.", ConnectionResetError(104)),
    ],
)
def test_an_answer_cut_off_is_retried_with_the_same_key_then_a_connection_error(
    api, settings, sleeps, failure
):
    settings.LEDGEPAY_MAX_RETRIES = 2
    api.post(f"{API}/payments", body=failure)

    with pytest.raises(APIConnectionError) as excinfo:
        LedgePayClient().create_payment(PARAMS)

    assert excinfo.value.http_status is None
    assert excinfo.value.__cause__ is failure
    assert type(failure).__name__ in excinfo.value.message
    assert len(api.calls) == 3
    assert len(sleeps) == 2
    keys = [call.request.headers["Idempotency-Key"] for call in api.calls]
    assert len(set(keys)) == 1


def test_an_answer_cut_off_then_a_good_one_returns_it(api, sleeps):
    api.get(f"{API}/payments/pay_1", body=requests.exceptions.ChunkedEncodingError("cut"))
    api.get(f"{API}/payments/pay_1", json=PAYMENT)

    assert LedgePayClient().retrieve_payment("pay_1") == PAYMENT
    assert len(api.calls) == 2


@pytest.mark.parametrize(
    ("failure", "error_class"),
    [
        (
            requests.exceptions.InvalidHeader("Invalid return character in header"),
            APIConnectionError,
        ),
        (requests.exceptions.InvalidJSONError("Out of range float values"), APIConnectionError),
        (requests.exceptions.InvalidURL("Invalid URL: No host supplied"), APIConnectionError),
        (requests.exceptions.MissingSchema("No scheme supplied"), APIConnectionError),
        (requests.exceptions.InvalidSchema("No connection adapters"), APIConnectionError),
        (requests.exceptions.RetryError("too many retries"), APIConnectionError),
        (requests.RequestException("something else"), APIConnectionError),
        (urllib3.exceptions.LocationValueError("No host specified."), APIConnectionError),
        (requests.exceptions.ContentDecodingError("failed to decode gzip"), APIError),
        (requests.TooManyRedirects("Exceeded 30 redirects."), APIError),
    ],
)
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_other_transport_failures_are_wrapped_and_not_retried(
    api, sleeps, method, failure, error_class
):
    api.add(method, f"{API}/payments/pay_1", body=failure)
    api.add(method, f"{API}/payments/pay_1", json=PAYMENT)

    with pytest.raises(LedgePayError) as excinfo:
        LedgePayClient().request(method, "/payments/pay_1")

    error = excinfo.value
    assert type(error) is error_class
    assert error.http_status is None
    assert type(failure).__name__ in error.message
    assert f"{method} /payments/pay_1" in error.message
    assert error.__cause__ is failure
    assert len(api.calls) == 1
    assert sleeps == []


@override_settings(LEDGEPAY_MAX_RETRIES=1)
def test_override_settings_sets_max_retries(api, sleeps):
    api.get(f"{API}/payments/pay_1", body=requests.ConnectionError("down"))

    with pytest.raises(APIConnectionError):
        LedgePayClient().retrieve_payment("pay_1")

    assert len(api.calls) == 2
    assert len(sleeps) == 1


@pytest.mark.parametrize(
    "failure",
    [
        {"status": 500},
        {"status": 503},
        {"status": 429, "headers": {"Retry-After": "1"}},
        {"body": requests.ConnectionError("down")},
        {"body": requests.ReadTimeout("slow")},
    ],
)
def test_zero_max_retries_means_one_attempt(api, settings, sleeps, failure):
    settings.LEDGEPAY_MAX_RETRIES = 0
    api.post(f"{API}/payments", **failure)
    api.post(f"{API}/payments", json=PAYMENT, status=201)

    with pytest.raises(LedgePayError):
        LedgePayClient().create_payment(PARAMS)

    assert len(api.calls) == 1
    assert sleeps == []


def test_negative_max_retries_means_one_attempt(api, settings, sleeps):
    settings.LEDGEPAY_MAX_RETRIES = -4
    api.get(f"{API}/payments/pay_1", status=500)

    with pytest.raises(APIError):
        LedgePayClient().retrieve_payment("pay_1")

    assert len(api.calls) == 1


def test_a_retry_that_succeeds_returns_the_answer(api, sleeps):
    api.get(f"{API}/payments/pay_1", status=500)
    api.get(f"{API}/payments/pay_1", body=requests.ConnectionError("down"))
    api.get(f"{API}/payments/pay_1", status=429)
    api.get(f"{API}/payments/pay_1", json=PAYMENT, status=200)

    assert LedgePayClient().retrieve_payment("pay_1") == PAYMENT
    assert len(api.calls) == 4
    assert len(sleeps) == 3


def test_backoff_is_exponential_and_capped(api, settings, sleeps, top_of_backoff):
    settings.LEDGEPAY_MAX_RETRIES = 7
    settings.LEDGEPAY_MAX_WAIT = 60
    api.get(f"{API}/payments/pay_1", status=500)

    with pytest.raises(APIError):
        LedgePayClient().retrieve_payment("pay_1")

    assert sleeps == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]


def test_backoff_after_network_failures_is_exponential(api, settings, sleeps, top_of_backoff):
    settings.LEDGEPAY_MAX_RETRIES = 3
    api.get(f"{API}/payments/pay_1", body=requests.ConnectionError("down"))

    with pytest.raises(APIConnectionError):
        LedgePayClient().retrieve_payment("pay_1")

    assert sleeps == [0.5, 1.0, 2.0]


def test_backoff_waits_are_jittered_within_their_bound(api, settings, sleeps):
    settings.LEDGEPAY_MAX_RETRIES = 6
    settings.LEDGEPAY_MAX_WAIT = 60  # Six waits may add up past the default 20 s.
    settings.LEDGEPAY_BREAKER_THRESHOLD = 0  # Twenty failed calls in a row would open it.
    api.get(f"{API}/payments/pay_1", status=503)
    waits: list[float] = []

    for _ in range(20):
        sleeps.clear()
        with pytest.raises(APIError):
            LedgePayClient().retrieve_payment("pay_1")
        assert len(sleeps) == 6
        for retry, wait in enumerate(sleeps):
            assert 0 <= wait <= backoff_bound(retry)
        waits.extend(sleeps)

    assert len(set(waits)) > 1  # jittered, not a fixed schedule


# Rate limits: 429 waits


def test_429_honours_retry_after(api, sleeps):
    api.get(f"{API}/payments/pay_1", status=429, headers={"Retry-After": "7"})
    api.get(f"{API}/payments/pay_1", json=PAYMENT)

    assert LedgePayClient().retrieve_payment("pay_1") == PAYMENT
    assert sleeps == [7.0]


def test_429_retry_after_is_capped(api, settings, sleeps):
    settings.LEDGEPAY_MAX_WAIT = 3600
    api.get(f"{API}/payments/pay_1", status=429, headers={"Retry-After": "3600"})
    api.get(f"{API}/payments/pay_1", json=PAYMENT)

    LedgePayClient().retrieve_payment("pay_1")

    assert sleeps == [RATE_LIMIT_WAIT_CAP]


def test_429_retry_after_0_retries_at_once(api, sleeps):
    api.get(f"{API}/payments/pay_1", status=429, headers={"Retry-After": "0"})
    api.get(f"{API}/payments/pay_1", json=PAYMENT)

    LedgePayClient().retrieve_payment("pay_1")

    assert sleeps == [0.0]


@pytest.mark.parametrize(
    "headers",
    [
        {"Retry-After": "-30"},
        {"X-RateLimit-Reset": "1"},  # Long past: the clocks disagree.
        {"Retry-After": "Mon, 01 Jan 2001 00:00:00 GMT"},
        {"Retry-After": "Mon, 01 Jan 99999999999999999999 00:00:00 GMT"},  # Overflows.
        {"Retry-After": "Mon, 01 Jan 2001 00:00:00 +99999999999999999999"},
    ],
)
def test_429_asking_for_a_time_past_or_unreadable_backs_off(api, sleeps, top_of_backoff, headers):
    api.get(f"{API}/payments/pay_1", status=429, headers=headers)
    api.get(f"{API}/payments/pay_1", json=PAYMENT)

    LedgePayClient().retrieve_payment("pay_1")

    assert sleeps == [BACKOFF_BASE]


def test_an_older_answer_does_not_hide_a_used_up_window(clock):
    reset = str(int(clock.time) + 30)
    late = requests.Response()
    late.headers.update({"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": reset})
    early = requests.Response()
    early.headers.update({"X-RateLimit-Remaining": "1", "X-RateLimit-Reset": reset})
    ledgepay = LedgePayClient()

    ledgepay._record_rate_limit(late)
    ledgepay._record_rate_limit(early)  # A slower answer of a concurrent call, recorded last.

    reading = client.last_rate_limit()
    assert reading is not None and reading.remaining == 0


def test_429_retry_after_as_an_http_date(api, clock):
    moment = email.utils.formatdate(clock.time + 9, usegmt=True)
    api.get(f"{API}/payments/pay_1", status=429, headers={"Retry-After": moment})
    api.get(f"{API}/payments/pay_1", json=PAYMENT)

    LedgePayClient().retrieve_payment("pay_1")

    assert clock.waits == [pytest.approx(9.0, abs=1.0)]


def test_429_uses_the_rate_limit_reset_without_retry_after(api, clock):
    reset = clock.time + 12
    headers = {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(int(reset))}
    api.get(f"{API}/payments/pay_1", status=429, headers=headers)
    api.get(f"{API}/payments/pay_1", json=PAYMENT)

    LedgePayClient().retrieve_payment("pay_1")

    assert clock.waits == [12.0]


def test_429_reset_wait_is_capped(api, settings, clock):
    settings.LEDGEPAY_MAX_WAIT = 3600
    headers = {"X-RateLimit-Reset": str(int(clock.time + 10_000))}
    api.get(f"{API}/payments/pay_1", status=429, headers=headers)
    api.get(f"{API}/payments/pay_1", json=PAYMENT)

    LedgePayClient().retrieve_payment("pay_1")

    assert clock.waits[0] == RATE_LIMIT_WAIT_CAP


def test_retry_after_wins_over_the_rate_limit_reset(api, clock):
    headers = {"Retry-After": "3", "X-RateLimit-Reset": str(int(clock.time + 3))}
    api.get(f"{API}/payments/pay_1", status=429, headers=headers)
    api.get(f"{API}/payments/pay_1", json=PAYMENT)

    LedgePayClient().retrieve_payment("pay_1")

    assert clock.waits == [3.0]


@pytest.mark.parametrize("headers", [{}, {"Retry-After": "soon"}, {"X-RateLimit-Reset": "x"}])
def test_429_without_a_usable_wait_backs_off(api, sleeps, top_of_backoff, headers):
    api.get(f"{API}/payments/pay_1", status=429, headers=headers)
    api.get(f"{API}/payments/pay_1", json=PAYMENT)

    LedgePayClient().retrieve_payment("pay_1")

    assert sleeps == [BACKOFF_BASE]


def test_5xx_ignores_retry_after_and_backs_off(api, sleeps, top_of_backoff):
    api.get(f"{API}/payments/pay_1", status=503, headers={"Retry-After": "45"})
    api.get(f"{API}/payments/pay_1", json=PAYMENT)

    LedgePayClient().retrieve_payment("pay_1")

    assert sleeps == [BACKOFF_BASE]


# Rate limits: waiting for the window before a call


def rate_headers(remaining: int, reset: float, limit: int = 100) -> dict[str, str]:
    return {
        "X-RateLimit-Limit": str(limit),
        "X-RateLimit-Remaining": str(remaining),
        "X-RateLimit-Reset": str(int(reset)),
    }


def test_no_rate_limit_reading_before_any_answer():
    assert client.last_rate_limit() is None


def test_last_rate_limit_is_readable_after_an_answer(api, clock):
    reset = clock.time + 30
    api.get(f"{API}/payments/pay_1", json=PAYMENT, headers=rate_headers(41, reset, limit=50))

    LedgePayClient().retrieve_payment("pay_1")

    assert client.last_rate_limit() == RateLimit(limit=50, remaining=41, reset=int(reset))


def test_last_rate_limit_is_read_from_error_answers_too(api, settings, clock):
    settings.LEDGEPAY_MAX_RETRIES = 0
    api.get(f"{API}/payments/pay_1", status=404, headers=rate_headers(7, clock.time + 5))

    with pytest.raises(NotFoundError):
        LedgePayClient().retrieve_payment("pay_1")

    rate_limit = client.last_rate_limit()
    assert rate_limit is not None
    assert rate_limit.remaining == 7


def test_last_rate_limit_follows_the_latest_answer(api, clock):
    api.get(f"{API}/payments/pay_1", json=PAYMENT, headers=rate_headers(9, clock.time + 5))
    api.get(f"{API}/payments/pay_1", json=PAYMENT, headers=rate_headers(8, clock.time + 5))

    LedgePayClient().retrieve_payment("pay_1")
    first = client.last_rate_limit()
    LedgePayClient().retrieve_payment("pay_1")
    second = client.last_rate_limit()

    assert first is not None and first.remaining == 9
    assert second is not None and second.remaining == 8


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, None),
        ({"X-RateLimit-Remaining": "lots", "X-RateLimit-Reset": "nan"}, None),
        ({"X-RateLimit-Limit": "inf"}, None),
        ({"X-RateLimit-Remaining": "3"}, RateLimit(remaining=3)),
        ({"X-RateLimit-Limit": "100", "X-RateLimit-Reset": "x"}, RateLimit(limit=100)),
        ({"X-RateLimit-Reset": "1700000000.5"}, RateLimit(reset=1700000000.5)),
    ],
)
def test_unreadable_rate_limit_headers_are_left_out(api, headers, expected):
    api.get(f"{API}/payments/pay_1", json=PAYMENT, headers=headers)

    LedgePayClient().retrieve_payment("pay_1")

    assert client.last_rate_limit() == expected


def test_reset_state_forgets_the_rate_limit(api, clock):
    api.get(f"{API}/payments/pay_1", json=PAYMENT, headers=rate_headers(0, clock.time + 5))
    LedgePayClient().retrieve_payment("pay_1")
    assert client.last_rate_limit() is not None

    client.reset_state()

    assert client.last_rate_limit() is None


def test_exhausted_window_waits_for_the_reset_before_the_next_call(api, clock):
    reset = clock.time + 5
    sent_at: list[float] = []

    def answer(request):
        sent_at.append(clock.now())
        return 200, rate_headers(99, reset + 60), json.dumps(PAYMENT)

    api.get(f"{API}/payments/pay_1", json=PAYMENT, headers=rate_headers(0, reset))
    api.add_callback(responses.GET, f"{API}/payments/pay_2", callback=answer)
    lp = LedgePayClient()

    lp.retrieve_payment("pay_1")
    assert clock.waits == []
    lp.retrieve_payment("pay_2")

    assert clock.waits == [5.0]
    assert sent_at == [reset]  # not a moment before the window resets
    assert len(api.calls) == 2


def test_exhausted_window_wait_applies_to_posts_too(api, clock):
    reset = clock.time + 2.5
    api.get(f"{API}/payments/pay_1", json=PAYMENT, headers=rate_headers(0, reset))
    api.post(f"{API}/refunds", json=REFUND, status=201)

    lp = LedgePayClient()
    lp.retrieve_payment("pay_1")
    lp.create_refund({"payment_id": "pay_1"})

    assert clock.waits == [2.0]  # the header holds whole seconds: int(reset)


def test_exhausted_window_wait_is_capped(api, settings, clock):
    settings.LEDGEPAY_MAX_WAIT = 3600
    api.get(f"{API}/payments/pay_1", json=PAYMENT, headers=rate_headers(0, clock.time + 7200))

    lp = LedgePayClient()
    lp.retrieve_payment("pay_1")
    lp.retrieve_payment("pay_1")

    assert clock.waits == [RATE_LIMIT_WAIT_CAP]


# The wait budget: LEDGEPAY_MAX_WAIT, and patience() for operators' commands


def test_a_retry_that_would_wait_past_max_wait_is_not_made(api, sleeps, caplog):
    api.get(f"{API}/payments/pay_1", status=429, headers={"Retry-After": "30"})
    api.get(f"{API}/payments/pay_1", json=PAYMENT)

    with pytest.raises(RateLimitError):
        LedgePayClient().retrieve_payment("pay_1")

    # A shopper's request is not held for 30 s: the 429 is the answer (default 20 s).
    assert (sleeps, len(api.calls)) == ([], 1)
    assert "not retried: the wait of 30.00s would pass LEDGEPAY_MAX_WAIT" in caplog.text


def test_max_wait_counts_every_wait_of_one_call(api, settings, sleeps, top_of_backoff):
    settings.LEDGEPAY_MAX_RETRIES = 7
    settings.LEDGEPAY_MAX_WAIT = 5
    api.get(f"{API}/payments/pay_1", status=500)

    with pytest.raises(APIError):
        LedgePayClient().retrieve_payment("pay_1")

    assert sleeps == [0.5, 1.0, 2.0]  # 3.5 s; the next 4 s would pass 5
    assert len(api.calls) == 4


def test_max_wait_is_per_call(api, settings, sleeps, top_of_backoff):
    settings.LEDGEPAY_MAX_WAIT = 1
    for _ in range(2):
        api.get(f"{API}/payments/pay_1", status=503)
        api.get(f"{API}/payments/pay_1", json=PAYMENT)

    lp = LedgePayClient()
    lp.retrieve_payment("pay_1")
    lp.retrieve_payment("pay_1")

    assert sleeps == [0.5, 0.5]


def test_max_wait_stops_network_retries_too(api, settings, sleeps, top_of_backoff):
    settings.LEDGEPAY_MAX_WAIT = 0
    api.get(f"{API}/payments/pay_1", body=requests.ConnectionError("down"))

    with pytest.raises(APIConnectionError):
        LedgePayClient().retrieve_payment("pay_1")

    assert (sleeps, len(api.calls)) == ([], 1)


def test_an_exhausted_window_past_max_wait_sends_nothing(api, clock):
    reset = clock.time + 45
    api.get(f"{API}/payments/pay_1", json=PAYMENT, headers=rate_headers(0, reset))
    api.post(f"{API}/refunds", json=REFUND, status=201)

    lp = LedgePayClient()
    lp.retrieve_payment("pay_1")
    with pytest.raises(RateLimitError) as excinfo:
        lp.create_refund({"payment_id": "pay_1"})

    assert str(excinfo.value) == (
        "LedgePay's rate limit is used up for 45s more, longer than this call may wait"
        " (LEDGEPAY_MAX_WAIT); POST /refunds was not sent."
    )
    assert (clock.waits, [call.request.method for call in api.calls]) == ([], ["GET"])


def test_a_retry_past_max_wait_for_the_window_says_it_was_not_sent_again(api, clock):
    api.get(f"{API}/payments/pay_1", status=503, headers=rate_headers(0, clock.time + 45))

    with pytest.raises(RateLimitError) as excinfo:
        LedgePayClient().retrieve_payment("pay_1")

    assert str(excinfo.value).endswith("GET /payments/pay_1 was not sent again.")
    assert (len(clock.waits), len(api.calls)) == (1, 1)  # the 503's backoff, no window wait


def test_patience_none_waits_as_long_as_the_retries_take(api, clock):
    api.get(f"{API}/payments/pay_1", status=429, headers={"Retry-After": "30"})
    api.get(f"{API}/payments/pay_1", json=PAYMENT, headers=rate_headers(0, clock.time + 45))
    api.get(f"{API}/payments/pay_2", json={**PAYMENT, "id": "pay_2"})

    lp = LedgePayClient()
    with client.patience(None):
        lp.retrieve_payment("pay_1")
        lp.retrieve_payment("pay_2")

    assert clock.waits == [30.0, 15.0]  # the 429's, then the window's rest


def test_patience_replaces_max_wait_and_is_undone(api, settings, sleeps):
    settings.LEDGEPAY_MAX_WAIT = 0
    api.get(f"{API}/payments/pay_1", status=429, headers={"Retry-After": "2"})
    api.get(f"{API}/payments/pay_1", json=PAYMENT)
    api.get(f"{API}/payments/pay_1", status=429, headers={"Retry-After": "2"})

    with client.patience(2):
        LedgePayClient().retrieve_payment("pay_1")
    with pytest.raises(RateLimitError):
        LedgePayClient().retrieve_payment("pay_1")

    assert sleeps == [2.0]


@pytest.mark.parametrize(
    "headers",
    [
        rate_headers(1, 1_700_000_000 + 30),  # requests left in the window
        rate_headers(0, 1_700_000_000 - 1),  # the window already reset
        {"X-RateLimit-Remaining": "0"},  # no reset to wait for
        {"X-RateLimit-Limit": "100", "X-RateLimit-Reset": str(1_700_000_000 + 30)},
    ],
)
def test_no_wait_when_the_window_is_not_exhausted(api, clock, headers):
    api.get(f"{API}/payments/pay_1", json=PAYMENT, headers=headers)

    lp = LedgePayClient()
    lp.retrieve_payment("pay_1")
    lp.retrieve_payment("pay_1")

    assert clock.waits == []
    assert len(api.calls) == 2


def test_a_429_with_an_exhausted_window_waits_once(api, clock):
    reset = clock.time + 4
    api.get(f"{API}/payments/pay_1", status=429, headers=rate_headers(0, reset))
    api.get(f"{API}/payments/pay_1", json=PAYMENT, headers=rate_headers(99, reset + 60))

    LedgePayClient().retrieve_payment("pay_1")

    assert sum(clock.waits) == 4.0
    assert clock.time == reset


# Idempotency keys


def test_a_post_keeps_one_idempotency_key_across_its_retries(api, sleeps):
    api.post(f"{API}/payments", status=500)
    api.post(f"{API}/payments", body=requests.ConnectionError("down"))
    api.post(f"{API}/payments", status=429)
    api.post(f"{API}/payments", json=PAYMENT, status=201)

    LedgePayClient().create_payment(PARAMS)

    keys = [call.request.headers["Idempotency-Key"] for call in api.calls]
    assert len(keys) == 4
    assert len(set(keys)) == 1
    assert 0 < len(keys[0]) <= 255


def test_two_logical_posts_get_different_keys(api):
    api.post(f"{API}/payments", json=PAYMENT, status=201)
    api.post(f"{API}/refunds", json=REFUND, status=201)

    lp = LedgePayClient()
    lp.create_payment(PARAMS)
    lp.create_payment(PARAMS)
    lp.create_refund({"payment_id": "pay_1"})

    keys = [call.request.headers["Idempotency-Key"] for call in api.calls]
    assert len(set(keys)) == 3


@pytest.mark.parametrize("method", ["create_payment", "create_refund"])
def test_a_callers_idempotency_key_is_used_as_is(api, sleeps, method):
    api.post(f"{API}/payments", status=502)
    api.post(f"{API}/payments", json=PAYMENT, status=201)
    api.post(f"{API}/refunds", status=502)
    api.post(f"{API}/refunds", json=REFUND, status=201)

    getattr(LedgePayClient(), method)(PARAMS, idempotency_key="order-42-attempt-1")

    assert [call.request.headers["Idempotency-Key"] for call in api.calls] == [
        "order-42-attempt-1",
        "order-42-attempt-1",
    ]


def test_gets_carry_no_idempotency_key(api, sleeps):
    api.get(f"{API}/payments/pay_1", status=500)
    api.get(f"{API}/payments/pay_1", json=PAYMENT)
    api.get(f"{API}/payments", json={"data": [], "has_more": False})

    lp = LedgePayClient()
    lp.retrieve_payment("pay_1")
    lp.list_payments()

    assert len(api.calls) == 3
    for call in api.calls:
        assert "Idempotency-Key" not in call.request.headers


class IdempotentServer:
    """Creates an object per new ``Idempotency-Key`` and answers the stored one for a key it
    has seen, losing the answer of its first ``lose`` attempts after it acted."""

    def __init__(self, lose: int = 1, lost_as: str = "drop") -> None:
        self.created: dict[str, dict[str, Any]] = {}
        self.keys: list[str] = []
        self.lose = lose
        self.lost_as = lost_as

    def __call__(self, request):
        key = request.headers["Idempotency-Key"]
        self.keys.append(key)
        if key not in self.created:
            payment = {**json.loads(request.body), "id": f"pay_{len(self.created) + 1}"}
            self.created[key] = payment
        if len(self.keys) <= self.lose:
            if self.lost_as == "drop":
                raise requests.ConnectionError("connection closed after the server acted")
            if self.lost_as == "timeout":
                raise requests.ReadTimeout("the answer did not come in time")
            if self.lost_as == "cut":
                raise requests.exceptions.ChunkedEncodingError("connection broken mid-answer")
            return 500, {}, json.dumps(error_body("Internal error", "api_error"))
        return 201, {}, json.dumps(self.created[key])


@pytest.mark.parametrize("lost_as", ["drop", "timeout", "cut", "500"])
def test_a_lost_answer_is_retried_without_acting_twice(api, sleeps, lost_as):
    server = IdempotentServer(lose=1, lost_as=lost_as)
    api.add_callback(responses.POST, f"{API}/payments", callback=server)

    payment = LedgePayClient().create_payment(PARAMS)

    assert len(server.created) == 1
    assert payment == {**PARAMS, "id": "pay_1"}
    assert len(server.keys) == 2
    assert server.keys[0] == server.keys[1]
    assert len(sleeps) == 1


def test_several_lost_answers_still_act_once(api, sleeps):
    server = IdempotentServer(lose=3)
    api.add_callback(responses.POST, f"{API}/payments", callback=server)

    payment = LedgePayClient().create_payment(PARAMS)

    assert len(server.created) == 1
    assert payment["id"] == "pay_1"
    assert len(server.keys) == 4
    assert len(set(server.keys)) == 1


def test_a_lost_answer_and_a_second_payment_are_two_objects(api, sleeps):
    server = IdempotentServer(lose=1)
    api.add_callback(responses.POST, f"{API}/payments", callback=server)

    lp = LedgePayClient()
    first = lp.create_payment(PARAMS)
    second = lp.create_payment(PARAMS)

    assert len(server.created) == 2
    assert first["id"] != second["id"]


# Transport: headers, body, timeouts, session


def test_requests_carry_the_bearer_key_on_every_attempt(api, sleeps):
    api.post(f"{API}/payments", status=503)
    api.post(f"{API}/payments", json=PAYMENT, status=201)

    LedgePayClient().create_payment(PARAMS)

    assert len(api.calls) == 2
    for call in api.calls:
        assert call.request.headers["Authorization"] == f"Bearer {KEY}"
        assert call.request.headers["Accept"] == "application/json"
        assert call.request.headers["User-Agent"] == client.USER_AGENT
        assert call.request.headers["Content-Type"] == "application/json"
        assert json.loads(call.request.body) == PARAMS


def test_the_api_key_is_read_on_each_call(api, settings):
    api.get(f"{API}/payments/pay_1", json=PAYMENT)
    lp = LedgePayClient()

    lp.retrieve_payment("pay_1")
    settings.LEDGEPAY_API_KEY = "sk_test_rotated"
    lp.retrieve_payment("pay_1")

    assert api.calls[0].request.headers["Authorization"] == f"Bearer {KEY}"
    assert api.calls[1].request.headers["Authorization"] == "Bearer sk_test_rotated"


def test_the_api_base_is_read_on_each_call(api, settings):
    api.get("https://sandbox.example/v2/payments/pay_1", json=PAYMENT)
    settings.LEDGEPAY_API_BASE = "https://sandbox.example/v2/"

    assert LedgePayClient().retrieve_payment("pay_1") == PAYMENT
    assert api.calls[0].request.url == "https://sandbox.example/v2/payments/pay_1"


@pytest.mark.parametrize("api_key", ["", None])
def test_a_call_without_an_api_key_is_improperly_configured(api, settings, api_key):
    settings.LEDGEPAY_API_KEY = api_key
    api.get(f"{API}/payments/pay_1", json=PAYMENT)

    with pytest.raises(ImproperlyConfigured, match="LEDGEPAY_API_KEY"):
        LedgePayClient().retrieve_payment("pay_1")

    assert len(api.calls) == 0


def test_a_call_without_the_api_key_setting_is_improperly_configured(api, settings):
    del settings.LEDGEPAY_API_KEY

    with pytest.raises(ImproperlyConfigured):
        LedgePayClient().create_payment(PARAMS)

    assert len(api.calls) == 0


def test_each_attempt_gets_the_configured_timeout(api, settings, sleeps):
    settings.LEDGEPAY_TIMEOUT = 2.5
    api.get(f"{API}/payments/pay_1", body=requests.ReadTimeout("slow"))
    api.get(f"{API}/payments/pay_1", status=500)
    api.get(f"{API}/payments/pay_1", json=PAYMENT)

    LedgePayClient().retrieve_payment("pay_1")

    assert [call.request.req_kwargs["timeout"] for call in api.calls] == [2.5, 2.5, 2.5]


def test_the_timeout_defaults_to_ten_seconds(api, settings):
    del settings.LEDGEPAY_TIMEOUT
    api.post(f"{API}/refunds", json=REFUND, status=201)

    LedgePayClient().create_refund({"payment_id": "pay_1"})

    assert api.calls[0].request.req_kwargs["timeout"] == 10.0


def test_every_call_goes_through_the_one_session(api, monkeypatch, settings):
    settings.LEDGEPAY_TIMEOUT = 4
    session = client.get_session()
    seen: list[dict[str, Any]] = []
    send = session.request

    def spy(method, url, **kwargs):
        seen.append({"method": method, "url": url, **kwargs})
        return send(method, url, **kwargs)

    monkeypatch.setattr(session, "request", spy)
    api.get(f"{API}/payments/pay_1", json=PAYMENT)
    api.post(f"{API}/payments", json=PAYMENT, status=201)

    lp = LedgePayClient()
    lp.retrieve_payment("pay_1")
    LedgePayClient().create_payment(PARAMS)

    assert client.get_session() is session
    assert [(call["method"], call["url"]) for call in seen] == [
        ("GET", f"{API}/payments/pay_1"),
        ("POST", f"{API}/payments"),
    ]
    assert [call["timeout"] for call in seen] == [4.0, 4.0]


def test_the_session_is_shared_by_threads():
    sessions: list[requests.Session] = []
    threads = [
        threading.Thread(target=lambda: sessions.append(client.get_session())) for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(sessions) == 8
    assert all(session is sessions[0] for session in sessions)


def test_reset_state_closes_and_replaces_the_session(monkeypatch):
    session = client.get_session()
    closed: list[bool] = []
    monkeypatch.setattr(session, "close", lambda: closed.append(True))

    client.reset_state()

    assert closed == [True]
    assert client.get_session() is not session


def test_a_forked_child_gets_its_own_session():
    parent = client.get_session()
    try:
        client._reset_after_fork()
        child = client.get_session()
        assert child is not parent
        assert client.get_session() is child
    finally:
        parent.close()


def test_the_session_keeps_no_api_key():
    session = client.get_session()

    assert "Authorization" not in session.headers
    assert KEY not in repr(dict(session.headers))


# Answers


def test_create_payment_returns_the_decoded_object(api):
    api.post(f"{API}/payments", json=PAYMENT, status=201)

    assert LedgePayClient().create_payment(PARAMS) == PAYMENT
    assert api.calls[0].request.url == f"{API}/payments"


def test_create_refund_posts_to_refunds(api):
    api.post(f"{API}/refunds", json=REFUND, status=201)

    refund = LedgePayClient().create_refund({"payment_id": "pay_1", "amount": 2500})

    assert refund == REFUND
    assert json.loads(api.calls[0].request.body) == {"payment_id": "pay_1", "amount": 2500}


@pytest.mark.parametrize("status", [200, 201])
@pytest.mark.parametrize(
    "body", ["<html>Maintenance</html>", "", "{", "not json at all", "[" * 100_000]
)
def test_a_2xx_that_is_not_json_is_an_api_error(api, sleeps, status, body):
    api.post(f"{API}/payments", body=body, status=status, content_type="text/html")

    with pytest.raises(APIError) as excinfo:
        LedgePayClient().create_payment(PARAMS)

    assert excinfo.value.http_status == status
    assert len(api.calls) == 1


@pytest.mark.parametrize("body", [[PAYMENT], "pay_1", 5, None, True])
def test_an_object_endpoint_answering_something_else_is_an_api_error(api, body):
    api.get(f"{API}/payments/pay_1", json=body)
    api.post(f"{API}/refunds", json=body, status=201)
    lp = LedgePayClient()

    with pytest.raises(APIError):
        lp.retrieve_payment("pay_1")
    with pytest.raises(APIError):
        lp.create_refund({"payment_id": "pay_1"})


def test_list_payments_reads_a_list_object(api):
    other = {**PAYMENT, "id": "pay_2"}
    api.get(f"{API}/payments", json={"data": [PAYMENT, other], "has_more": True})

    items, has_more = LedgePayClient().list_payments()

    assert items == [PAYMENT, other]
    assert has_more is True


def test_list_payments_without_has_more_has_no_more(api):
    api.get(f"{API}/payments", json={"data": [PAYMENT]})

    assert LedgePayClient().list_payments() == ([PAYMENT], False)


def test_list_payments_accepts_a_bare_list(api):
    api.get(f"{API}/payments", json=[PAYMENT])

    items, has_more = LedgePayClient().list_payments()

    assert items == [PAYMENT]
    assert has_more is False


@pytest.mark.parametrize(
    "body",
    [
        {"data": {"id": "pay_1"}},
        {"data": None, "has_more": False},
        {"items": [PAYMENT]},
        {},
        "payments",
        42,
        None,
        [PAYMENT, "pay_2"],
        {"data": [PAYMENT, None]},
        {"data": [[PAYMENT]]},
    ],
)
def test_list_payments_rejects_other_shapes(api, body):
    api.get(f"{API}/payments", json=body)

    with pytest.raises(APIError):
        LedgePayClient().list_payments()


def test_list_payments_sends_its_filters(api):
    api.get(f"{API}/payments", json={"data": [], "has_more": False})

    LedgePayClient().list_payments(
        limit=25,
        status="succeeded",
        created_after="2024-01-01T00:00:00Z",
        created_before="2024-02-01T00:00:00Z",
    )

    assert api.calls[0].request.params == {
        "limit": "25",
        "status": "succeeded",
        "created_after": "2024-01-01T00:00:00Z",
        "created_before": "2024-02-01T00:00:00Z",
    }


@pytest.mark.parametrize(("limit", "sent"), [(0, "1"), (-3, "1"), (100, "100"), (1000, "100")])
def test_list_payments_keeps_the_limit_within_the_page_size(api, limit, sent):
    api.get(f"{API}/payments", json=[])

    LedgePayClient().list_payments(limit=limit)

    assert api.calls[0].request.params == {"limit": sent}


def test_list_payments_asks_for_the_largest_page_by_default(api):
    api.get(f"{API}/payments", json=[])

    LedgePayClient().list_payments()

    assert api.calls[0].request.params == {"limit": str(MAX_PAGE_SIZE)}


def test_retrieve_payment_gets_the_payment_by_id(api):
    api.get(f"{API}/payments/pay_1", json=PAYMENT)

    assert LedgePayClient().retrieve_payment("pay_1") == PAYMENT
    assert api.calls[0].request.method == "GET"


@pytest.mark.parametrize(
    "ledgepay_id",
    ["", "/", "pay_1/refunds", "../refunds", "pay_1/", ".", ".."],
)
def test_retrieve_payment_refuses_ids_that_are_not_one_path_segment(api, ledgepay_id):
    api.get(f"{API}/payments/pay_1", json=PAYMENT)

    with pytest.raises(InvalidRequestError) as excinfo:
        LedgePayClient().retrieve_payment(ledgepay_id)

    assert excinfo.value.http_status is None
    assert len(api.calls) == 0


@pytest.mark.parametrize(
    ("ledgepay_id", "path"),
    [
        ("pay_1?status=succeeded", "/v1/payments/pay_1%3Fstatus%3Dsucceeded"),
        ("pay_1#x", "/v1/payments/pay_1%23x"),
        ("pay 1", "/v1/payments/pay%201"),
        ("%2e%2e", "/v1/payments/%252e%252e"),
        ("pay_1\\..", "/v1/payments/pay_1%5C.."),
    ],
)
def test_retrieve_payment_quotes_the_id_into_one_path_segment(api, ledgepay_id, path):
    api.get(f"https://api.ledgepay.test{path}", json=PAYMENT)

    assert LedgePayClient().retrieve_payment(ledgepay_id) == PAYMENT
    assert api.calls[0].request.path_url == path
    assert api.calls[0].request.params == {}


# The API key never shows


def test_a_key_echoed_in_the_message_is_redacted(api):
    body = error_body(f"Invalid API key provided: {KEY}", "authentication_error")
    api.get(f"{API}/payments/pay_1", json=body, status=401)

    with pytest.raises(AuthenticationError) as excinfo:
        LedgePayClient().retrieve_payment("pay_1")

    error = excinfo.value
    assert error.message == "Invalid API key provided: [redacted]"
    assert KEY not in str(error)
    assert KEY not in repr(error)
    assert KEY not in repr(error.args)


def test_a_key_echoed_in_every_field_is_redacted_everywhere(api):
    body = {"error": {"type": f"bad_{KEY}", "message": f"Key {KEY}", "param": KEY}}
    api.get(f"{API}/payments/pay_1", json=body, status=400)

    with pytest.raises(InvalidRequestError) as excinfo:
        LedgePayClient().retrieve_payment("pay_1")

    assert KEY not in repr(vars(excinfo.value))
    assert excinfo.value.param == "[redacted]"


@pytest.mark.parametrize("padding", [0, 150, RAW_ERROR_CHARS - len(KEY), RAW_ERROR_CHARS - 10])
def test_a_key_echoed_in_raw_text_is_redacted_even_where_the_text_is_cut(api, padding):
    api.get(f"{API}/payments/pay_1", body=f"{'x' * padding}Bearer {KEY} rejected", status=401)

    with pytest.raises(AuthenticationError) as excinfo:
        LedgePayClient().retrieve_payment("pay_1")

    message = excinfo.value.message
    assert len(message) <= RAW_ERROR_CHARS
    # Not even the start of the key survives the cut.
    assert KEY[:8] not in message
    assert KEY not in str(excinfo.value)


def naming_the_key_in_its_cause() -> Exception:
    failure = requests.ConnectionError("connection reset")
    failure.__cause__ = ValueError(f"header Bearer {KEY}")
    return failure


@pytest.mark.parametrize(
    "failure",
    [
        requests.ConnectionError(f"failed with {KEY}"),
        requests.exceptions.ChunkedEncodingError(f"cut, Bearer {KEY}"),
        requests.exceptions.InvalidHeader(f"Invalid header value b'Bearer {KEY}\\n'"),
        requests.exceptions.ContentDecodingError(("undecodable", KEY)),
        naming_the_key_in_its_cause(),
    ],
    ids=["connection", "cut-off", "invalid-header", "in-args", "in-cause"],
)
def test_a_transport_failure_naming_the_key_does_not_carry_it(api, settings, failure):
    settings.LEDGEPAY_MAX_RETRIES = 0
    api.get(f"{API}/payments/pay_1", body=failure)

    with pytest.raises(LedgePayError) as excinfo:
        LedgePayClient().retrieve_payment("pay_1")

    error = excinfo.value
    assert KEY not in str(error)
    assert KEY not in repr(error)
    # The failure is left out of the chain, so no traceback or error report shows it.
    assert error.__cause__ is None
    assert error.__suppress_context__ is True


@pytest.mark.parametrize(
    "api_key",
    [
        "sk_test_from_a_file\n",
        "sk_test_abc\r\nX-Injected: 1",
        " sk_test_abc",
        "sk_test_abc def",
        "sk_test_abc\tdef",
        "sk_test_abc\u2013def",
        "sk_test_caf\u00e9",
        "sk_test_\x00",
    ],
)
def test_a_key_that_cannot_go_in_a_header_is_improperly_configured(api, settings, api_key):
    settings.LEDGEPAY_API_KEY = api_key
    api.get(f"{API}/payments/pay_1", json=PAYMENT)

    with pytest.raises(ImproperlyConfigured, match="LEDGEPAY_API_KEY") as excinfo:
        LedgePayClient().retrieve_payment("pay_1")

    assert "sk_test" not in str(excinfo.value)
    assert "sk_test" not in repr(excinfo.value)
    assert len(api.calls) == 0


def pieces_of_the_key(text: str, key: str = KEY) -> list[str]:
    """Every run of 8 consecutive characters of ``key`` that ``text`` holds."""
    return [
        key[start : start + 8] for start in range(len(key) - 7) if key[start : start + 8] in text
    ]


@pytest.mark.parametrize(
    "echo",
    [KEY[:8], KEY[:13] + "...", "..." + KEY[-9:], KEY[8:20], f"{KEY[:10]}***{KEY[-8:]}"],
    ids=["prefix", "longer-prefix", "suffix", "middle", "prefix-and-suffix"],
)
def test_a_piece_of_the_key_echoed_in_an_answer_is_redacted(api, echo):
    body = error_body(f"Invalid API key {echo} provided", "authentication_error", param=echo)
    api.get(f"{API}/payments/pay_1", json=body, status=401)

    with pytest.raises(AuthenticationError) as excinfo:
        LedgePayClient().retrieve_payment("pay_1")

    error = excinfo.value
    assert "[redacted]" in error.message
    assert pieces_of_the_key(repr(vars(error))) == []
    assert pieces_of_the_key(str(error)) == []


def test_a_piece_of_the_key_in_raw_text_is_redacted(api):
    api.get(f"{API}/payments/pay_1", body=f"key {KEY[:12]} is not valid", status=401)

    with pytest.raises(AuthenticationError) as excinfo:
        LedgePayClient().retrieve_payment("pay_1")

    assert excinfo.value.message == "key [redacted] is not valid"


@pytest.mark.parametrize(
    ("text", "redacted"),
    [
        (f"a {KEY} b", "a [redacted] b"),
        (f"a {KEY[:8]} b", "a [redacted] b"),
        (f"a {KEY[:7]} b", f"a {KEY[:7]} b"),
        (f"{KEY[3:11]}{KEY[3:11]}", "[redacted]"),
        (f"{KEY[:9]} and {KEY[-9:]}", "[redacted] and [redacted]"),
        ("nothing here", "nothing here"),
        ("", ""),
    ],
)
def test_redact_hides_every_run_of_eight_characters_of_the_key(text, redacted):
    assert client.redact(text) == redacted
    assert client.redact(text, KEY) == redacted


def test_redact_hides_a_short_key_whole(settings):
    assert client.redact("key abc123 and abc12", "abc123") == "key [redacted] and abc12"
    settings.LEDGEPAY_API_KEY = ""
    assert client.redact(f"key {KEY}") == f"key {KEY}"


def test_a_transport_failure_naming_a_piece_of_the_key_does_not_carry_it(api, settings):
    settings.LEDGEPAY_MAX_RETRIES = 0
    failure = requests.ConnectionError(f"reset while sending Bearer {KEY[:12]}")
    api.get(f"{API}/payments/pay_1", body=failure)

    with pytest.raises(APIConnectionError) as excinfo:
        LedgePayClient().retrieve_payment("pay_1")

    assert excinfo.value.__cause__ is None
    assert excinfo.value.__suppress_context__ is True


@pytest.mark.django_db
def test_a_refund_request_keeps_no_piece_of_the_key_an_answer_echoed(api, settings):
    settings.LEDGEPAY_MAX_RETRIES = 0
    payment = make_payment()
    body = error_body(f"Upstream rejected key {KEY[:14]}", "api_error")
    api.post(f"{API}/refunds", json=body, status=500)

    with pytest.raises(APIError):
        services.refund_payment(payment)

    request = RefundRequest.objects.get()
    assert "[redacted]" in request.error
    assert pieces_of_the_key(request.error) == []


# Redirects are never followed


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_a_redirect_is_not_followed_and_is_an_api_error(api, sleeps, status, method):
    elsewhere = "https://elsewhere.example/v1/payments"
    api.add(method, f"{API}/payments", status=status, headers={"Location": elsewhere})
    api.add(method, elsewhere, json={"data": [], "has_more": False, **PAYMENT}, status=200)

    lp = LedgePayClient()
    with pytest.raises(APIError, match=f"HTTP {status}") as excinfo:
        if method == "POST":
            lp.create_payment(PARAMS)
        else:
            lp.list_payments()

    assert excinfo.value.http_status == status
    assert "redirect" in excinfo.value.message
    # Sent once, to LedgePay only: neither followed nor retried.
    assert [call.request.url.split("?")[0] for call in api.calls] == [f"{API}/payments"]
    assert sleeps == []


def test_every_request_is_sent_without_following_redirects(api, monkeypatch):
    sent: list[dict[str, Any]] = []
    session = client.get_session()
    original = session.request

    def request(*args: Any, **kwargs: Any) -> Any:
        sent.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(session, "request", request)
    api.get(f"{API}/payments/pay_1", json=PAYMENT)
    api.post(f"{API}/refunds", json=REFUND, status=201)

    LedgePayClient().retrieve_payment("pay_1")
    LedgePayClient().create_refund({"payment_id": "pay_1"})

    assert [kwargs["allow_redirects"] for kwargs in sent] == [False, False]


SECRET_KEY = "sk_live_DistinctiveKey_4f9a2c71"


def failed_call() -> tuple[type[BaseException], BaseException, TracebackType]:
    """Call the client and return the ``sys.exc_info()`` of its failure.

    Its own frame holds no key, so only the client's frames could show one.
    """
    try:
        LedgePayClient().retrieve_payment("pay_1")
    except LedgePayError:
        exc_type, exc_value, tb = sys.exc_info()
        assert exc_type is not None and exc_value is not None and tb is not None
        return exc_type, exc_value, tb
    raise AssertionError("the call did not fail")


@pytest.mark.parametrize(
    ("failure", "error_class"),
    [
        ({"body": requests.ConnectionError("connection reset by peer")}, APIConnectionError),
        ({"body": requests.exceptions.ChunkedEncodingError("cut off")}, APIConnectionError),
        ({"status": 500, "json": error_body("Internal error", "api_error")}, APIError),
    ],
)
@pytest.mark.parametrize("with_request", [True, False])
def test_django_error_reports_do_not_show_the_key(
    api, settings, sleeps, failure, error_class, with_request
):
    settings.LEDGEPAY_API_KEY = SECRET_KEY
    settings.LEDGEPAY_MAX_RETRIES = 1
    api.get(f"{API}/payments/pay_1", **failure)

    exc_type, exc_value, tb = failed_call()
    request = RequestFactory().get("/") if with_request else None
    reporter = ExceptionReporter(request, exc_type, exc_value, tb, is_email=False)
    html = reporter.get_traceback_html()
    text = reporter.get_traceback_text()

    assert exc_type is error_class
    assert len(api.calls) == 2
    assert SECRET_KEY not in html
    assert SECRET_KEY not in text
    assert SECRET_KEY not in repr(exc_value.__cause__)
    # The report does list the client's frame and its variables, cleansed...
    assert "django_ledgepay/client.py" in text
    assert "api_key" in html
    assert "********************" in html
    if error_class is APIConnectionError:
        # ...and the frames of requests below it, where the headers travel.
        assert "requests/sessions.py" in text
    assert SECRET_KEY not in str(exc_value.__cause__)


def test_the_client_repr_shows_no_key():
    text = repr(LedgePayClient())

    assert KEY not in text
    assert API in text


def test_improperly_configured_names_the_setting_not_a_value(settings):
    settings.LEDGEPAY_API_KEY = ""

    with pytest.raises(ImproperlyConfigured) as excinfo:
        LedgePayClient().retrieve_payment("pay_1")

    assert "LEDGEPAY_API_KEY" in str(excinfo.value)


def test_no_log_line_shows_the_key(api, settings, sleeps, caplog):
    caplog.set_level(logging.DEBUG, logger="django_ledgepay")
    caplog.set_level(logging.DEBUG, logger="urllib3")
    settings.LEDGEPAY_MAX_RETRIES = 3
    settings.LEDGEPAY_MAX_WAIT = 3600
    api.post(f"{API}/payments", status=500, body=f"upstream said {KEY}")
    api.post(f"{API}/payments", body=requests.ConnectionError(f"reset {KEY}"))
    api.post(f"{API}/payments", status=429, headers={"Retry-After": "1"})
    api.post(f"{API}/payments", json=PAYMENT, status=201, headers=rate_headers(0, 10**10))
    api.get(f"{API}/payments/pay_1", status=401, json=error_body(f"Bad key {KEY}"))

    lp = LedgePayClient()
    lp.create_payment(PARAMS)
    with pytest.raises(AuthenticationError):
        lp.retrieve_payment("pay_1")

    retries = [r for r in caplog.records if r.levelno == logging.WARNING]
    waits = [r for r in caplog.records if r.levelno == logging.INFO]
    answers = [r for r in caplog.records if r.levelno == logging.DEBUG]
    assert len(retries) == 3
    assert len(waits) == 1  # for the exhausted window before the GET
    assert len(answers) == 4  # 500, 429, 201, 401
    assert sleeps[-1] == RATE_LIMIT_WAIT_CAP
    assert "retry 1 of 3" in caplog.text
    assert KEY not in caplog.text
    for record in caplog.records:
        assert KEY not in record.getMessage()
