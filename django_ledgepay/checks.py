"""System checks: ``manage.py check`` warns about settings that would break payments."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from django.apps import AppConfig
from django.core.checks import CheckMessage, Tags, Warning, register

from django_ledgepay.conf import conf

LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


@register(Tags.security)
def check_settings(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    messages: list[CheckMessage] = []
    if not conf.LEDGEPAY_API_KEY:
        messages.append(
            Warning(
                "LEDGEPAY_API_KEY is not set: every call to LedgePay will fail.",
                hint="Set LEDGEPAY_API_KEY to your secret key, read from the environment.",
                id="django_ledgepay.W001",
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
