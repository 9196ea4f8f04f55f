from __future__ import annotations

from io import StringIO

import pytest

from django.core.checks import CheckMessage, Tags, Warning, run_checks
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.db import connections, router
from django.test import override_settings

from django_ledgepay.checks import check_settings

# `manage.py check` runs the model checks too, and JSONField's asks SQLite what it supports.
pytestmark = pytest.mark.django_db

W001 = "django_ledgepay.W001"
W002 = "django_ledgepay.W002"
W003 = "django_ledgepay.W003"
W004 = "django_ledgepay.W004"
W005 = "django_ledgepay.W005"
W006 = "django_ledgepay.W006"


def ids(messages: list[CheckMessage]) -> list[str | None]:
    return [message.id for message in messages]


def run_check_command() -> str:
    """Run ``manage.py check`` and return what it reported."""
    stdout, stderr = StringIO(), StringIO()
    call_command("check", stdout=stdout, stderr=stderr)
    return stdout.getvalue() + stderr.getvalue()


def test_no_warnings_when_everything_is_set():
    assert check_settings() == []


def test_manage_py_check_is_quiet_when_everything_is_set():
    output = run_check_command()

    assert "no issues" in output
    assert "django_ledgepay" not in output


@pytest.mark.parametrize("api_key", ["", None])
def test_w001_when_the_api_key_is_missing(settings, api_key):
    settings.LEDGEPAY_API_KEY = api_key

    messages = check_settings()

    assert ids(messages) == [W001]
    assert isinstance(messages[0], Warning)
    assert "LEDGEPAY_API_KEY" in messages[0].msg
    assert "LEDGEPAY_API_KEY" in str(messages[0].hint)


def test_w001_when_the_api_key_setting_is_absent(settings):
    del settings.LEDGEPAY_API_KEY

    assert ids(check_settings()) == [W001]


@pytest.mark.parametrize("secret", ["", None, [], (), ["", ""]])
def test_w002_when_the_webhook_secret_is_missing(settings, secret):
    settings.LEDGEPAY_WEBHOOK_SECRET = secret

    messages = check_settings()

    assert ids(messages) == [W002]
    assert "LEDGEPAY_WEBHOOK_SECRET" in messages[0].msg


def test_w002_when_the_webhook_secret_setting_is_absent(settings):
    del settings.LEDGEPAY_WEBHOOK_SECRET

    assert ids(check_settings()) == [W002]


@pytest.mark.parametrize(
    "secret",
    ["whsec_one", b"whsec_bytes", ["whsec_old", b"whsec_new"], ("", "whsec_new")],
)
def test_no_w002_with_a_secret_or_a_list_of_them(settings, secret):
    settings.LEDGEPAY_WEBHOOK_SECRET = secret

    assert ids(check_settings()) == []


@pytest.mark.parametrize(
    ("secret", "also"),
    [(12345, [W002]), ({"whsec_one"}, [W002]), (["whsec_new", None], []), ([7], [W002])],
)
def test_w004_when_the_webhook_secret_is_not_text(settings, secret, also):
    settings.LEDGEPAY_WEBHOOK_SECRET = secret

    messages = check_settings()

    assert ids(messages) == [W004, *also]
    assert "LEDGEPAY_WEBHOOK_SECRET" in messages[0].msg
    assert "12345" not in messages[0].msg  # The value is never shown.


@pytest.mark.parametrize(
    "base",
    [
        "http://api.ledgepay.com/v1",
        "http://10.0.0.5:8000/v1",
        "http://localhost.attacker.example/v1",
        "http://api.ledgepay.com/v1?host=localhost",
        "ftp://api.ledgepay.com/v1",
        "api.ledgepay.com/v1",
    ],
)
def test_w003_when_the_api_base_is_not_https_outside_localhost(settings, base):
    settings.LEDGEPAY_API_BASE = base

    messages = check_settings()

    assert ids(messages) == [W003]
    assert "LEDGEPAY_API_BASE" in messages[0].msg
    assert "https" in str(messages[0].hint)


@pytest.mark.parametrize(
    "base",
    [
        "https://api.ledgepay.com/v1",
        "HTTPS://api.ledgepay.com/v1",
        "https://localhost:8443/v1",
        "http://localhost:8765/v1",
        "http://LOCALHOST/v1",
        "http://127.0.0.1:8765/v1",
        "http://[::1]:8765/v1",
    ],
)
def test_no_w003_for_https_or_a_local_sandbox(settings, base):
    settings.LEDGEPAY_API_BASE = base

    assert check_settings() == []


def test_no_w003_for_the_default_api_base(settings):
    del settings.LEDGEPAY_API_BASE

    assert check_settings() == []


def test_every_warning_at_once(settings):
    settings.LEDGEPAY_API_KEY = ""
    settings.LEDGEPAY_WEBHOOK_SECRET = ""
    settings.LEDGEPAY_API_BASE = "http://ledgepay.example/v1"

    assert ids(check_settings()) == [W001, W002, W003]


def test_warnings_never_show_the_values(settings):
    settings.LEDGEPAY_API_KEY = ""
    settings.LEDGEPAY_WEBHOOK_SECRET = ""
    settings.LEDGEPAY_API_BASE = "http://ledgepay.example/v1?token=sk_live_in_the_url"

    for message in check_settings():
        assert "sk_live_in_the_url" not in f"{message.msg} {message.hint}"


