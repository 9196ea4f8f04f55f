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
        post_webhook(client, fake.webhook("payment.succeeded", payment.ledgepay_id))  # again

Start each test with a fresh client, so that one test's failures do not open the circuit
breaker for the next, nor its rate-limit headers make the next one wait::

    from django_ledgepay.testing import reset_client_state

    @pytest.fixture(autouse=True)
    def fresh_ledgepay_client():
        reset_client_state()
        yield
        reset_client_state()
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import requests

from django.core.exceptions import ImproperlyConfigured
from django.test import Client
from django.urls import reverse

from django_ledgepay import client as ledgepay_client
from django_ledgepay.conf import Secret, conf
from django_ledgepay.sandbox.state import Driver, LedgePayState, event_payload
from django_ledgepay.signatures import SIGNATURE_HEADER, signature_header

__all__ = ["FakeLedgePay", "post_webhook", "reset_client_state", "signed_webhook"]


def signed_webhook(
    payload: Mapping[str, Any] | bytes | str,
    *,
    secret: Secret | None = None,
    timestamp: int | None = None,
) -> tuple[bytes, dict[str, str]]:
    """The body and headers of a webhook delivery signed like LedgePay signs it.

    ``payload`` is serialized as JSON when it is a mapping, and sent as it is (UTF-8) when it
    is ``bytes`` or ``str``. ``secret`` defaults to the first of ``LEDGEPAY_WEBHOOK_SECRET``;
    ``timestamp`` (Unix seconds) to now. Post the body with ``content_type="application/json"``
    and ``headers=headers``.
    """
    if isinstance(payload, Mapping):
        body = json.dumps(payload).encode()
    elif isinstance(payload, str):
        body = payload.encode()
    else:
        body = payload
    if secret is None:
        if not conf.webhook_secrets:
            raise ImproperlyConfigured(
                "Set LEDGEPAY_WEBHOOK_SECRET, or pass secret=, to sign a webhook."
            )
        secret = conf.webhook_secrets[0]
    header = signature_header(body, secret, int(time.time()) if timestamp is None else timestamp)
    return body, {SIGNATURE_HEADER: header}


def post_webhook(
    client: Client,
    payload: Mapping[str, Any] | bytes | str,
    *,
    secret: Secret | None = None,
    timestamp: int | None = None,
    url: str | None = None,
) -> Any:
    """Post a signed delivery to the webhook view (``ledgepay:webhook`` unless ``url`` says
    otherwise) with Django's test client; return the response."""
    body, headers = signed_webhook(payload, secret=secret, timestamp=timestamp)
    return client.post(
        url or reverse("ledgepay:webhook"),
        body,
        content_type="application/json",
        headers=headers,
    )


def reset_client_state() -> None:
    """Forget what the LedgePay client keeps from call to call: its connections, the
    rate-limit budget (the last ``X-RateLimit-*`` headers and a 429's pause) and the circuit
    breaker, in this process and in ``LEDGEPAY_RATE_LIMIT_CACHE``, for the API key of the
    current settings and every other this process has used.

    Call it before and after each test that talks to LedgePay (or a :class:`FakeLedgePay`),
    from an autouse fixture or ``setUp``: otherwise five failing calls in one test open the
    breaker for the tests after it, and a used-up window makes them wait. It deletes only
    django-ledgepay's own keys; the rest of the cache is left as it is.
    """
    ledgepay_client.reset_state()


class FakeLedgePay(Driver):
    """LedgePay in memory, answering this process's ``requests`` through ``responses``.

    It serves ``POST /payments``, ``GET /payments/{id}``, ``GET /payments`` (filters and
    ``created_before`` paging) and ``POST /refunds`` at ``LEDGEPAY_API_BASE``, with the
    sandbox's behaviour: validation, LedgePay's error bodies, the Bearer key check and
    ``Idempotency-Key`` replays. Drive it with :meth:`pay`, :meth:`fail`, :meth:`cancel`
    and :meth:`complete_refund`; each queues the webhook event LedgePay would send in
    ``events``, which :meth:`deliver` posts to your endpoint. :meth:`webhook` builds an
    event for any object, to redeliver or reorder; :meth:`fail_next` makes requests fail.

    Use it as a context manager, or call ``start()`` and ``stop()``. Any other URL
    requested meanwhile raises ``requests.ConnectionError``; register it on ``mock`` (a
    ``responses.RequestsMock``) to serve it.
    """

    def __init__(self, *, api_base: str | None = None) -> None:
        self.api_base = (api_base or conf.LEDGEPAY_API_BASE).rstrip("/")
        self.state = LedgePayState()
        #: Webhook bodies LedgePay would have sent, oldest first, not yet delivered.
        self.events: list[dict[str, Any]] = []
        #: Every API request received, in order.
        self.requests: list[requests.PreparedRequest] = []
        self._failures: list[int | None] = []
        self.state.listeners.append(self._record)
        # Imported here: the signing helpers above work without ``responses`` installed.
        import responses

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
        """Stop answering; the state and routes stay, so it can be started again."""
        self.mock.stop()

    def deliver(self, client: Client, *, url: str | None = None) -> list[int]:
        """Post every queued event to the webhook view, in order; return the status codes."""
        codes = []
        while self.events:
            payload = self.events.pop(0)
            codes.append(post_webhook(client, payload, url=url).status_code)
        return codes

    def webhook(self, event_type: str, object_id: str) -> dict[str, Any]:
        """The body LedgePay sends for ``event_type`` about a payment or refund as it is now.

        Post it with :func:`post_webhook` to redeliver an event, or to send one out of order
        (``refund.succeeded`` before ``refund.created``, a late ``payment.failed``).
        """
        refund = event_type.startswith("refund.")
        objects = self.refunds if refund else self.payments
        if object_id not in objects:
            kind = "refund" if refund else "payment"
            raise KeyError(f"FakeLedgePay has no {kind} {object_id!r}.")
        return event_payload(event_type, objects[object_id])

    def fail_next(self, status: int | None = 500, *, times: int = 1) -> None:
        """Make the next ``times`` API requests fail without effect: with ``status`` and
        LedgePay's error body, or with a dropped connection when ``status`` is None.

        The client retries such failures ``LEDGEPAY_MAX_RETRIES`` times, with backoff, and
        each retry is a request: set ``LEDGEPAY_MAX_RETRIES = 0`` to see the error at once.
        """
        self._failures.extend([status] * times)

    def _record(self, event_type: str, data: dict[str, Any]) -> None:
        self.events.append(event_payload(event_type, data))

    def _callback(
        self, request: requests.PreparedRequest
    ) -> Exception | tuple[int, dict[str, str], str]:
        self.requests.append(request)
        with self.state.lock:
            failing = bool(self._failures)
            status = self._failures.pop(0) if failing else None
        if failing:
            if status is None:
                return requests.ConnectionError("FakeLedgePay dropped the connection.")
            error_type = "rate_limit_error" if status == 429 else "api_error"
            error = {"type": error_type, "message": "FakeLedgePay failed on purpose."}
            headers = {"Content-Type": "application/json", "Retry-After": "0"}
            return status, headers, json.dumps({"error": error})
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
