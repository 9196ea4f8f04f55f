"""The cache the rate-limit budget and the circuit breaker are shared through: its keys, its
failures, its settings, their checks, and the helper that resets it in tests."""

from __future__ import annotations

import logging
from io import StringIO
from typing import Any

import pytest
import requests
import responses

from django.core.cache import BaseCache, caches
from django.core.checks import Error, Warning, run_checks
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.core.management.base import SystemCheckError

from django_ledgepay import breaker, client, ratelimit, sharedcache
from django_ledgepay.checks import check_shared_state
from django_ledgepay.client import LedgePayClient
from django_ledgepay.conf import conf
from django_ledgepay.exceptions import APIConnectionError, LedgePayUnavailableError
from django_ledgepay.testing import reset_client_state
from tests.conftest import API
from tests.test_client import KEY, PAYMENT, rate_headers

URL = f"{API}/payments/pay_1"
LOCMEM = "django.core.cache.backends.locmem.LocMemCache"


class BrokenCache(BaseCache):
    """A cache whose server is down: every operation raises, as redis-py's do."""

    def __init__(self, location: str, params: dict[str, Any]) -> None:
        super().__init__(params)

    def _fail(self, *args: Any, **kwargs: Any) -> Any:
        raise ConnectionError(f"Error connecting to redis://:hunter2@cache:6379 ({KEY})")

    get = set = add = incr = delete = get_many = delete_many = clear = _fail


# Keys


def test_keys_are_prefixed_and_namespaced():
    full = sharedcache.key(ratelimit.WINDOW)

    prefix, space, name = full.split(":", 2)
    assert (prefix, name) == ("django_ledgepay", "ratelimit:window")
    assert len(space) == 32
    assert KEY not in full
    assert KEY[:8] not in full


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("SECRET_KEY", "another-project"),
        ("LEDGEPAY_API_KEY", "sk_test_another_account"),
        ("LEDGEPAY_API_BASE", "https://eu.api.ledgepay.test/v1"),
    ],
)
def test_another_project_or_account_has_other_keys(settings, setting, value):
    before = sharedcache.key(breaker.FAILURES)

    setattr(settings, setting, value)

    assert sharedcache.key(breaker.FAILURES) != before


def test_two_projects_sharing_a_cache_do_not_share_a_budget(api, settings):
    reset = 10**10
    api.get(URL, json=PAYMENT, headers=rate_headers(0, reset))
    LedgePayClient().retrieve_payment("pay_1")
    assert client.last_rate_limit() is not None

    settings.SECRET_KEY = "another-project"

    assert client.last_rate_limit() is None


# A cache that fails


@pytest.fixture
def broken_cache(settings):
    settings.CACHES = {
        "default": {"BACKEND": LOCMEM},
        "broken": {"BACKEND": "tests.test_sharedcache.BrokenCache"},
    }
    settings.LEDGEPAY_RATE_LIMIT_CACHE = "broken"
    return caches["broken"]


def test_a_cache_that_fails_never_fails_a_call(api, settings, broken_cache, caplog):
    settings.LEDGEPAY_MAX_RETRIES = 0
    api.get(URL, json=PAYMENT, headers=rate_headers(3, 10**10))

    with caplog.at_level(logging.WARNING, logger="django_ledgepay"):
        for _ in range(3):
            assert LedgePayClient().retrieve_payment("pay_1") == PAYMENT

    # The budget and the breaker go on in this process meanwhile...
    reading = client.last_rate_limit()
    assert reading is not None and reading.remaining == 3
    # ...and the failure is logged once, by its type only: no URL, password or key.
    failures = [r for r in caplog.records if "LEDGEPAY_RATE_LIMIT_CACHE failed" in r.message]
    assert len(failures) == 1
    assert "(ConnectionError)" in failures[0].getMessage()
    assert "hunter2" not in caplog.text
    assert KEY not in caplog.text


