"""Helpers for testing a shop that uses django-ledgepay.

Sign a webhook the way LedgePay does and post it to your endpoint::

    from django_ledgepay.testing import post_webhook

    response = post_webhook(client, {"event": "payment.succeeded", "data": {...}})

Or run a fake LedgePay with state, served through ``responses``, and drive it::

    from django_ledgepay.testing import FakeLedgePay

    with FakeLedgePay() as fake:
        payment = services.create_payment(amount=5000, currency="EUR", ...)
        fake.pay(payment.ledgepay_id)                  # the shopper pressed Pay
        fake.deliver(client)                           # webhooks reach your endpoint
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import requests
import responses

from django.test import Client
from django.urls import reverse

from django_ledgepay.conf import conf
from django_ledgepay.sandbox.state import Driver, LedgePayState, event_payload
from django_ledgepay.webhooks import SIGNATURE_HEADER, signature_header

__all__ = ["FakeLedgePay", "post_webhook", "signed_webhook"]


def signed_webhook(
    payload: Mapping[str, Any] | bytes | str,
    *,
    secret: str | None = None,
    timestamp: int | None = None,
) -> tuple[bytes, dict[str, str]]:
    """The body and headers of a webhook delivery signed like LedgePay signs it.

    ``secret`` defaults to the first of ``LEDGEPAY_WEBHOOK_SECRET``; ``timestamp`` to now.
    """
    if isinstance(payload, Mapping):
        body = json.dumps(payload).encode()
    elif isinstance(payload, str):
        body = payload.encode()
    else:
        body = payload
    if secret is None:
        secret = conf.webhook_secrets[0]
    header = signature_header(body, secret, int(time.time()) if timestamp is None else timestamp)
    return body, {SIGNATURE_HEADER: header}


def post_webhook(
    client: Client,
    payload: Mapping[str, Any] | bytes | str,
    *,
    secret: str | None = None,
    timestamp: int | None = None,
    url: str | None = None,
) -> Any:
    """Post a signed delivery to the webhook view with Django's test client."""
    body, headers = signed_webhook(payload, secret=secret, timestamp=timestamp)
    return client.post(
        url or reverse("ledgepay:webhook"),
        body,
        content_type="application/json",
        headers=headers,
    )


class FakeLedgePay(Driver):
    """LedgePay in memory, answering this process's ``requests`` through ``responses``.

    It has the sandbox's behaviour (validation, idempotency keys, lists, refunds) and
    records the webhook events it would send in ``events``. Use it as a context manager,
    or call ``start()`` and ``stop()``.
    """

    def __init__(self, *, api_base: str | None = None) -> None:
        self.api_base = (api_base or conf.LEDGEPAY_API_BASE).rstrip("/")
        self.state = LedgePayState()
        self.events: list[dict[str, Any]] = []
        self.requests: list[requests.PreparedRequest] = []
        self.state.listeners.append(self._record)
        self.mock = responses.RequestsMock(assert_all_requests_are_fired=False)
        pattern = re.compile(re.escape(self.api_base) + r"/.*")
        for method in (responses.GET, responses.POST):
            self.mock.add_callback(method, pattern, callback=self._callback)

    def __enter__(self) -> FakeLedgePay:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        self.mock.start()

    def stop(self) -> None:
        self.mock.stop()
        self.mock.reset()

    def deliver(self, client: Client, *, url: str | None = None) -> list[int]:
        """Post every queued event to the webhook view, in order; return the status codes."""
        codes = []
        while self.events:
            payload = self.events.pop(0)
            codes.append(post_webhook(client, payload, url=url).status_code)
        return codes

    def _record(self, event_type: str, data: dict[str, Any]) -> None:
        self.events.append(event_payload(event_type, data))

    def _callback(self, request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
        self.requests.append(request)
        parts = urlsplit(request.url or "")
        path = parts.path.removeprefix(urlsplit(self.api_base).path)
        body = request.body or b""
        if isinstance(body, str):
            body = body.encode()
        answer = self.state.handle(
            request.method or "GET",
            path,
            dict(parse_qsl(parts.query)),
            body,
            dict(request.headers),
        )
        return answer.status, {"Content-Type": "application/json"}, answer.json()
