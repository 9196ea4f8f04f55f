"""The sandbox over loopback, spoken to with plain requests."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests

from django.core.management import CommandError, call_command

from django_ledgepay.sandbox import Sandbox
from django_ledgepay.webhooks import verify_signature

AUTH = {"Authorization": "Bearer sk_test_anything"}
NEW = {
    "amount": 1234,
    "currency": "EUR",
    "description": "Order <#1> & co",
    "success_url": "https://shop.example/return",
    "cancel_url": "https://shop.example/cancel",
}
SECRET = "whsec_sandbox"


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    with Sandbox(refund_delay=0.05, seed=1) as running:
        yield running


def create(sandbox: Sandbox, **overrides: Any) -> requests.Response:
    return requests.post(
        f"{sandbox.api_base}/payments", json={**NEW, **overrides}, headers=AUTH, timeout=5
    )


class Receiver:
    """A shop's webhook endpoint on loopback that records signed deliveries."""

    def __init__(self, failures: int = 0) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.failures = failures
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                verify_signature(body, self.headers["LedgePay-Signature"], [SECRET])
                if receiver.failures > 0:
                    receiver.failures -= 1
                    self.send_response(500)
                else:
                    receiver.bodies.append(json.loads(body))
                    self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    @property
    def events(self) -> list[str]:
        return [body["event"] for body in self.bodies]


def test_every_api_call_needs_a_key(sandbox):
    response = requests.get(f"{sandbox.api_base}/payments", timeout=5)
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"


def test_create_retrieve_and_rate_limit_headers(sandbox):
    created = create(sandbox)
    assert created.status_code == 201
    payment = created.json()
    assert payment["status"] == "pending"
    assert payment["checkout_url"] == f"{sandbox.url}/checkout/{payment['id']}"
    fetched = requests.get(f"{sandbox.api_base}/payments/{payment['id']}", headers=AUTH, timeout=5)
    assert fetched.json() == payment
    assert int(fetched.headers["X-RateLimit-Remaining"]) < int(
        created.headers["X-RateLimit-Remaining"]
    )
    assert int(fetched.headers["X-RateLimit-Reset"]) % 60 == 0
    missing = requests.get(f"{sandbox.api_base}/payments/pay_nope", headers=AUTH, timeout=5)
    assert missing.status_code == 404


@pytest.mark.parametrize(
    ("overrides", "param"),
    [
        ({"amount": 0}, "amount"),
        ({"amount": "12"}, "amount"),
        ({"currency": "EURO"}, "currency"),
        ({"success_url": "/relative"}, "success_url"),
    ],
)
def test_validation_errors_in_the_documented_shape(sandbox, overrides, param):
    response = create(sandbox, **overrides)
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", param)
    assert error["message"]


def test_idempotency_key_replays_the_first_answer(sandbox):
    headers = {**AUTH, "Idempotency-Key": "order-1"}
    first = requests.post(f"{sandbox.api_base}/payments", json=NEW, headers=headers, timeout=5)
    again = requests.post(f"{sandbox.api_base}/payments", json=NEW, headers=headers, timeout=5)
    assert again.json() == first.json()
    assert len(sandbox.payments) == 1
    other = requests.post(
        f"{sandbox.api_base}/payments", json={**NEW, "amount": 1}, headers=headers, timeout=5
    )
    assert other.status_code == 400
    assert other.json()["error"]["type"] == "idempotency_error"


def test_list_newest_first_paged_by_created_before(sandbox):
    ids = [create(sandbox, amount=amount).json()["id"] for amount in (1, 2, 3)]
    page = requests.get(f"{sandbox.api_base}/payments?limit=2", headers=AUTH, timeout=5).json()
    assert page["has_more"] is True
    assert len(page["data"]) == 2
    stamp = page["data"][0]["created_at"]
    before = requests.get(
        f"{sandbox.api_base}/payments", params={"created_before": stamp}, headers=AUTH, timeout=5
    ).json()
    assert before["data"] == []  # Exclusive: all three share one second.
    everything = requests.get(
        f"{sandbox.api_base}/payments?limit=500", headers=AUTH, timeout=5
    ).json()
    assert [p["id"] for p in everything["data"]] == ids[::-1]


def test_enforced_rate_limit():
    with Sandbox(rate_limit=2) as limited:
        codes = [
            requests.get(f"{limited.api_base}/payments", headers=AUTH, timeout=5) for _ in range(3)
        ]
    assert [r.status_code for r in codes] == [200, 200, 429]
    assert codes[1].headers["X-RateLimit-Remaining"] == "0"
    assert int(codes[2].headers["Retry-After"]) >= 1


def test_checkout_page_and_buttons(sandbox):
    payment = create(sandbox).json()
    page = requests.get(payment["checkout_url"], timeout=5)
    assert page.status_code == 200
    assert "12.34 EUR" in page.text
    assert "Order &lt;#1&gt; &amp; co" in page.text
    assert "<script" not in page.text
    for label in ("Pay", "Fail", "Cancel"):
        assert f">{label}</button>" in page.text
    paid = requests.post(
        payment["checkout_url"], data={"action": "pay"}, allow_redirects=False, timeout=5
    )
    assert paid.status_code == 303
    assert paid.headers["Location"] == NEW["success_url"]
    assert sandbox.payments[payment["id"]]["status"] == "succeeded"
    assert "succeeded" in requests.get(payment["checkout_url"], timeout=5).text