def test_the_breaker_works_in_the_process_while_the_cache_fails(api, settings, broken_cache):
    settings.LEDGEPAY_MAX_RETRIES = 0
    api.get(URL, body=requests.ConnectionError("refused"))
    for _ in range(5):
        with pytest.raises(APIConnectionError):
            LedgePayClient().retrieve_payment("pay_1")

    with pytest.raises(LedgePayUnavailableError):
        LedgePayClient().retrieve_payment("pay_1")
    assert len(api.calls) == 5


@pytest.mark.parametrize("alias", ["missing", 42])
def test_a_rate_limit_cache_that_is_not_a_cache_is_improperly_configured(api, settings, alias):
    settings.LEDGEPAY_RATE_LIMIT_CACHE = alias
    api.get(URL, json=PAYMENT)

    with pytest.raises(ImproperlyConfigured, match="LEDGEPAY_RATE_LIMIT_CACHE"):
        LedgePayClient().retrieve_payment("pay_1")

    assert len(api.calls) == 0


# Resetting, for tests


def test_reset_client_state_forgets_the_budget_and_the_breaker(api, settings):
    settings.LEDGEPAY_MAX_RETRIES = 0
    api.get(URL, body=requests.ConnectionError("refused"))
    for _ in range(5):
        with pytest.raises(APIConnectionError):
            LedgePayClient().retrieve_payment("pay_1")
    ratelimit.record_pause(30, client.now())
    ratelimit.record(ratelimit.RateLimit(remaining=0, reset=client.now() + 30), client.now())

    reset_client_state()

    assert sharedcache.read_many(ratelimit.NAMES + breaker.NAMES) == {}
    api.replace(responses.GET, URL, json=PAYMENT)
    assert LedgePayClient().retrieve_payment("pay_1") == PAYMENT


def test_reset_client_state_forgets_the_state_of_keys_used_before(settings):
    settings.LEDGEPAY_API_KEY = "sk_test_a_key_of_one_test"
    sharedcache.write(breaker.OPEN_UNTIL, 1.0, 60)
    other = sharedcache.key(breaker.OPEN_UNTIL)
    settings.LEDGEPAY_API_KEY = KEY

    reset_client_state()

    assert caches["default"].get(other) is None


def test_reset_client_state_leaves_the_rest_of_the_cache(settings):
    caches["default"].set("the-shops-own", 1)

    reset_client_state()

    assert caches["default"].get("the-shops-own") == 1
    caches["default"].delete("the-shops-own")


# Settings


def test_defaults(settings):
    for name in (
        "LEDGEPAY_RATE_LIMIT_CACHE",
        "LEDGEPAY_RATE_LIMIT_RESERVE",
        "LEDGEPAY_BREAKER_THRESHOLD",
        "LEDGEPAY_BREAKER_COOLDOWN",
    ):
        if hasattr(settings, name):
            delattr(settings, name)

    assert conf.LEDGEPAY_RATE_LIMIT_CACHE == "default"
    assert conf.LEDGEPAY_RATE_LIMIT_RESERVE == 10
    assert conf.LEDGEPAY_BREAKER_THRESHOLD == 5
    assert conf.LEDGEPAY_BREAKER_COOLDOWN == 30


def test_values_from_the_settings(settings):
    settings.LEDGEPAY_RATE_LIMIT_CACHE = None
    settings.LEDGEPAY_RATE_LIMIT_RESERVE = "4"
    settings.LEDGEPAY_BREAKER_THRESHOLD = 0
    settings.LEDGEPAY_BREAKER_COOLDOWN = 2.5

    assert conf.LEDGEPAY_RATE_LIMIT_CACHE is None
    assert conf.LEDGEPAY_RATE_LIMIT_RESERVE == 4
    assert conf.LEDGEPAY_BREAKER_THRESHOLD == 0
    assert conf.LEDGEPAY_BREAKER_COOLDOWN == 2.5


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("LEDGEPAY_RATE_LIMIT_RESERVE", -1, "LEDGEPAY_RATE_LIMIT_RESERVE must not be negative."),
        ("LEDGEPAY_RATE_LIMIT_RESERVE", "ten", "LEDGEPAY_RATE_LIMIT_RESERVE must be a number."),
        ("LEDGEPAY_BREAKER_THRESHOLD", -5, "LEDGEPAY_BREAKER_THRESHOLD must not be negative."),
        ("LEDGEPAY_BREAKER_THRESHOLD", True, "LEDGEPAY_BREAKER_THRESHOLD must be a number."),
        ("LEDGEPAY_BREAKER_COOLDOWN", -0.5, "LEDGEPAY_BREAKER_COOLDOWN must not be negative."),
        ("LEDGEPAY_BREAKER_COOLDOWN", "nan", "LEDGEPAY_BREAKER_COOLDOWN must be a number."),
        (
            "LEDGEPAY_RATE_LIMIT_CACHE",
            ["default"],
            "LEDGEPAY_RATE_LIMIT_CACHE must be an alias of CACHES, or None.",
        ),
    ],
)
def test_a_bad_value_is_improperly_configured_naming_the_setting(settings, name, value, message):
    setattr(settings, name, value)

    with pytest.raises(ImproperlyConfigured) as excinfo:
        getattr(conf, name)

    assert str(excinfo.value) == message


