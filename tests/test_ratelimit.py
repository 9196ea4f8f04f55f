"""The project's rate-limit budget: the last reading and a 429's pause kept in the shared
cache, and the reserve background callers leave to checkout and refunds."""

from __future__ import annotations

import logging

import pytest
import requests
import responses

from django.core.cache import caches

from django_ledgepay import client, ratelimit, sharedcache
from django_ledgepay.client import LedgePayClient
from django_ledgepay.exceptions import RateLimitError
from django_ledgepay.ratelimit import RateLimit
from tests.conftest import API
from tests.test_client import KEY, PAYMENT, REFUND, Clock, rate_headers

URL = f"{API}/payments/pay_1"


@pytest.fixture
def clock(monkeypatch):
    fake = Clock()
    monkeypatch.setattr(client, "now", fake.now)
    monkeypatch.setattr(client, "sleep", fake.sleep)
    return fake


def answered_with(api: responses.RequestsMock, headers: dict[str, str]) -> None:
    """One call whose answer carries ``headers``; later calls are answered plainly."""
    api.get(URL, json=PAYMENT, headers=headers)
    LedgePayClient().retrieve_payment("pay_1")
    api.replace(responses.GET, URL, json=PAYMENT)


# The reserve background callers leave


@pytest.mark.parametrize("remaining", [1, 5, 10])
def test_a_background_call_leaves_the_reserve_and_waits_for_the_next_window(api, clock, remaining):
    answered_with(api, rate_headers(remaining, clock.time + 20))

    with client.background():
        LedgePayClient().retrieve_payment("pay_1")

    assert clock.waits == [20.0]
    assert len(api.calls) == 2


@pytest.mark.parametrize("remaining", [1, 10])
def test_checkout_and_refunds_use_the_reserve(api, clock, remaining):
    answered_with(api, rate_headers(remaining, clock.time + 20))
    api.post(f"{API}/refunds", json=REFUND, status=201)

    LedgePayClient().retrieve_payment("pay_1")
    LedgePayClient().create_refund({"payment_id": "pay_1"})

    assert clock.waits == []
    assert len(api.calls) == 3


def test_a_background_call_above_the_reserve_is_sent_at_once(api, clock):
    answered_with(api, rate_headers(11, clock.time + 20))

    with client.background():
        LedgePayClient().retrieve_payment("pay_1")

    assert clock.waits == []


def test_the_reserve_comes_from_the_settings(api, settings, clock):
    settings.LEDGEPAY_RATE_LIMIT_RESERVE = 3
    answered_with(api, rate_headers(4, clock.time + 20))
    with client.background():
        LedgePayClient().retrieve_payment("pay_1")
    assert clock.waits == []

    answered_with(api, rate_headers(3, clock.time + 20))
    with client.background():
        LedgePayClient().retrieve_payment("pay_1")
    assert clock.waits == [20.0]


def test_a_reserve_of_zero_lets_background_calls_use_the_whole_window(api, settings, clock):
    settings.LEDGEPAY_RATE_LIMIT_RESERVE = 0
    answered_with(api, rate_headers(1, clock.time + 20))

    with client.background():
        LedgePayClient().retrieve_payment("pay_1")

    assert clock.waits == []


def test_a_background_call_waits_for_an_exhausted_window_like_any_other(api, clock):
    answered_with(api, rate_headers(0, clock.time + 20))

    with client.background():
        LedgePayClient().retrieve_payment("pay_1")

    assert clock.waits == [20.0]


def test_no_reserve_wait_for_a_window_already_reset(api, clock):
    answered_with(api, rate_headers(2, clock.time - 1))

    with client.background():
        LedgePayClient().retrieve_payment("pay_1")

    assert clock.waits == []


def test_background_waits_past_max_wait_as_patience_none_does(api, settings, clock):
    settings.LEDGEPAY_MAX_WAIT = 0
    answered_with(api, rate_headers(2, clock.time + 45))

    with client.background():
        LedgePayClient().retrieve_payment("pay_1")

    assert clock.waits == [45.0]


def test_a_background_call_with_little_patience_sends_nothing(api, clock, caplog):
    answered_with(api, rate_headers(2, clock.time + 45))

    with client.background(5), pytest.raises(RateLimitError) as excinfo:
        LedgePayClient().retrieve_payment("pay_1")

    assert str(excinfo.value) == (
        "LedgePay's rate limit is down to the requests left for checkout and refunds"
        " (LEDGEPAY_RATE_LIMIT_RESERVE) for 45s more, longer than this call may wait"
        " (LEDGEPAY_MAX_WAIT); GET /payments/pay_1 was not sent."
    )
    assert len(api.calls) == 1


def test_background_is_undone_after_its_block(api, clock):
    answered_with(api, rate_headers(5, clock.time + 20))
    with client.background():
        pass

    LedgePayClient().retrieve_payment("pay_1")

    assert clock.waits == []


def test_a_background_wait_is_logged(api, clock, caplog):
    answered_with(api, rate_headers(5, clock.time + 20))

    with caplog.at_level(logging.INFO, logger="django_ledgepay"), client.background():
        LedgePayClient().retrieve_payment("pay_1")

    assert "down to the reserve for checkout and refunds" in caplog.text
    assert "waiting 20.00s" in caplog.text


# A 429's pause, kept for every process


