"""System checks: ``manage.py check`` warns about settings that would break payments."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from django.apps import AppConfig
from django.conf import settings
from django.core.cache import InvalidCacheBackendError, caches
from django.core.cache.backends.dummy import DummyCache
from django.core.checks import CheckMessage, Error, Tags, Warning, register
from django.core.exceptions import ImproperlyConfigured
from django.db import DEFAULT_DB_ALIAS, connections, router

from django_ledgepay import task_backend
from django_ledgepay.client import API_KEY_PATTERN
from django_ledgepay.conf import conf
from django_ledgepay.models import Payment

LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


@register(Tags.security)
def check_settings(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """The warnings ``manage.py check`` shows for django-ledgepay's settings and database
    (``django_ledgepay.W001`` to ``W008``); each names the setting, never its value."""
    messages: list[CheckMessage] = []
    if not conf.LEDGEPAY_API_KEY:
        messages.append(
            Warning(
                "LEDGEPAY_API_KEY is not set: every call to LedgePay will fail.",
                hint="Set LEDGEPAY_API_KEY to your secret key, read from the environment.",
                id="django_ledgepay.W001",
            )
        )
    messages.extend(_check_api_key_form(conf.LEDGEPAY_API_KEY))
    secret = conf.LEDGEPAY_WEBHOOK_SECRET
    if not _is_secret_setting(secret):
        messages.append(
            Warning(
                "LEDGEPAY_WEBHOOK_SECRET is neither a string nor a list of strings: the "
                "entries that are not text or bytes are left out.",
                hint="Set it to the signing secret, or to a list of secrets while one rotates.",
                id="django_ledgepay.W004",
            )
        )
    if not conf.webhook_secrets:
        messages.append(
            Warning(
                "LEDGEPAY_WEBHOOK_SECRET is not set: every webhook delivery will be refused.",
                hint="Set LEDGEPAY_WEBHOOK_SECRET to the endpoint's signing secret.",
                id="django_ledgepay.W002",
            )
        )
    numbers = (
        "LEDGEPAY_TIMEOUT",
        "LEDGEPAY_MAX_RETRIES",
        "LEDGEPAY_MAX_WAIT",
        "LEDGEPAY_WEBHOOK_TOLERANCE",
    )
    for name in numbers:
        try:
            getattr(conf, name)
        except ImproperlyConfigured as err:
            messages.append(
                Warning(str(err), hint="Remove it to use the default.", id="django_ledgepay.W007")
            )
    alias = router.db_for_write(Payment)
    if alias != DEFAULT_DB_ALIAS:
        messages.append(
            Warning(
                f"A database router sends django_ledgepay's models to {alias!r}: its "
                "transactions, row locks and signals are taken on 'default' only.",
                hint="Keep django_ledgepay's tables in the default database.",
                id="django_ledgepay.W006",
            )
        )
    database = connections[alias].settings_dict
    mode = str(database.get("OPTIONS", {}).get("transaction_mode") or "").upper()
    if database["ENGINE"] == "django.db.backends.sqlite3" and mode != "IMMEDIATE":
        messages.append(
            Warning(
                "The payments' database is SQLite in its default transaction mode: a webhook "
                "that arrives during a refund can fail with 'database is locked'.",
                hint='Set "OPTIONS": {"transaction_mode": "IMMEDIATE"} on that database, so '
                "that writers wait for each other as row locks make them do elsewhere.",
                id="django_ledgepay.W005",
            )
        )
    base = urlsplit(conf.LEDGEPAY_API_BASE)
    if base.scheme != "https" and base.hostname not in LOCAL_HOSTS:
        messages.append(
            Warning(
                "LEDGEPAY_API_BASE does not use https: the API key would travel in clear text.",
                hint="Use an https:// URL; plain http is only for a sandbox on localhost.",
                id="django_ledgepay.W003",
            )
        )
    return messages


def _check_api_key_form(api_key: str) -> list[CheckMessage]:
    """W008 for a key every call would refuse: whitespace around or in it (a newline read
    from a file, say), or characters other than printable ASCII. The key is never shown."""
    if not api_key or API_KEY_PATTERN.fullmatch(api_key):
        return []
    if api_key != api_key.strip():
        problem = "begins or ends with whitespace (a trailing newline, say)"
    elif any(character.isspace() for character in api_key):
        problem = "holds whitespace"
    else:
        problem = "holds characters other than printable ASCII"
    return [
        Warning(
            f"LEDGEPAY_API_KEY {problem}: every call to LedgePay will fail.",
            hint="Set it to the key exactly as LedgePay shows it; strip what is read from a "
            "file or the environment (for example env('LEDGEPAY_API_KEY').strip()).",
            id="django_ledgepay.W008",
        )
    ]


def _is_secret_setting(value: object) -> bool:
    if value is None or isinstance(value, (str, bytes)):
        return True
    if isinstance(value, (list, tuple)):
        return all(isinstance(secret, (str, bytes)) for secret in value)
    return False


@register()
def check_tasks(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """The task backend and the webhook processing mode: errors, since a webhook or a
    delivery would fail on them at run time."""
    messages: list[CheckMessage] = []
    alias = conf.LEDGEPAY_TASK_BACKEND
    try:
        task_backend.backend()
    except task_backend.InvalidTaskBackend:
        messages.append(
            Error(
                f"LEDGEPAY_TASK_BACKEND names {alias!r}, which is not a backend in TASKS.",
                hint="Set LEDGEPAY_TASK_BACKEND to an alias of the TASKS setting "
                '(default "default"), or add that backend to TASKS.',
                id="django_ledgepay.E001",
            )
        )
    try:
        getattr(conf, "LEDGEPAY_WEBHOOK_PROCESSING")  # noqa: B009  (a property that checks)
    except ImproperlyConfigured as err:
        messages.append(
            Error(
                str(err),
                hint='"inline" applies each delivery in its request; "task" in a task worker.',
                id="django_ledgepay.E002",
            )
        )
    for name in ("LEDGEPAY_DELIVERY_MAX_ATTEMPTS", "LEDGEPAY_DELIVERY_LEASE"):
        try:
            getattr(conf, name)
        except ImproperlyConfigured as err:
            messages.append(
                Warning(str(err), hint="Remove it to use the default.", id="django_ledgepay.W007")
            )
    return messages


SHARED_CACHE_HINT = (
    'Set LEDGEPAY_RATE_LIMIT_CACHE to an alias of CACHES (default "default") that every '
    "process of the project reaches, such as a Redis cache; None keeps the rate-limit "
    "budget and the circuit breaker per process."
)


@register(Tags.caches)
def check_shared_state(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """The cache of the rate-limit budget and the circuit breaker, and their numbers
    (``django_ledgepay.E003``, ``W009``, and ``W007`` for a number that is not one)."""
    messages: list[CheckMessage] = []
    try:
        alias = conf.LEDGEPAY_RATE_LIMIT_CACHE
    except ImproperlyConfigured as err:
        messages.append(Error(str(err), hint=SHARED_CACHE_HINT, id="django_ledgepay.E003"))
    else:
        messages.extend(_check_shared_cache(alias))
    names = (
        "LEDGEPAY_RATE_LIMIT_RESERVE",
        "LEDGEPAY_BREAKER_THRESHOLD",
        "LEDGEPAY_BREAKER_COOLDOWN",
    )
    messages.extend(unusable_numbers(names))
    return messages


def _check_shared_cache(alias: str | None) -> list[CheckMessage]:
    """E003 for an alias every call would fail on; W009 for a cache that keeps nothing."""
    if alias is None:
        return []
    try:
        cache = caches[alias]
    except InvalidCacheBackendError:
        problem = "cannot be loaded" if alias in settings.CACHES else "is not in CACHES"
        return [
            Error(
                f"LEDGEPAY_RATE_LIMIT_CACHE names the cache {alias!r}, which {problem}: "
                "every call to LedgePay will fail.",
                hint=SHARED_CACHE_HINT,
                id="django_ledgepay.E003",
            )
        ]
    if isinstance(cache, DummyCache):
        return [
            Warning(
                f"LEDGEPAY_RATE_LIMIT_CACHE names {alias!r}, a DummyCache, which keeps "
                "nothing: each process keeps its own rate-limit budget and circuit breaker.",
                hint=SHARED_CACHE_HINT,
                id="django_ledgepay.W009",
            )
        ]
    return []


@register()
def check_health(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """The thresholds of ``manage.py ledgepay_health`` (``django_ledgepay.W007`` for one
    that is not a usable number: the command would exit 2 without judging anything)."""
    messages: list[CheckMessage] = []
    names = (
        "LEDGEPAY_STALE_PENDING_AFTER",
        "LEDGEPAY_HEALTH_OVERDUE_AFTER",
        "LEDGEPAY_HEALTH_CRITICAL_AFTER",
        "LEDGEPAY_HEALTH_WEBHOOK_SILENCE",
        "LEDGEPAY_HEALTH_PENDING_CRITICAL",
    )
    messages.extend(unusable_numbers(names))
    return messages


def unusable_numbers(names: Sequence[str]) -> list[CheckMessage]:
    """``django_ledgepay.W007`` for each setting of ``names`` that is not a usable number
    (reading it through ``conf`` raises ``ImproperlyConfigured`` naming it)."""
    found: list[CheckMessage] = []
    for name in names:
        try:
            getattr(conf, name)
        except ImproperlyConfigured as err:
            found.append(
                Warning(str(err), hint="Remove it to use the default.", id="django_ledgepay.W007")
            )
    return found
