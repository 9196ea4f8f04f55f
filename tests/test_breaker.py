"""The circuit breaker: opening after calls in a row found LedgePay down, failing fast with
nothing sent, and letting one call through after the cooldown."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
import requests
import responses

from django.core.cache import caches

from django_ledgepay import breaker, client, sharedcache
from django_ledgepay.client import LedgePayClient
from django_ledgepay.exceptions import (
    APIConnectionError,
    APIError,
    AuthenticationError,
    LedgePayUnavailableError,
    NotFoundError,
    RateLimitError,
)
from tests.conftest import API
from tests.test_client import KEY, PAYMENT, Clock, error_body, rate_headers

URL = f"{API}/payments/pay_1"


@pytest.fixture
def clock(monkeypatch):
    fake = Clock()
    monkeypatch.setattr(client, "now", fake.now)
    monkeypatch.setattr(client, "sleep", fake.sleep)
    return fake


@pytest.fixture(autouse=True)
def _one_attempt_a_call(settings):
    # One attempt per call, so each failure below is one call; retries are tested apart.
    settings.LEDGEPAY_MAX_RETRIES = 0


def fail(times: int = 1, *, status: int | None = None) -> None:
    """Make ``times`` calls that find LedgePay down: a dropped connection, or ``status``."""
    for _ in range(times):
        with pytest.raises((APIConnectionError, APIError)):
            LedgePayClient().retrieve_payment("pay_1")


def down(api: responses.RequestsMock, status: int | None = None) -> None:
    if status is None:
        api.get(URL, body=requests.ConnectionError("connection refused"))
    else:
        api.get(URL, status=status, json=error_body("Upstream failed", "api_error"))


# Opening


@pytest.mark.parametrize(
    "failure",
    [
        {"body": requests.ConnectionError("connection refused")},
        {"body": requests.Timeout("read timed out")},
        {"body": requests.exceptions.ChunkedEncodingError("cut off")},
        {"status": 500, "json": error_body("Internal error", "api_error")},
        {"status": 503},
    ],
    ids=["connection", "timeout", "cut-off", "500", "503"],
)
def test_five_calls_down_in_a_row_open_it_and_the_sixth_sends_nothing(api, clock, failure):
    api.get(URL, **failure)
    lp = LedgePayClient()
    for _ in range(5):
        with pytest.raises(APIConnectionError if "body" in failure else APIError):
            lp.retrieve_payment("pay_1")
    assert len(api.calls) == 5

    with pytest.raises(LedgePayUnavailableError) as excinfo:
        lp.retrieve_payment("pay_1")

    assert len(api.calls) == 5  # failed at once: nothing sent
    error = excinfo.value
    assert isinstance(error, APIConnectionError)
    assert error.http_status is None
    assert error.retry_after == 30
    assert "GET /payments/pay_1 was not sent" in str(error)
    assert "LEDGEPAY_BREAKER_COOLDOWN" in str(error)


def test_four_calls_down_leave_it_closed(api, clock):
    down(api)
    fail(4)
    api.replace(responses.GET, URL, json=PAYMENT)

    assert LedgePayClient().retrieve_payment("pay_1") == PAYMENT


def test_posts_are_refused_too_with_nothing_sent(api, clock):
    down(api)
    fail(5)
    api.post(f"{API}/refunds", json={"id": "re_1"}, status=201)

    with pytest.raises(LedgePayUnavailableError, match="POST /refunds was not sent"):
        LedgePayClient().create_refund({"payment_id": "pay_1"})

    assert [call.request.method for call in api.calls] == ["GET"] * 5


def test_an_answer_between_failures_starts_the_count_again(api, clock):
    down(api)
    fail(4)
    api.replace(responses.GET, URL, json=PAYMENT)
    LedgePayClient().retrieve_payment("pay_1")
    down_again = requests.ConnectionError("connection refused")
    api.replace(responses.GET, URL, body=down_again)
    fail(4)

    with pytest.raises(APIConnectionError) as excinfo:
        LedgePayClient().retrieve_payment("pay_1")

    assert not isinstance(excinfo.value, LedgePayUnavailableError)  # the 5th: sent, failed
    assert len(api.calls) == 10


@pytest.mark.parametrize(
    ("status", "error_class"),
    [(401, AuthenticationError), (404, NotFoundError), (429, RateLimitError)],
)
def test_an_error_answer_is_an_answer_and_closes_the_count(api, clock, status, error_class):
    down(api)
    fail(4)
    api.replace(responses.GET, URL, status=status, json=error_body("no"))
    with pytest.raises(error_class):
        LedgePayClient().retrieve_payment("pay_1")
    api.replace(responses.GET, URL, body=requests.ConnectionError("refused"))

    fail(4)

    assert sharedcache.read(breaker.OPEN_UNTIL) is None


def test_a_call_counts_once_after_its_retries(api, settings, sleeps):
    settings.LEDGEPAY_MAX_RETRIES = 3
    down(api, status=502)

    fail(4)

    assert len(api.calls) == 16  # four calls of four attempts: not open yet
    assert sharedcache.read(breaker.FAILURES) == 4
    fail(1)
    with pytest.raises(LedgePayUnavailableError):
        LedgePayClient().retrieve_payment("pay_1")
    assert len(api.calls) == 20


def test_a_call_that_recovers_on_a_retry_is_an_answer(api, settings, sleeps):
    settings.LEDGEPAY_MAX_RETRIES = 1
    attempts: list[int] = []

    def answer(request: Any) -> Exception | tuple[int, dict[str, str], str]:
        # Four calls of two failed attempts, then one failure more and an answer.
        attempts.append(1)
        if len(attempts) <= 9:
            return requests.ConnectionError("connection refused")
        return 200, {}, json.dumps(PAYMENT)

    api.add_callback(responses.GET, URL, callback=answer)
    fail(4)
    assert sharedcache.read(breaker.FAILURES) == 4

    assert LedgePayClient().retrieve_payment("pay_1") == PAYMENT

    assert len(attempts) == 10
    assert sharedcache.read(breaker.FAILURES) is None


def test_threshold_and_cooldown_come_from_the_settings(api, settings, clock):
    settings.LEDGEPAY_BREAKER_THRESHOLD = 2
    settings.LEDGEPAY_BREAKER_COOLDOWN = 7.5
    down(api)
    fail(2)

    with pytest.raises(LedgePayUnavailableError) as excinfo:
        LedgePayClient().retrieve_payment("pay_1")

    assert excinfo.value.retry_after == 7.5
    assert len(api.calls) == 2


def test_threshold_zero_turns_it_off(api, settings, clock):
    settings.LEDGEPAY_BREAKER_THRESHOLD = 0
    down(api)

    fail(20)

    assert len(api.calls) == 20
    assert sharedcache.read(breaker.FAILURES) is None


def test_it_opens_with_a_warning_once(api, clock, caplog):
    down(api)
    with caplog.at_level(logging.WARNING, logger="django_ledgepay.breaker"):
        fail(5)
        for _ in range(3):
            with pytest.raises(LedgePayUnavailableError):
                LedgePayClient().retrieve_payment("pay_1")

    opened = [r for r in caplog.records if r.name == "django_ledgepay.breaker"]
    assert len(opened) == 1
    assert "circuit breaker open: 5 calls in a row" in opened[0].getMessage()
    assert KEY not in caplog.text


# After the cooldown: one call is let through


def test_after_the_cooldown_one_call_is_let_through_and_its_answer_closes_it(api, clock):
    down(api)
    fail(5)
    clock.time += 29.9
    with pytest.raises(LedgePayUnavailableError):
        LedgePayClient().retrieve_payment("pay_1")
    clock.time += 0.1
    api.replace(responses.GET, URL, json=PAYMENT)

    assert LedgePayClient().retrieve_payment("pay_1") == PAYMENT
    assert LedgePayClient().retrieve_payment("pay_1") == PAYMENT

    assert len(api.calls) == 7
    assert sharedcache.read_many(breaker.NAMES) == {}


def test_a_trial_that_fails_opens_it_for_another_cooldown(api, clock):
    down(api)
    fail(5)
    clock.time += 30

    fail(1)  # the trial: sent, and LedgePay is still down

    assert len(api.calls) == 6
    with pytest.raises(LedgePayUnavailableError) as excinfo:
        LedgePayClient().retrieve_payment("pay_1")
    assert excinfo.value.retry_after == 30
    assert len(api.calls) == 6
    clock.time += 30
    api.replace(responses.GET, URL, json=PAYMENT)
    assert LedgePayClient().retrieve_payment("pay_1") == PAYMENT


def test_while_the_trial_is_out_other_calls_are_refused(api, clock):
    down(api)
    fail(5)
    clock.time += 30
    others: list[LedgePayUnavailableError] = []

    def trial_answer(request: Any) -> tuple[int, dict[str, str], str]:
        # Another call arrives while the trial waits for LedgePay's answer.
        try:
            LedgePayClient().retrieve_payment("pay_2")
        except LedgePayUnavailableError as err:
            others.append(err)
        return 200, {}, json.dumps(PAYMENT)

    api.remove(responses.GET, URL)
    api.add_callback(responses.GET, URL, callback=trial_answer)

    assert LedgePayClient().retrieve_payment("pay_1") == PAYMENT

    assert len(others) == 1
    assert others[0].retry_after == 0
    assert "another call is trying" in str(others[0])
    assert "GET /payments/pay_2 was not sent" in str(others[0])
    assert len(api.calls) == 6  # pay_2 was never sent


def test_a_trial_that_sends_nothing_frees_the_trial(api, settings, clock):
    down(api)
    fail(5)
    clock.time += 30
    # A used-up window another process recorded: the trial may not wait for it.
    headers = rate_headers(0, clock.time + 45)
    client.LedgePayClient()._record_rate_limit(_response(headers))
    with pytest.raises(RateLimitError, match="was not sent"):
        LedgePayClient().retrieve_payment("pay_1")
    clock.time += 45
    api.replace(responses.GET, URL, json=PAYMENT)

    assert LedgePayClient().retrieve_payment("pay_1") == PAYMENT  # the next trial


def _response(headers: dict[str, str]) -> requests.Response:
    response = requests.Response()
    response.headers.update(headers)
    return response


# Kept in the shared cache


def test_its_state_is_kept_in_the_shared_cache_without_the_key(api, clock):
    down(api)
    fail(5)

    cache = caches["default"]
    kept = {name: cache.get(sharedcache.key(name)) for name in breaker.NAMES}

    assert kept[breaker.FAILURES] == 5
    assert kept[breaker.OPEN_UNTIL] == clock.time + 30
    for name, value in kept.items():
        assert KEY not in repr(value)
        assert KEY[:8] not in sharedcache.key(name)


def test_another_api_key_has_its_own_breaker(api, settings, clock):
    down(api)
    fail(5)
    settings.LEDGEPAY_API_KEY = "sk_test_another_account_456"
    api.replace(responses.GET, URL, json=PAYMENT)

    assert LedgePayClient().retrieve_payment("pay_1") == PAYMENT


def test_another_project_sharing_the_cache_has_its_own_breaker(api, settings, clock):
    down(api)
    fail(5)
    settings.SECRET_KEY = "another-project-entirely"
    api.replace(responses.GET, URL, json=PAYMENT)

    assert LedgePayClient().retrieve_payment("pay_1") == PAYMENT


def test_reset_state_closes_it(api, clock):
    down(api)
    fail(5)

    client.reset_state()

    api.replace(responses.GET, URL, json=PAYMENT)
    assert LedgePayClient().retrieve_payment("pay_1") == PAYMENT


def test_is_open_tells_a_health_check(api, clock):
    assert breaker.is_open(clock.time) is False
    down(api)
    fail(5)
    assert breaker.is_open(clock.time) is True
    assert breaker.is_open(clock.time + 30) is False
