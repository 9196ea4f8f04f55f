"""A process of its own for tests/test_shared_state.py: it calls LedgePay (mocked with
``responses``) with the cache the test names, and prints what each step did as JSON.

Run as ``python -m tests.shared_state_worker CONFIG``; CONFIG is JSON with ``caches``
(Django's ``CACHES``), ``rate_limit_cache`` (``LEDGEPAY_RATE_LIMIT_CACHE``) and ``steps``,
each ``{"action": ..., "api_key": ...}``. A step's API key is its own namespace, so steps
about different things do not meet. The client never really sleeps: the waits it asks for
are reported.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from typing import Any

import requests
import responses

import django
from django.test import override_settings

from django_ledgepay import client
from django_ledgepay.client import LedgePayClient
from django_ledgepay.exceptions import LedgePayError

API = "https://api.ledgepay.test/v1"
URL = f"{API}/payments/pay_1"
PAYMENT = {"id": "pay_1", "status": "pending", "amount": 5000, "currency": "EUR"}
WINDOW = 30


def rate_headers(remaining: int) -> dict[str, str]:
    reset = int(time.time()) + WINDOW
    return {
        "X-RateLimit-Limit": "100",
        "X-RateLimit-Remaining": str(remaining),
        "X-RateLimit-Reset": str(reset),
    }


def step(action: str) -> dict[str, Any]:
    """Run one action; return what was sent, the error class, and the waits asked for."""
    waits: list[float] = []
    client.sleep = waits.append  # type: ignore[assignment]
    error = None
    with responses.RequestsMock(assert_all_requests_are_fired=False) as api:
        try:
            if action == "exhaust":  # an answer that leaves no request in the window
                api.get(URL, json=PAYMENT, headers=rate_headers(0))
                LedgePayClient().retrieve_payment("pay_1")
            elif action == "low":  # an answer that leaves five requests in the window
                api.get(URL, json=PAYMENT, headers=rate_headers(5))
                LedgePayClient().retrieve_payment("pay_1")
            elif action == "rate-limited":  # a 429 asking for a pause
                api.get(URL, status=429, headers={"Retry-After": str(WINDOW)})
                with override_settings(LEDGEPAY_MAX_RETRIES=0):
                    LedgePayClient().retrieve_payment("pay_1")
            elif action == "down":  # five calls that find LedgePay down
                api.get(URL, body=requests.ConnectionError("connection refused"))
                with override_settings(LEDGEPAY_MAX_RETRIES=0):
                    for _ in range(5):
                        with contextlib.suppress(LedgePayError):
                            LedgePayClient().retrieve_payment("pay_1")
            elif action == "checkout":  # a shopper's call: it may not wait
                api.get(URL, json=PAYMENT)
                with override_settings(LEDGEPAY_MAX_WAIT=0):
                    LedgePayClient().retrieve_payment("pay_1")
            elif action == "sync":  # a background call, as ledgepay_sync makes
                api.get(URL, json=PAYMENT)
                with client.background():
                    LedgePayClient().retrieve_payment("pay_1")
            else:
                raise ValueError(f"no action {action!r}")
        except LedgePayError as err:
            error = type(err).__name__
        sent = len(api.calls)
    return {"action": action, "sent": sent, "error": error, "waits": waits}


def main(config: dict[str, Any]) -> list[dict[str, Any]]:
    results = []
    with override_settings(
        CACHES=config["caches"], LEDGEPAY_RATE_LIMIT_CACHE=config["rate_limit_cache"]
    ):
        for each in config["steps"]:
            with override_settings(LEDGEPAY_API_KEY=each["api_key"]):
                results.append(step(each["action"]))
    return results


if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    django.setup()
    print(json.dumps(main(json.loads(sys.argv[1]))))