@override_settings(LEDGEPAY_API_KEY="", LEDGEPAY_API_BASE="http://ledgepay.example/v1")
def test_manage_py_check_reports_the_warnings():
    output = run_check_command()

    assert W001 in output
    assert W002 not in output
    assert W003 in output


@override_settings(LEDGEPAY_WEBHOOK_SECRET="")
def test_manage_py_check_reports_w002():
    output = run_check_command()

    assert W002 in output
    assert W001 not in output
    assert W003 not in output


@override_settings(LEDGEPAY_API_KEY="")
def test_manage_py_check_fails_on_the_warnings_at_warning_level():
    with pytest.raises(SystemCheckError, match=W001):
        call_command("check", "--fail-level", "WARNING", stdout=StringIO(), stderr=StringIO())


@override_settings(LEDGEPAY_API_KEY="")
def test_the_checks_are_registered_under_the_security_tag():
    assert W001 in ids(run_checks(tags=[Tags.security]))
    assert W001 not in ids(run_checks(tags=[Tags.models]))


@override_settings(SILENCED_SYSTEM_CHECKS=[W001], LEDGEPAY_API_KEY="")
def test_a_warning_can_be_silenced():
    output = run_check_command()

    assert W001 not in output
    assert "1 silenced" in output


@pytest.mark.parametrize(
    ("engine", "options", "expected"),
    [
        ("django.db.backends.sqlite3", {}, [W005]),
        ("django.db.backends.sqlite3", {"transaction_mode": "DEFERRED"}, [W005]),
        ("django.db.backends.sqlite3", {"transaction_mode": "immediate"}, []),
        ("django.db.backends.postgresql", {}, []),
    ],
)
def test_w005_for_sqlite_without_immediate_transactions(monkeypatch, engine, options, expected):
    database = connections["default"].settings_dict
    monkeypatch.setitem(database, "ENGINE", engine)
    monkeypatch.setitem(database, "OPTIONS", options)

    messages = check_settings()

    assert ids(messages) == expected
    if expected:
        assert "transaction_mode" in str(messages[0].hint)


def test_w006_when_a_router_sends_the_models_elsewhere(monkeypatch):
    monkeypatch.setitem(connections.settings, "payments", connections.settings["default"])
    monkeypatch.setattr(router, "db_for_write", lambda model, **hints: "payments")

    messages = check_settings()

    assert W006 in ids(messages)
    assert "'payments'" in messages[ids(messages).index(W006)].msg


def test_w007_for_a_number_setting_that_is_not_one(settings):
    settings.LEDGEPAY_TIMEOUT = 0
    settings.LEDGEPAY_MAX_WAIT = -1
    settings.LEDGEPAY_WEBHOOK_TOLERANCE = "5m"

    messages = [m for m in check_settings() if m.id == "django_ledgepay.W007"]

    assert [m.msg for m in messages] == [
        "LEDGEPAY_TIMEOUT must be a number of seconds above 0.",
        "LEDGEPAY_MAX_WAIT must not be negative.",
        "LEDGEPAY_WEBHOOK_TOLERANCE must be a number.",
    ]


W008 = "django_ledgepay.W008"


@pytest.mark.parametrize(
    ("api_key", "problem"),
    [
        ("sk_test_abc123\n", "begins or ends with whitespace"),
        ("sk_test_abc123\r\n", "begins or ends with whitespace"),
        (" sk_test_abc123", "begins or ends with whitespace"),
        ("sk_test_abc123\t", "begins or ends with whitespace"),
        ("sk_test abc123", "holds whitespace"),
        ("sk_test_abc\u00e9123", "holds characters other than printable ASCII"),
        ("sk_test_abc\x00123", "holds characters other than printable ASCII"),
        ("sk_test_abc\u200b123", "holds characters other than printable ASCII"),
    ],
)
def test_w008_for_an_api_key_every_call_would_refuse(settings, api_key, problem):
    settings.LEDGEPAY_API_KEY = api_key

    messages = check_settings()

    assert ids(messages) == [W008]
    assert messages[0].msg.startswith(f"LEDGEPAY_API_KEY {problem}")
    assert "abc" not in f"{messages[0].msg} {messages[0].hint}"  # The key is never shown.


@pytest.mark.parametrize("api_key", ["sk_test_abc123", "sk_live_A-b.C~!#$%&'*+/=?^_`|"])
def test_no_w008_for_a_key_of_printable_ascii(settings, api_key):
    settings.LEDGEPAY_API_KEY = api_key

    assert check_settings() == []


@override_settings(LEDGEPAY_API_KEY="sk_live_from_a_file_abc123\n")
def test_manage_py_check_reports_w008_without_the_key():
    output = run_check_command()

    assert W008 in output
    assert "LEDGEPAY_API_KEY begins or ends with whitespace" in output
    assert "sk_live_from_a_file_abc123" not in output
    assert W001 not in output


@override_settings(LEDGEPAY_API_KEY="sk_test_abc123\n")
def test_w008_fails_manage_py_check_at_warning_level():
    with pytest.raises(SystemCheckError, match=W008):
        call_command("check", "--fail-level", "WARNING", stdout=StringIO(), stderr=StringIO())
