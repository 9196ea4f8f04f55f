from __future__ import annotations

import pytest

from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from django_ledgepay.conf import DEFAULT_API_BASE, Settings, conf


def test_values_come_from_the_project_settings():
    assert conf.LEDGEPAY_API_KEY == "sk_test_tests_secret_key_123"
    assert conf.LEDGEPAY_API_BASE == "https://api.ledgepay.test/v1"
    assert conf.LEDGEPAY_WEBHOOK_SECRET == "whsec_tests"
    assert conf.LEDGEPAY_MAX_RETRIES == 3


def test_defaults_when_the_project_sets_nothing(settings):
    for name in (
        "LEDGEPAY_API_KEY",
        "LEDGEPAY_API_BASE",
        "LEDGEPAY_WEBHOOK_SECRET",
        "LEDGEPAY_WEBHOOK_TOLERANCE",
        "LEDGEPAY_TIMEOUT",
        "LEDGEPAY_MAX_RETRIES",
        "LEDGEPAY_MAX_WAIT",
    ):
        if hasattr(settings, name):
            delattr(settings, name)

    assert conf.LEDGEPAY_API_KEY == ""
    assert conf.LEDGEPAY_API_BASE == "https://api.ledgepay.com/v1" == DEFAULT_API_BASE
    assert conf.LEDGEPAY_WEBHOOK_SECRET == ""
    assert conf.webhook_secrets == []
    assert conf.LEDGEPAY_WEBHOOK_TOLERANCE == 300
    assert conf.LEDGEPAY_TIMEOUT == 10
    assert conf.LEDGEPAY_MAX_RETRIES == 3
    assert conf.LEDGEPAY_MAX_WAIT == 20


def test_override_settings_takes_effect_and_is_undone():
    with override_settings(
        LEDGEPAY_API_KEY="sk_test_other",
        LEDGEPAY_API_BASE="http://127.0.0.1:8765/v1",
        LEDGEPAY_WEBHOOK_SECRET="whsec_other",
        LEDGEPAY_WEBHOOK_TOLERANCE=60,
        LEDGEPAY_TIMEOUT=2.5,
        LEDGEPAY_MAX_RETRIES=0,
    ):
        assert conf.LEDGEPAY_API_KEY == "sk_test_other"
        assert conf.LEDGEPAY_API_BASE == "http://127.0.0.1:8765/v1"
        assert conf.webhook_secrets == ["whsec_other"]
        assert conf.LEDGEPAY_WEBHOOK_TOLERANCE == 60
        assert conf.LEDGEPAY_TIMEOUT == 2.5
        assert conf.LEDGEPAY_MAX_RETRIES == 0

    assert conf.LEDGEPAY_API_KEY == "sk_test_tests_secret_key_123"
    assert conf.LEDGEPAY_MAX_RETRIES == 3


@override_settings(LEDGEPAY_TIMEOUT=3)
def test_override_settings_as_a_decorator():
    assert conf.LEDGEPAY_TIMEOUT == 3.0


def test_the_settings_fixture_takes_effect(settings):
    settings.LEDGEPAY_MAX_RETRIES = 7

    assert conf.LEDGEPAY_MAX_RETRIES == 7


def test_a_new_settings_object_reads_the_same_values(settings):
    settings.LEDGEPAY_API_KEY = "sk_test_fresh"

    assert Settings().LEDGEPAY_API_KEY == "sk_test_fresh"


@pytest.mark.parametrize(
    ("value", "secrets"),
    [
        ("whsec_one", ["whsec_one"]),
        (["whsec_old", "whsec_new"], ["whsec_old", "whsec_new"]),
        (("whsec_old", "whsec_new"), ["whsec_old", "whsec_new"]),
        (["", "whsec_new", ""], ["whsec_new"]),
        ("", []),
        ([], []),
        (None, []),
        (b"whsec_bytes", [b"whsec_bytes"]),
        (["whsec_new", b"whsec_old"], ["whsec_new", b"whsec_old"]),
        (12345, []),
        (["whsec_new", None, 7], ["whsec_new"]),
    ],
)
def test_webhook_secrets_is_always_a_list(settings, value, secrets):
    settings.LEDGEPAY_WEBHOOK_SECRET = value

    assert conf.webhook_secrets == secrets