# Checks


E003 = "django_ledgepay.E003"
W007 = "django_ledgepay.W007"
W009 = "django_ledgepay.W009"


def test_no_message_when_everything_is_set():
    assert check_shared_state() == []


@pytest.mark.parametrize("alias", [None, "default"])
def test_no_message_for_none_or_a_cache(settings, alias):
    settings.LEDGEPAY_RATE_LIMIT_CACHE = alias

    assert check_shared_state() == []


def test_e003_for_an_alias_not_in_caches(settings):
    settings.LEDGEPAY_RATE_LIMIT_CACHE = "shared"

    messages = check_shared_state()

    assert [m.id for m in messages] == [E003]
    assert isinstance(messages[0], Error)
    assert messages[0].msg == (
        "LEDGEPAY_RATE_LIMIT_CACHE names the cache 'shared', which is not in CACHES: every "
        "call to LedgePay will fail."
    )
    assert "LEDGEPAY_RATE_LIMIT_CACHE" in str(messages[0].hint)


def test_e003_for_a_cache_that_cannot_be_loaded(settings):
    settings.CACHES = {
        "default": {"BACKEND": LOCMEM},
        "shared": {"BACKEND": "no.such.Backend"},
    }
    settings.LEDGEPAY_RATE_LIMIT_CACHE = "shared"

    messages = check_shared_state()

    assert [m.id for m in messages] == [E003]
    assert "'shared', which cannot be loaded" in messages[0].msg


def test_e003_for_a_value_that_is_not_an_alias(settings):
    settings.LEDGEPAY_RATE_LIMIT_CACHE = 1

    assert [m.id for m in check_shared_state()] == [E003]


def test_w009_for_a_dummy_cache(settings):
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.dummy.DummyCache"}}

    messages = check_shared_state()

    assert [m.id for m in messages] == [W009]
    assert isinstance(messages[0], Warning)
    assert "DummyCache" in messages[0].msg


def test_w007_for_the_numbers(settings):
    settings.LEDGEPAY_RATE_LIMIT_RESERVE = -1
    settings.LEDGEPAY_BREAKER_THRESHOLD = "five"
    settings.LEDGEPAY_BREAKER_COOLDOWN = -30

    messages = check_shared_state()

    assert [m.id for m in messages] == [W007, W007, W007]
    assert [m.msg for m in messages] == [
        "LEDGEPAY_RATE_LIMIT_RESERVE must not be negative.",
        "LEDGEPAY_BREAKER_THRESHOLD must be a number.",
        "LEDGEPAY_BREAKER_COOLDOWN must not be negative.",
    ]


@pytest.mark.django_db
def test_manage_py_check_stops_on_e003(settings):
    settings.LEDGEPAY_RATE_LIMIT_CACHE = "shared"

    with pytest.raises(SystemCheckError, match="django_ledgepay.E003"):
        call_command("check", stdout=StringIO(), stderr=StringIO())


def test_the_checks_run_under_the_caches_tag(settings):
    settings.LEDGEPAY_RATE_LIMIT_CACHE = "shared"

    assert E003 in [m.id for m in run_checks(tags=["caches"])]