def test_a_429s_pause_holds_the_next_calls_too(api, settings, clock):
    settings.LEDGEPAY_MAX_RETRIES = 0
    api.get(URL, status=429, headers={"Retry-After": "30"})
    with pytest.raises(RateLimitError):
        LedgePayClient().retrieve_payment("pay_1")
    api.post(f"{API}/refunds", json=REFUND, status=201)

    with pytest.raises(RateLimitError) as excinfo:
        LedgePayClient().create_refund({"payment_id": "pay_1"})

    assert str(excinfo.value) == (
        "LedgePay asked for a pause (429) for 30s more, longer than this call may wait"
        " (LEDGEPAY_MAX_WAIT); POST /refunds was not sent."
    )
    assert [call.request.method for call in api.calls] == ["GET"]


def test_a_call_with_patience_waits_out_the_pause_another_call_got(api, settings, clock):
    settings.LEDGEPAY_MAX_RETRIES = 0
    api.get(URL, status=429, headers={"Retry-After": "30"})
    with pytest.raises(RateLimitError):
        LedgePayClient().retrieve_payment("pay_1")
    clock.time += 10
    api.replace(responses.GET, URL, json=PAYMENT)

    with client.patience(None):
        LedgePayClient().retrieve_payment("pay_1")

    assert clock.waits == [20.0]


def test_the_call_that_got_the_429_waits_it_out_once(api, clock):
    api.get(URL, status=429, headers={"Retry-After": "8"})
    api.get(URL, json=PAYMENT)

    LedgePayClient().retrieve_payment("pay_1")

    assert clock.waits == [8.0]


def test_a_longer_pause_kept_already_stays(clock):
    until = ratelimit.record_pause(30, clock.time)
    ratelimit.record_pause(5, clock.time)

    assert until == clock.time + 30
    assert ratelimit.record_pause(5, clock.time) == clock.time + 5  # its own end
    assert sharedcache.read(ratelimit.PAUSE) == clock.time + 30


def test_a_call_that_waited_its_own_pause_still_waits_a_longer_one(api, clock):
    def longer_pause(request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
        # Another process got a 429 asking for longer while this call waited.
        ratelimit.record_pause(20, clock.time)
        return 429, {"Retry-After": "5"}, "{}"

    api.add_callback(responses.GET, URL, callback=longer_pause)
    api.get(URL, json=PAYMENT)

    with client.patience(None):
        LedgePayClient().retrieve_payment("pay_1")

    assert clock.waits == [5.0, 15.0]


def test_a_429_without_a_wait_keeps_no_pause(api, settings, clock):
    settings.LEDGEPAY_MAX_RETRIES = 0
    api.get(URL, status=429)
    with pytest.raises(RateLimitError):
        LedgePayClient().retrieve_payment("pay_1")

    assert sharedcache.read(ratelimit.PAUSE) is None


# Where the budget is kept


def test_the_reading_is_kept_in_the_default_cache_as_numbers(api, clock):
    answered_with(api, rate_headers(41, clock.time + 30, limit=50))

    kept = caches["default"].get(sharedcache.key(ratelimit.WINDOW))

    assert kept == (50, 41, float(int(clock.time + 30)))
    assert client.last_rate_limit() == RateLimit(
        limit=50, remaining=41, reset=int(clock.time + 30)
    )
    assert KEY not in repr(kept)


def test_the_rate_limit_cache_setting_names_the_cache(api, settings, clock):
    settings.CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
        "ledgepay": {
            "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
            "LOCATION": "ledgepay-budget",
        },
    }
    settings.LEDGEPAY_RATE_LIMIT_CACHE = "ledgepay"
    answered_with(api, rate_headers(0, clock.time + 30))

    assert caches["default"].get(sharedcache.key(ratelimit.WINDOW)) is None
    assert caches["ledgepay"].get(sharedcache.key(ratelimit.WINDOW)) is not None
    caches["ledgepay"].clear()


@pytest.mark.parametrize("backend", [None, "django.core.cache.backends.dummy.DummyCache"])
def test_without_a_shared_cache_the_budget_is_the_processs_own(api, settings, clock, backend):
    if backend is None:
        settings.LEDGEPAY_RATE_LIMIT_CACHE = None
    else:
        settings.CACHES = {"default": {"BACKEND": backend}}
    answered_with(api, rate_headers(0, clock.time + 15))

    LedgePayClient().retrieve_payment("pay_1")

    assert clock.waits == [15.0]  # still waited for the window, in this process
    assert sharedcache.is_shared() is False
    assert caches["default"].get(sharedcache.key(ratelimit.WINDOW)) is None


def test_an_unreadable_value_in_the_cache_is_no_reading(api, clock):
    caches["default"].set(sharedcache.key(ratelimit.WINDOW), "junk")
    caches["default"].set(sharedcache.key(ratelimit.PAUSE), "junk")

    api.get(URL, json=PAYMENT)

    LedgePayClient().retrieve_payment("pay_1")

    assert client.last_rate_limit() is None
    assert clock.waits == []


@pytest.mark.parametrize(
    "value",
    [None, "junk", (1, 2), (1, "2", 3), (True, 1, 2.0), [100, 0, float("nan")]],
)
def test_from_value_refuses_what_it_did_not_write(value):
    assert RateLimit.from_value(value) is None


def test_from_value_reads_what_as_value_wrote():
    reading = RateLimit(limit=100, remaining=3, reset=1_700_000_030.0)

    assert RateLimit.from_value(reading.as_value()) == reading
    assert RateLimit.from_value(RateLimit(remaining=3).as_value()) == RateLimit(remaining=3)