def test_webhook_secret_keeps_what_the_project_set(settings):
    settings.LEDGEPAY_WEBHOOK_SECRET = ["whsec_old", "whsec_new"]

    assert conf.LEDGEPAY_WEBHOOK_SECRET == ["whsec_old", "whsec_new"]


@pytest.mark.parametrize(
    ("value", "base"),
    [
        ("https://api.ledgepay.test/v1/", "https://api.ledgepay.test/v1"),
        ("https://api.ledgepay.test/v1//", "https://api.ledgepay.test/v1"),
        ("http://127.0.0.1:8765/v1", "http://127.0.0.1:8765/v1"),
        ("", DEFAULT_API_BASE),
        (None, DEFAULT_API_BASE),
    ],
)
def test_api_base_has_no_trailing_slash_and_falls_back_to_the_default(settings, value, base):
    settings.LEDGEPAY_API_BASE = value

    assert base == conf.LEDGEPAY_API_BASE


@pytest.mark.parametrize(("value", "key"), [(None, ""), ("", ""), ("sk_test_x", "sk_test_x")])
def test_api_key_is_always_a_string(settings, value, key):
    settings.LEDGEPAY_API_KEY = value

    assert key == conf.LEDGEPAY_API_KEY


@pytest.mark.parametrize(("value", "retries"), [(0, 0), (5, 5), ("2", 2), (-1, 0)])
def test_max_retries_is_a_non_negative_int(settings, value, retries):
    settings.LEDGEPAY_MAX_RETRIES = value

    assert retries == conf.LEDGEPAY_MAX_RETRIES
    assert isinstance(conf.LEDGEPAY_MAX_RETRIES, int)


@pytest.mark.parametrize(("value", "timeout"), [(5, 5.0), ("2.5", 2.5), (0.1, 0.1)])
def test_timeout_is_a_float(settings, value, timeout):
    settings.LEDGEPAY_TIMEOUT = value

    assert timeout == conf.LEDGEPAY_TIMEOUT
    assert isinstance(conf.LEDGEPAY_TIMEOUT, float)


def test_webhook_tolerance_is_an_int(settings):
    settings.LEDGEPAY_WEBHOOK_TOLERANCE = "120"

    assert conf.LEDGEPAY_WEBHOOK_TOLERANCE == 120


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("LEDGEPAY_TIMEOUT", 0, "LEDGEPAY_TIMEOUT must be a number of seconds above 0."),
        ("LEDGEPAY_TIMEOUT", -1, "LEDGEPAY_TIMEOUT must be a number of seconds above 0."),
        ("LEDGEPAY_TIMEOUT", "soon", "LEDGEPAY_TIMEOUT must be a number."),
        ("LEDGEPAY_TIMEOUT", float("nan"), "LEDGEPAY_TIMEOUT must be a number."),
        ("LEDGEPAY_MAX_RETRIES", None, "LEDGEPAY_MAX_RETRIES must be a number."),
        ("LEDGEPAY_MAX_RETRIES", True, "LEDGEPAY_MAX_RETRIES must be a number."),
        ("LEDGEPAY_MAX_WAIT", -0.5, "LEDGEPAY_MAX_WAIT must not be negative."),
        ("LEDGEPAY_MAX_WAIT", "20s", "LEDGEPAY_MAX_WAIT must be a number."),
        ("LEDGEPAY_WEBHOOK_TOLERANCE", -5, "LEDGEPAY_WEBHOOK_TOLERANCE must not be negative."),
        ("LEDGEPAY_WEBHOOK_TOLERANCE", "5m", "LEDGEPAY_WEBHOOK_TOLERANCE must be a number."),
    ],
)
def test_bad_numbers_name_the_setting(settings, name, value, message):
    setattr(settings, name, value)

    with pytest.raises(ImproperlyConfigured) as excinfo:
        getattr(conf, name)

    assert str(excinfo.value) == message