def test_checkout_in_yen_and_cancel(sandbox):
    payment = create(sandbox, amount=500, currency="JPY").json()
    assert "500 JPY" in requests.get(payment["checkout_url"], timeout=5).text
    canceled = requests.post(
        payment["checkout_url"], data={"action": "cancel"}, allow_redirects=False, timeout=5
    )
    assert canceled.headers["Location"] == NEW["cancel_url"]
    assert sandbox.payments[payment["id"]]["status"] == "canceled"


def test_webhooks_signed_retried_and_refunds_complete():
    receiver = Receiver(failures=2)
    try:
        with Sandbox(
            webhook_url=receiver.url,
            webhook_secret=SECRET,
            refund_delay=0.05,
            delivery_backoff=0.01,
        ) as sandbox:
            payment = create(sandbox).json()
            sandbox.pay(payment["id"])
            refund = requests.post(
                f"{sandbox.api_base}/refunds",
                json={"payment_id": payment["id"], "amount": 234},
                headers=AUTH,
                timeout=5,
            )
            assert refund.status_code == 201
            too_much = requests.post(
                f"{sandbox.api_base}/refunds",
                json={"payment_id": payment["id"], "amount": 1001},
                headers=AUTH,
                timeout=5,
            )
            assert too_much.status_code == 400
            assert sandbox.wait_until(lambda: len(receiver.bodies) == 3)
            assert sandbox.wait_for_deliveries()
    finally:
        receiver.close()
    assert receiver.events == ["payment.succeeded", "refund.created", "refund.succeeded"]
    assert receiver.bodies[0]["data"]["id"] == payment["id"]
    assert receiver.bodies[2]["data"]["status"] == "succeeded"
    first_attempts = [d for d in sandbox.deliveries if d.event == "payment.succeeded"]
    assert [d.status for d in first_attempts] == [500, 500, 200]


def test_failures_some_after_the_request_took_effect():
    with Sandbox(failure_rate=1.0, seed=3) as sandbox:
        outcomes: list[int | str] = []
        for number in range(12):
            headers = {**AUTH, "Idempotency-Key": f"k{number}"}
            try:
                response = requests.post(
                    f"{sandbox.api_base}/payments", json=NEW, headers=headers, timeout=5
                )
                outcomes.append(response.status_code)
            except requests.ConnectionError:
                outcomes.append("dropped")
        injected = list(sandbox.injected)
        acted = len(sandbox.payments)
        sandbox.failure_rate = 0.0
        replay = requests.post(
            f"{sandbox.api_base}/payments",
            json=NEW,
            headers={**AUTH, "Idempotency-Key": "k0"},
            timeout=5,
        )
    assert set(outcomes) <= {500, 429, "dropped"}
    assert 200 not in outcomes and 201 not in outcomes
    lost = injected.count("500-after") + injected.count("drop-after")
    assert lost > 0
    assert acted == lost  # State changed although the client saw a failure.
    if injected[0].endswith("-after"):
        assert replay.json()["id"] in sandbox.payments
        assert len(sandbox.payments) == acted  # The retry did not act twice.


def test_sandbox_command_validates_its_options(settings):
    with pytest.raises(CommandError, match="failure-rate"):
        call_command("ledgepay_sandbox", "--failure-rate", "1.5")
    settings.LEDGEPAY_WEBHOOK_SECRET = ""
    with pytest.raises(CommandError, match="LEDGEPAY_WEBHOOK_SECRET"):
        call_command("ledgepay_sandbox", "--webhook-url", "http://127.0.0.1:1/hook/")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_sandbox_command_serves_until_ctrl_c():
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    port = free_port()
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings", "PYTHONUNBUFFERED": "1"}
    command = [
        sys.executable,
        "-m",
        "django",
        "ledgepay_sandbox",
        "--port",
        str(port),
        "--webhook-url",
        "http://127.0.0.1:9/hook/",
        "--rate-limit",
        "50",
    ]
    process = subprocess.Popen(
        command,
        cwd=Path(__file__).resolve().parent.parent,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                response = requests.get(
                    f"http://127.0.0.1:{port}/v1/payments", headers=AUTH, timeout=1
                )
                break
            except requests.ConnectionError:
                assert process.poll() is None, process.stdout.read() if process.stdout else ""
                assert time.monotonic() < deadline, "the sandbox did not start"
                time.sleep(0.1)
        assert response.status_code == 200
        assert response.headers["X-RateLimit-Limit"] == "50"
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0
    assert f"LedgePay sandbox at http://127.0.0.1:{port}/v1" in output
    assert "Delivering webhooks to http://127.0.0.1:9/hook/" in output
    assert "Sandbox stopped." in output
