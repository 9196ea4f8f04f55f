"""The sandbox over loopback, spoken to with plain requests."""

from __future__ import annotations

import ast
import contextlib
import io
import json
import logging
import math
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import requests

from django.core.management import CommandError, call_command

from django_ledgepay.management.commands.ledgepay_sandbox import Command as SandboxCommand
from django_ledgepay.sandbox import Sandbox, StateFileError, storage
from django_ledgepay.sandbox.handler import Handler
from django_ledgepay.sandbox.state import LedgePayState
from django_ledgepay.webhooks import signature_header, verify_signature

ROOT = Path(__file__).resolve().parent.parent

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


@contextlib.contextmanager
def delivering_to(receiver: Receiver, **options: Any) -> Iterator[Sandbox]:
    """A running sandbox that delivers its webhooks to ``receiver``, closed afterwards."""
    try:
        with Sandbox(webhook_url=receiver.url, webhook_secret=SECRET, **options) as sandbox:
            yield sandbox
    finally:
        receiver.close()


def post_refund(sandbox: Sandbox, payment_id: str, **fields: Any) -> requests.Response:
    return requests.post(
        f"{sandbox.api_base}/refunds",
        json={"payment_id": payment_id, **fields},
        headers=AUTH,
        timeout=5,
    )


class Receiver:
    """A shop's webhook endpoint on loopback that records signed deliveries.

    It answers 500 to the first ``failures`` deliveries, and ``refusal`` (500 with no body
    unless told) to every delivery whose body ``refuse`` returns True for.
    """

    def __init__(
        self,
        failures: int = 0,
        refuse: Callable[[dict[str, Any]], bool] | None = None,
        refusal: tuple[int, bytes] = (500, b""),
    ) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.failures = failures
        self.refuse = refuse
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                verify_signature(body, self.headers["LedgePay-Signature"], [SECRET])
                answer = b""
                if receiver.failures > 0:
                    receiver.failures -= 1
                    self.send_response(500)
                elif receiver.refuse is not None and receiver.refuse(json.loads(body)):
                    status, answer = refusal
                    self.send_response(status)
                else:
                    receiver.bodies.append(json.loads(body))
                    self.send_response(200)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook/"
        # Polled often, so that close() takes a moment, not the default half second.
        serve = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)
        serve.start()

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
        ({"success_url": "http://[::1"}, "success_url"),  # urlsplit() raises ValueError.
        # Control characters and whitespace would reach the checkout's Location header.
        ({"success_url": "https://shop.example/r\r\nSet-Cookie: session=stolen"}, "success_url"),
        ({"success_url": "https://shop.example/r\nX: 1"}, "success_url"),
        ({"cancel_url": "https://shop.example/c\x00"}, "cancel_url"),
        ({"cancel_url": "https://shop.example/c\x7f"}, "cancel_url"),
        ({"cancel_url": "https://shop.example/can cel"}, "cancel_url"),
        ({"cancel_url": "https://shop.example/c\t"}, "cancel_url"),
        ({"success_url": "https://shop\u3000example/r"}, "success_url"),
    ],
)
def test_validation_errors_in_the_documented_shape(sandbox, overrides, param):
    response = create(sandbox, **overrides)
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", param)
    assert error["message"]


def nested(levels: int) -> bytes:
    """A new payment's body nesting ``levels`` deep: the body, its metadata, then arrays."""
    body = json.dumps({**NEW, "metadata": {"deep": "here"}})
    return body.replace('"here"', "[" * (levels - 2) + "]" * (levels - 2)).encode()


def test_a_body_nested_100_levels_is_served(sandbox):
    response = requests.post(
        f"{sandbox.api_base}/payments", data=nested(100), headers=AUTH, timeout=5
    )
    assert response.status_code == 201
    paid = requests.post(
        response.json()["checkout_url"], data={"action": "pay"}, allow_redirects=False, timeout=5
    )
    assert paid.status_code == 303


@pytest.mark.parametrize(
    "body",
    [
        # Deeper than the JSON decoder can go: it raises RecursionError.
        b"[" * 100_000 + b"]" * 100_000,
        b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        nested(101),
        # Readable, but so near the limit that writing it out in an answer or a webhook
        # could fail.
        nested(978),
    ],
)
def test_a_body_nested_too_deep_is_a_400(sandbox, body):
    response = requests.post(f"{sandbox.api_base}/payments", data=body, headers=AUTH, timeout=5)
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert "nests deeper than 100 levels" in response.json()["error"]["message"]
    assert sandbox.payments == {}


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
    moment = time.time()
    sandbox.state.clock = lambda: moment  # All three in one second, whenever the test runs.
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


def test_the_headers_show_the_enforced_limit_whatever_it_is(sandbox):
    sandbox.rate_limit = 0  # Past the constructor's check: nothing gets through.
    response = requests.get(f"{sandbox.api_base}/payments", headers=AUTH, timeout=5)
    assert response.status_code == 429
    assert response.headers["X-RateLimit-Limit"] == "0"
    assert response.headers["X-RateLimit-Remaining"] == "0"


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
    with delivering_to(receiver, refund_delay=0.05, delivery_backoff=0.01) as sandbox:
        payment = create(sandbox).json()
        sandbox.pay(payment["id"])
        refund = post_refund(sandbox, payment["id"], amount=234)
        assert refund.status_code == 201
        too_much = post_refund(sandbox, payment["id"], amount=1001)
        assert too_much.status_code == 400
        assert sandbox.wait_until(lambda: len(receiver.bodies) == 3)
        assert sandbox.wait_for_deliveries()
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
    # Injected drops still drop the connection rather than answer a 500.
    assert outcomes.count("dropped") == injected.count("drop") + injected.count("drop-after") > 0
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


@pytest.mark.parametrize("url", ["http://shop..example/hook/", "127.0.0.1:8000/hook/", ""])
def test_sandbox_command_refuses_a_webhook_url_it_cannot_deliver_to(url):
    # Were the URL taken, the command would serve until Ctrl-C: fail instead.
    started = AssertionError("The sandbox started.")
    with (
        mock.patch.object(Sandbox, "start", side_effect=started),
        pytest.raises(CommandError, match="--webhook-url must be an absolute http"),
    ):
        call_command("ledgepay_sandbox", "--port", "0", "--webhook-url", url)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def sandbox_command(
    *options: str, settings_module: str = "tests.settings", cwd: Path = ROOT
) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """Run ``manage.py ledgepay_sandbox`` in a process of its own until the API answers;
    yield its API base and the process. Kill it afterwards if it is still running."""
    port = free_port()
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": settings_module,
        "PYTHONPATH": os.pathsep.join([str(cwd), str(ROOT)]),
        "PYTHONUNBUFFERED": "1",
    }
    command = [sys.executable, "-m", "django", "ledgepay_sandbox", "--port", str(port)]
    process = subprocess.Popen(
        [*command, *options],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    api = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                requests.get(f"{api}/payments", headers=AUTH, timeout=1)
                break
            except requests.ConnectionError:
                assert process.poll() is None, process.stdout.read() if process.stdout else ""
                assert time.monotonic() < deadline, "the sandbox did not start"
                time.sleep(0.1)
        yield api, process
    finally:
        if process.poll() is None:
            process.kill()


def stop_with_ctrl_c(process: subprocess.Popen[str]) -> str:
    """Press Ctrl-C; return what the command printed."""
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=10)
    return output


def test_sandbox_command_serves_until_ctrl_c():
    hook = "http://127.0.0.1:9/hook/"
    with sandbox_command("--webhook-url", hook, "--rate-limit", "50") as (api, process):
        response = requests.get(f"{api}/payments", headers=AUTH, timeout=1)
        assert response.status_code == 200
        assert response.headers["X-RateLimit-Limit"] == "50"
        output = stop_with_ctrl_c(process)
    assert process.returncode == 0
    assert f"LedgePay sandbox at {api}" in output
    assert f"Delivering webhooks to {hook}" in output
    assert "Sandbox stopped." in output


# Header names in any case


def test_header_names_match_in_any_case(sandbox):
    upper = {"AUTHORIZATION": "Bearer sk_test_anything", "IDEMPOTENCY-KEY": "same"}
    lower = {"authorization": "Bearer sk_test_anything", "idempotency-key": "same"}
    first = requests.post(f"{sandbox.api_base}/payments", json=NEW, headers=upper, timeout=5)
    again = requests.post(f"{sandbox.api_base}/payments", json=NEW, headers=lower, timeout=5)
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()
    assert len(sandbox.payments) == 1
    listed = requests.get(
        f"{sandbox.api_base}/payments", headers={"aUtHoRiZaTiOn": "bearer k"}, timeout=5
    )
    assert listed.status_code == 200


def test_the_state_matches_header_names_in_any_case():
    # FakeLedgePay hands the state the headers as the client spelled them.
    state = LedgePayState()
    body = json.dumps(NEW).encode()
    answers = [
        state.handle("POST", "/payments", {}, body, headers)
        for headers in (
            {"AUTHORIZATION": "Bearer k", "IDEMPOTENCY-KEY": "same"},
            {"Authorization": "Bearer k", "Idempotency-Key": "same"},
        )
    ]
    assert [answer.status for answer in answers] == [201, 201]
    assert answers[0].body == answers[1].body
    assert len(state.payments) == 1


# Times out of range, and unexpected errors


@pytest.mark.parametrize("param", ["created_before", "created_after"])
@pytest.mark.parametrize("stamp", ["0001-01-01T00:00:00+05:00", "9999-12-31T23:59:59-05:00"])
def test_times_beyond_the_calendar_in_utc_are_a_400(sandbox, param, stamp):
    response = requests.get(
        f"{sandbox.api_base}/payments", params={param: stamp}, headers=AUTH, timeout=5
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", param)
    assert error["message"]


def test_times_before_the_year_1000_compare_as_times(sandbox):
    payment = create(sandbox).json()

    def listed(**params: str) -> list[str]:
        answer = requests.get(
            f"{sandbox.api_base}/payments", params=params, headers=AUTH, timeout=5
        )
        assert answer.status_code == 200
        return [p["id"] for p in answer.json()["data"]]

    assert listed(created_before="0999-01-01T00:00:00Z") == []
    assert listed(created_after="0999-01-01T00:00:00Z") == [payment["id"]]
    assert listed(created_before="0001-01-01T00:00:00Z") == []


def test_an_unexpected_error_is_a_logged_json_500(sandbox, monkeypatch, caplog):
    def broken(*args: Any) -> Any:
        raise RuntimeError("the state broke")

    monkeypatch.setattr(sandbox.state, "handle", broken)
    with caplog.at_level(logging.ERROR, logger="django_ledgepay.sandbox"):
        response = requests.get(f"{sandbox.api_base}/payments", headers=AUTH, timeout=5)
    assert response.status_code == 500
    assert response.json()["error"]["type"] == "api_error"
    assert response.json()["error"]["message"]
    [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "GET /v1/payments" in record.getMessage()
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], RuntimeError)
    monkeypatch.undo()
    assert requests.get(f"{sandbox.api_base}/payments", headers=AUTH, timeout=5).ok


def test_an_unexpected_error_on_the_checkout_page_is_a_json_500(sandbox, monkeypatch):
    payment = create(sandbox).json()

    def broken(*args: Any) -> Any:
        raise KeyError("status")

    monkeypatch.setattr(sandbox.state, "retrieve_payment", broken)
    response = requests.get(payment["checkout_url"], timeout=5)
    assert response.status_code == 500
    assert response.json()["error"]["type"] == "api_error"


# The checkout page


@pytest.mark.parametrize(
    ("first", "then", "status", "back_to"),
    [
        ("pay", "cancel", "succeeded", "success_url"),
        ("pay", "fail", "succeeded", "success_url"),
        ("cancel", "pay", "canceled", "cancel_url"),
        ("fail", "cancel", "failed", "success_url"),
    ],
)
def test_a_second_press_sends_the_shopper_back_as_the_payment_stands(
    sandbox, first, then, status, back_to
):
    payment = create(sandbox).json()
    for action in (first, then):
        answer = requests.post(
            payment["checkout_url"], data={"action": action}, allow_redirects=False, timeout=5
        )
    assert sandbox.payments[payment["id"]]["status"] == status
    assert answer.status_code == 303
    assert answer.headers["Location"] == NEW[back_to]
    page = requests.get(payment["checkout_url"], timeout=5).text
    assert f'href="{NEW[back_to]}"' in page


def test_the_checkout_sends_the_shopper_to_a_non_ascii_url_percent_encoded(sandbox):
    # http.server writes headers in Latin-1: the euro sign once failed the redirect.
    payment = create(sandbox, success_url="https://shop.example/retour/é€").json()
    paid = requests.post(
        payment["checkout_url"], data={"action": "pay"}, allow_redirects=False, timeout=5
    )
    assert paid.status_code == 303
    assert paid.headers["Location"] == "https://shop.example/retour/%C3%A9%E2%82%AC"


# Webhook deliveries


def test_a_failing_event_holds_up_only_its_own_payment():
    stuck: set[str] = set()
    receiver = Receiver(refuse=lambda body: body["data"]["id"] in stuck)
    try:
        with Sandbox(
            webhook_url=receiver.url, webhook_secret=SECRET, delivery_backoff=30.0
        ) as sandbox:
            blocked, other = create(sandbox).json(), create(sandbox).json()
            stuck.add(blocked["id"])
            sandbox.pay(blocked["id"])
            assert sandbox.wait_until(lambda: len(sandbox.deliveries) == 1, timeout=5)
            sandbox.pay(other["id"])
            # Long before the failing event's next attempt, 30 seconds on.
            assert sandbox.wait_until(lambda: len(receiver.bodies) == 1, timeout=5)
            assert not sandbox.wait_for_deliveries(timeout=0.1)
            stopping = time.monotonic()
        stopped_in = time.monotonic() - stopping
    finally:
        receiver.close()
    assert receiver.bodies[0]["data"]["id"] == other["id"]
    assert [(d.object_id, d.status) for d in sandbox.deliveries] == [
        (blocked["id"], 500),
        (other["id"], 200),
    ]
    assert stopped_in < 2  # The scheduled retry does not keep the sandbox running.


def test_events_of_one_payment_keep_their_order_through_retries():
    refusals = {"refund.created": 3}

    def refuse(body: dict[str, Any]) -> bool:
        left = refusals.get(body["event"], 0)
        refusals[body["event"]] = left - 1
        return left > 0

    receiver = Receiver(refuse=refuse)
    with delivering_to(receiver, refund_delay=0.0, delivery_backoff=0.05) as sandbox:
        payment = create(sandbox).json()
        sandbox.pay(payment["id"])
        refund = post_refund(sandbox, payment["id"])
        assert refund.status_code == 201
        assert sandbox.wait_until(lambda: len(receiver.bodies) == 3)
        assert sandbox.wait_for_deliveries()
    assert receiver.events == ["payment.succeeded", "refund.created", "refund.succeeded"]
    assert [d.attempt for d in sandbox.deliveries if d.event == "refund.created"] == [1, 2, 3, 4]


def test_an_event_is_given_up_after_its_attempts_and_the_next_one_goes(caplog):
    receiver = Receiver(refuse=lambda body: body["event"] == "payment.succeeded")
    with (
        caplog.at_level(logging.INFO, logger="django_ledgepay.sandbox"),
        delivering_to(
            receiver, refund_delay=-1, delivery_attempts=3, delivery_backoff=0.01
        ) as sandbox,
    ):
        payment = create(sandbox).json()
        sandbox.pay(payment["id"])
        refund = post_refund(sandbox, payment["id"])
        assert refund.status_code == 201
        assert sandbox.wait_for_deliveries()
    attempts = [(d.event, d.attempt, d.status) for d in sandbox.deliveries]
    assert attempts == [
        ("payment.succeeded", 1, 500),
        ("payment.succeeded", 2, 500),
        ("payment.succeeded", 3, 500),
        ("refund.created", 1, 200),
    ]
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("django_ledgepay")]
    assert len([line for line in lines if ", attempt " in line]) == 4
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.getMessage() == (
        f"Webhook payment.succeeded {payment['id']} to {receiver.url} given up after "
        "3 attempts: it will not be sent again."
    )


def test_an_attempt_that_fails_unexpectedly_is_retried_by_a_live_thread(caplog):
    receiver = Receiver()
    with (
        caplog.at_level(logging.INFO, logger="django_ledgepay.sandbox"),
        delivering_to(receiver, delivery_backoff=0.01, delivery_max_backoff=0.02) as sandbox,
    ):
        # Past the constructor's check, as a script may set it. urllib3 raises
        # LocationParseError, which is no requests.RequestException.
        sandbox.webhook_url = "http://shop..example/hook/"
        payment = create(sandbox).json()
        sandbox.pay(payment["id"])
        assert sandbox.wait_until(lambda: len(sandbox.deliveries) >= 2, timeout=5)
        sandbox.webhook_url = None  # Deliveries off: the queued event waits.
        assert sandbox.wait_until(
            lambda: sandbox.deliveries[-1].error == "no webhook_url", timeout=5
        )
        sandbox.webhook_url = receiver.url
        assert sandbox.wait_for_deliveries()
        alive = [thread for thread in sandbox._threads if thread.is_alive()]
        assert len(alive) == len(sandbox._threads)
    assert receiver.events == ["payment.succeeded"]
    *failed, delivered = sandbox.deliveries
    assert delivered.ok
    assert {d.error for d in failed} == {"LocationParseError", "no webhook_url"}
    assert [d.attempt for d in sandbox.deliveries] == list(range(1, len(sandbox.deliveries) + 1))
    attempts = [r for r in caplog.records if ", attempt " in r.getMessage()]
    assert len(attempts) == len(sandbox.deliveries)  # One line per attempt.
    errors = [r for r in attempts if r.levelno == logging.ERROR]
    assert errors
    assert all(r.exc_info and type(r.exc_info[1]).__name__ == "LocationParseError" for r in errors)


def test_an_attempt_that_breaks_the_sandbox_is_logged_and_retried(caplog):
    receiver = Receiver()
    broken = {"left": 2}

    def breaking(body: bytes, secret: str | bytes) -> str:
        if broken["left"]:
            broken["left"] -= 1
            raise RuntimeError("signing broke")
        return signature_header(body, secret)

    try:
        with (
            caplog.at_level(logging.INFO, logger="django_ledgepay.sandbox"),
            mock.patch("django_ledgepay.sandbox.delivery.signature_header", breaking),
            Sandbox(
                webhook_url=receiver.url, webhook_secret=SECRET, delivery_backoff=0.01
            ) as sandbox,
        ):
            payment = create(sandbox).json()
            sandbox.pay(payment["id"])
            assert sandbox.wait_for_deliveries()
    finally:
        receiver.close()
    assert receiver.events == ["payment.succeeded"]
    assert [(d.attempt, d.status) for d in sandbox.deliveries] == [(3, 200)]
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert [r.getMessage() for r in errors] == [
        f"Webhook payment.succeeded {payment['id']}, attempt {attempt}: the sandbox failed "
        "to send it."
        for attempt in (1, 2)
    ]


def test_waiting_for_deliveries_waits_for_refunds_to_complete():
    receiver = Receiver()
    with delivering_to(receiver, refund_delay=0.3, delivery_backoff=0.01) as sandbox:
        payment = create(sandbox).json()
        sandbox.pay(payment["id"])
        refund = post_refund(sandbox, payment["id"]).json()
        assert sandbox.wait_for_deliveries()
        # Not only once refund.created is out: refund.succeeded is too.
        assert receiver.events == ["payment.succeeded", "refund.created", "refund.succeeded"]
        assert sandbox.refunds[refund["id"]]["status"] == "succeeded"


def test_a_refund_completed_by_hand_does_not_keep_the_wait_going():
    with Sandbox(refund_delay=0.05) as sandbox:
        payment = sandbox.state.create_payment(NEW)
        sandbox.pay(payment["id"])
        refund = sandbox.state.create_refund({"payment_id": payment["id"]})
        sandbox.complete_refund(refund["id"], "failed")
        assert sandbox.wait_for_deliveries(timeout=5)  # Once the timer has found it done.
    assert sandbox.refunds[refund["id"]]["status"] == "failed"


def test_a_refund_due_while_the_sandbox_is_stopped_completes(caplog):
    receiver = Receiver()
    sandbox = Sandbox(
        webhook_url=receiver.url, webhook_secret=SECRET, refund_delay=0.05, delivery_backoff=0.01
    )
    try:
        with caplog.at_level(logging.INFO, logger="django_ledgepay.sandbox"):
            sandbox.start()
            sandbox.stop()
            payment = sandbox.state.create_payment(NEW)
            sandbox.pay(payment["id"])
            refund = sandbox.state.create_refund({"payment_id": payment["id"]})
            # Its timer fires while the sandbox is stopped: the refund completes quietly...
            assert sandbox.wait_until(
                lambda: sandbox.refunds[refund["id"]]["status"] == "succeeded", timeout=5
            )
            assert sandbox.wait_until(lambda: sandbox._refunds_due == 0, timeout=5)
            assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
            assert receiver.events == []
            assert sandbox.outbox.undelivered == 3
            # ...and its event goes out, in order, once the sandbox runs again.
            sandbox.start()
            assert sandbox.wait_for_deliveries()
    finally:
        sandbox.stop()
        receiver.close()
    assert receiver.events == ["payment.succeeded", "refund.created", "refund.succeeded"]


def test_listeners_hear_of_each_change_while_the_state_is_locked():
    # So that the sandbox queues events in the order they happen: a refund made in one
    # thread as soon as another settles its payment once queued refund.created first.
    state = LedgePayState()

    def locked() -> bool:
        """Whether another thread finds the state's lock taken."""
        taken: list[bool] = []

        def probe() -> None:
            acquired = state.lock.acquire(blocking=False)
            if acquired:
                state.lock.release()
            taken.append(not acquired)

        thread = threading.Thread(target=probe)
        thread.start()
        thread.join()
        return taken[0]

    heard: list[tuple[str, bool]] = []
    state.listeners.append(lambda event_type, data: heard.append((event_type, locked())))
    payment = state.create_payment(NEW)
    state.settle(payment["id"], "succeeded")
    refund = state.create_refund({"payment_id": payment["id"]})
    state.complete_refund(refund["id"])
    assert heard == [
        ("payment.succeeded", True),
        ("refund.created", True),
        ("refund.succeeded", True),
    ]


def test_the_default_retries_back_off_to_a_minute_and_last_hours():
    sandbox = Sandbox()
    delays = [sandbox.retry_delay(attempts) for attempts in range(1, sandbox.delivery_attempts)]
    assert delays[:4] == [0.5, 1.0, 2.0, 4.0]
    assert max(delays) == 60.0
    assert sum(delays) > 3 * 60 * 60
    assert Sandbox(delivery_max_backoff=5).retry_delay(10_000) == 5


@pytest.mark.parametrize(
    "options",
    [
        {"port": 70000},
        {"port": -1},
        {"delivery_attempts": 0},
        {"rate_limit": 0},
        {"rate_limit": -1},
        {"failure_rate": math.nan},
        # A timer of infinite or absurd delay failed in its thread at the first refund.
        {"refund_delay": math.inf},
        {"refund_delay": math.nan},
        {"refund_delay": 86_401},
        {"refund_delay": 1e12},
    ],
)
def test_the_sandbox_refuses_impossible_options(options):
    with pytest.raises(ValueError):
        Sandbox(**options)


@pytest.mark.parametrize(
    "url",
    [
        "http://shop..example/hook/",  # urllib3 cannot connect: LocationParseError.
        "http://.shop.example/hook/",
        "127.0.0.1:8000/ledgepay/webhook/",
        "/ledgepay/webhook/",
        "ftp://shop.example/hook/",
        "http://",
        "http:///hook/",
        "http://[::1",
        "http://shop.example:99999/hook/",
        "http://shop.example:0/hook/",
        "http://shop.example/hook/\r\n",
        "http://shop example/hook/",
        "",
    ],
)
def test_the_sandbox_refuses_a_webhook_url_it_cannot_deliver_to(url):
    with pytest.raises(ValueError, match="webhook_url must be an absolute http"):
        Sandbox(webhook_url=url, webhook_secret=SECRET)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8000/ledgepay/webhook/",
        "https://shop.example/hook",
        "HTTP://SHOP.EXAMPLE/hook/",
        "http://[::1]:8000/hook/",
        "http://bücher.example/hook/",
        "http://localhost/hook/?token=1",
    ],
)
def test_the_sandbox_takes_a_webhook_url_it_can_deliver_to(url):
    assert Sandbox(webhook_url=url, webhook_secret=SECRET).webhook_url == url


# The command


@pytest.mark.parametrize("port", ["70000", "-1"])
def test_sandbox_command_refuses_an_impossible_port(port):
    with pytest.raises(CommandError, match="--port must be between 0 and 65535"):
        call_command("ledgepay_sandbox", "--port", port)


@contextlib.contextmanager
def not_started() -> Iterator[None]:
    """The command may not start the sandbox: were it to, it would serve until Ctrl-C."""
    with mock.patch.object(Sandbox, "start", side_effect=AssertionError("The sandbox started.")):
        yield


@pytest.mark.parametrize(
    "delay", ["inf", "Infinity", "1e400", "-inf", "nan", "-1", "-0.5", "86401"]
)
def test_sandbox_command_refuses_an_impossible_refund_delay(delay):
    with (
        not_started(),
        pytest.raises(CommandError, match=r"--refund-delay must be between 0 and 86400 seconds"),
    ):
        call_command("ledgepay_sandbox", "--port", "0", f"--refund-delay={delay}")


@pytest.mark.parametrize("delay", ["0", "0.05", "86400"])
def test_sandbox_command_takes_a_refund_delay_up_to_a_day(delay):
    with not_started(), pytest.raises(AssertionError, match="The sandbox started"):
        call_command("ledgepay_sandbox", "--port", "0", f"--refund-delay={delay}")


@pytest.mark.parametrize("rate", ["nan", "inf", "-inf", "-0.1", "1.5"])
def test_sandbox_command_refuses_an_impossible_failure_rate(rate):
    with (
        not_started(),
        pytest.raises(CommandError, match="--failure-rate must be between 0 and 1"),
    ):
        call_command("ledgepay_sandbox", "--port", "0", f"--failure-rate={rate}")


def test_sandbox_command_refuses_an_infinite_refund_delay_in_one_line():
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "django", "ledgepay_sandbox", "--port", "0"]
    finished = subprocess.run(
        [*command, "--refund-delay", "inf"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert finished.returncode != 0
    assert finished.stdout == ""
    assert finished.stderr.splitlines() == [
        "CommandError: --refund-delay must be between 0 and 86400 seconds (a day)."
    ]


def test_sandbox_command_says_when_the_port_is_taken():
    handlers = [signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(CommandError, match=f"Cannot listen on 127.0.0.1:{port}"):
            call_command("ledgepay_sandbox", "--port", str(port))
    # The command's Ctrl-C handlers are gone with it.
    assert [signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)] == handlers


@pytest.fixture
def ledgepay_loggers() -> Iterator[tuple[logging.Logger, logging.Logger]]:
    """The package's and the sandbox's loggers, restored afterwards."""
    package = logging.getLogger("django_ledgepay")
    sandbox = logging.getLogger("django_ledgepay.sandbox")
    saved = [(lg, list(lg.handlers), lg.level, lg.propagate) for lg in (package, sandbox)]
    yield package, sandbox
    for lg, handlers, level, propagate in saved:
        lg.handlers[:] = handlers
        lg.setLevel(level)
        lg.propagate = propagate


def test_sandbox_command_leaves_logs_to_a_project_that_handles_them(ledgepay_loggers):
    package, sandbox_logger = ledgepay_loggers
    # As example_project's LOGGING does: a handler on the package's logger.
    stream = io.StringIO()
    package.addHandler(logging.StreamHandler(stream))
    package.setLevel(logging.INFO)
    SandboxCommand()._show_logs()
    assert sandbox_logger.handlers == []
    logging.getLogger("django_ledgepay.sandbox.server").info("Webhook attempt 1")
    assert stream.getvalue() == "Webhook attempt 1\n"


def test_sandbox_command_shows_logs_when_nothing_handles_them(ledgepay_loggers, capsys):
    _, sandbox_logger = ledgepay_loggers
    sandbox_logger.propagate = False  # Nothing above it handles its records.
    SandboxCommand()._show_logs()
    assert len(sandbox_logger.handlers) == 1
    logging.getLogger("django_ledgepay.sandbox.server").info("Webhook attempt 1")
    assert capsys.readouterr().err.count("Webhook attempt 1") == 1


@pytest.mark.parametrize(
    ("settings_module", "path"),
    [
        ("tests.settings", ROOT),  # No LOGGING: the command prints the lines itself.
        ("example_project.settings", ROOT / "example_project"),  # LOGGING prints them.
    ],
)
def test_sandbox_command_logs_each_webhook_attempt_once(settings_module, path):
    options = ("--webhook-url", "http://127.0.0.1:9/hook/")
    with sandbox_command(*options, settings_module=settings_module, cwd=path) as (api, process):
        payment = requests.post(f"{api}/payments", json=NEW, headers=AUTH, timeout=5)
        checkout = payment.json()["checkout_url"]
        requests.post(checkout, data={"action": "pay"}, allow_redirects=False, timeout=5)
        time.sleep(1.0)  # Attempts 1 (at once) and 2 (half a second later) fail.
        output = stop_with_ctrl_c(process)
    assert process.returncode == 0, output
    # However many attempts a loaded machine fits in that second, each is printed once.
    attempts = re.findall(r"Webhook payment\.succeeded \S+ to \S+, attempt (\d+): failed", output)
    assert attempts, output
    assert len(attempts) == len(set(attempts)), output


# Loopback speed: no Nagle stall


def test_answers_leave_with_tcp_nodelay_in_one_send(sandbox, monkeypatch):
    # Headers and body in two sends, without TCP_NODELAY, made every keep-alive answer wait
    # for the client's delayed ACK (about 40 ms).
    nodelay: list[int] = []
    setup = Handler.setup

    def recording_setup(handler: Handler) -> None:
        setup(handler)
        nodelay.append(handler.connection.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    sent: list[bytes] = []
    send = socket.socket.send

    def recording_send(sock: socket.socket, data: Any, *args: Any) -> int:
        sent.append(bytes(data))
        return send(sock, data, *args)

    monkeypatch.setattr(Handler, "setup", recording_setup)
    monkeypatch.setattr(socket.socket, "send", recording_send)
    payment = sandbox.state.create_payment(NEW)
    with requests.Session() as session:
        answers = [
            session.get(f"{sandbox.api_base}/payments/{payment['id']}", headers=AUTH, timeout=5)
            for _ in range(2)
        ]
    monkeypatch.undo()
    assert [answer.status_code for answer in answers] == [200, 200]
    assert nodelay and all(nodelay)
    assert len(nodelay) == 1  # Both requests on one kept-alive connection.
    whole = [data for data in sent if data.startswith(b"HTTP/1.1 200")]
    assert len(whole) == 2
    assert all(data.endswith(answers[0].content) for data in whole)


# The list index


def reference_page(
    state: LedgePayState, limit: int, status: str | None, after: str | None, before: str | None
) -> tuple[list[str], bool]:
    """What a page held when it was made by sorting every payment (the former way)."""
    ordered = sorted(
        state.payments.values(),
        key=lambda p: (p["created_at"], state._index.sequence[p["id"]]),
        reverse=True,
    )
    matching = [
        p["id"]
        for p in ordered
        if (status is None or p["status"] == status)
        and (after is None or p["created_at"] > after)
        and (before is None or p["created_at"] < before)
    ]
    return matching[:limit], len(matching) > limit


def test_list_pages_from_the_index_match_a_full_sort():
    generator = random.Random(12)
    moments = [1_700_000_000 + generator.randrange(40) for _ in range(300)]
    clock = iter(moments)  # Out of order and many in one second, as clocks allow.
    state = LedgePayState(clock=lambda: float(next(clock, moments[-1])))
    ids = [state.create_payment({**NEW, "amount": n + 1})["id"] for n in range(200)]
    for payment_id in generator.sample(ids, 120):
        state.settle(payment_id, generator.choice(["succeeded", "failed", "canceled"]))
    stamps = sorted({p["created_at"] for p in state.payments.values()})
    bounds = [None, stamps[0], stamps[len(stamps) // 2], stamps[-1], "2000-01-01T00:00:00Z"]
    checked = 0
    for status in (None, "pending", "succeeded", "failed", "canceled"):
        for after in bounds:
            for before in bounds:
                for limit in (1, 7, 100):
                    query = {"limit": str(limit)}
                    query.update({"status": status} if status else {})
                    query.update({"created_after": after} if after else {})
                    query.update({"created_before": before} if before else {})
                    page = state.list_payments(query)
                    ids_on_page = [p["id"] for p in page["data"]]
                    expected = reference_page(state, limit, status, after, before)
                    assert (ids_on_page, page["has_more"]) == expected, query
                    checked += bool(ids_on_page)
    assert checked > 100  # Most queries found payments: the comparison was not of nothing.


def test_a_listed_payment_is_a_copy_with_its_current_status():
    state = LedgePayState()
    payment = state.create_payment(NEW)
    state.settle(payment["id"], "succeeded")
    [listed] = state.list_payments({"status": "succeeded"})["data"]
    assert listed["status"] == "succeeded"
    assert state.list_payments({"status": "pending"})["data"] == []
    listed["status"] = "changed by the caller"
    assert state.payments[payment["id"]]["status"] == "succeeded"


# The state file


def test_each_snapshot_holds_every_change_since_the_one_before():
    # A snapshot encodes only the objects that changed since the last one.
    state = LedgePayState()
    payment = state.create_payment(NEW)
    before = json.loads(state.snapshot())
    state.settle(payment["id"], "succeeded")
    refund = state.create_refund({"payment_id": payment["id"], "amount": 34})
    middle = json.loads(state.snapshot())
    state.complete_refund(refund["id"], "failed")
    state.handle(
        "POST", "/payments", {}, json.dumps(NEW).encode(), {**AUTH, "Idempotency-Key": "k"}
    )
    after = json.loads(state.snapshot())
    assert [p["status"] for p in before["payments"]] == ["pending"]
    assert [p["status"] for p in middle["payments"]] == ["succeeded"]
    assert [r["status"] for r in middle["refunds"]] == ["pending"]
    assert [r["status"] for r in after["refunds"]] == ["failed"]
    assert len(after["payments"]) == 2
    assert [record[1] for record in after["idempotency"]] == ["k"]
    restored = LedgePayState()
    restored.restore(after)
    assert restored.payments == state.payments
    assert restored.refunds == state.refunds
    assert json.loads(restored.snapshot()) == after
    assert restored.refunded(payment["id"]) == 0  # The failed refund does not count.


def test_a_restarted_sandbox_keeps_payments_refunds_and_idempotency(tmp_path):
    path = tmp_path / "state.json"
    headers = {**AUTH, "Idempotency-Key": "order-7"}
    with Sandbox(state_file=path, refund_delay=0.0, port=free_port()) as first:
        payment = requests.post(
            f"{first.api_base}/payments", json=NEW, headers=headers, timeout=5
        ).json()
        first.pay(payment["id"])
        refund = post_refund(first, payment["id"], amount=34).json()
        assert first.wait_for_deliveries()
        kept = requests.get(f"{first.api_base}/payments/{payment['id']}", headers=AUTH, timeout=5)
    assert "sk_test_anything" not in path.read_text()  # Only a digest of the key is kept.
    with Sandbox(state_file=path, port=first.port) as second:
        fetched = requests.get(
            f"{second.api_base}/payments/{payment['id']}", headers=AUTH, timeout=5
        )
        listed = requests.get(f"{second.api_base}/payments", headers=AUTH, timeout=5).json()
        again = requests.post(f"{second.api_base}/payments", json=NEW, headers=headers, timeout=5)
        too_much = post_refund(second, payment["id"], amount=1201)
        rest = post_refund(second, payment["id"], amount=1200)
        newer = create(second).json()
    assert fetched.status_code == 200
    assert fetched.json() == kept.json()
    assert fetched.json()["status"] == "succeeded"
    assert [p["id"] for p in listed["data"]] == [payment["id"]]
    assert again.json() == payment  # The first answer again, and no second payment.
    assert second.refunds[refund["id"]]["status"] == "succeeded"
    assert too_much.status_code == 400  # 34 of 1234 were refunded before the restart.
    assert rest.status_code == 201
    assert list(second.payments) == [payment["id"], newer["id"]]


def test_refunds_and_deliveries_pending_at_a_restart_go_out_after_it(tmp_path):
    path = tmp_path / "state.json"
    refusing = {"on": True}
    receiver = Receiver(refuse=lambda body: refusing["on"])
    try:
        first = Sandbox(
            webhook_url=receiver.url,
            webhook_secret=SECRET,
            state_file=path,
            refund_delay=-1,  # The refund stays pending until the restart.
            delivery_backoff=30.0,
        )
        with first:
            payment = create(first).json()
            first.pay(payment["id"])
            refund = post_refund(first, payment["id"]).json()
            assert first.wait_until(lambda: len(first.deliveries) == 1, timeout=5)
        assert receiver.events == []
        refusing["on"] = False
        second = Sandbox(
            webhook_url=receiver.url,
            webhook_secret=SECRET,
            state_file=path,
            refund_delay=0.05,
            delivery_backoff=0.01,
        )
        assert second.refunds[refund["id"]]["status"] == "pending"
        with second:
            assert second.wait_for_deliveries()
    finally:
        receiver.close()
    assert receiver.events == ["payment.succeeded", "refund.created", "refund.succeeded"]
    assert [body["data"]["id"] for body in receiver.bodies] == [
        payment["id"],
        refund["id"],
        refund["id"],
    ]
    # The first event resumes with its attempts counted; nothing is left to deliver.
    assert [(d.event, d.attempt) for d in second.deliveries][0] == ("payment.succeeded", 2)
    assert Sandbox(state_file=path).outbox.undelivered == 0
    assert Sandbox(state_file=path).refunds[refund["id"]]["status"] == "succeeded"


def test_deliveries_kept_while_a_restart_has_no_webhook_url(tmp_path):
    path = tmp_path / "state.json"
    receiver = Receiver(refuse=lambda body: True)
    try:
        with Sandbox(
            webhook_url=receiver.url, webhook_secret=SECRET, state_file=path, delivery_backoff=30
        ) as first:
            payment = create(first).json()
            first.pay(payment["id"])
    finally:
        receiver.close()
    with Sandbox(state_file=path) as quiet:  # No webhook_url: nothing is sent, nothing lost.
        create(quiet)
        assert quiet.wait_for_deliveries(timeout=1)
    receiver = Receiver()
    with delivering_to(receiver, state_file=path) as again:
        assert again.wait_for_deliveries()
    assert receiver.events == ["payment.succeeded"]
    assert receiver.bodies[0]["data"]["id"] == payment["id"]


def test_changes_are_saved_while_the_sandbox_runs(tmp_path):
    path = tmp_path / "state.json"
    writes: list[int] = []
    write = storage.write_atomically

    def counting(target: Path, data: bytes) -> None:
        writes.append(len(data))
        write(target, data)

    with (
        mock.patch.object(storage, "write_atomically", counting),
        Sandbox(state_file=path, save_delay=0.2) as sandbox,
    ):
        for amount in range(1, 21):
            sandbox.state.create_payment({**NEW, "amount": amount})

        def saved() -> int:
            document = storage.load(path)
            return 0 if document is None else len(document["state"]["payments"])

        # On disk before any stop(): a crash from here on keeps them.
        assert sandbox.wait_until(lambda: saved() == 20, timeout=5)
        assert len(writes) < 20  # Changes made together are written together.


def test_stop_saves_at_once_and_leaves_no_save_behind(tmp_path):
    path = tmp_path / "state.json"
    with Sandbox(state_file=path, save_delay=0.2) as sandbox:
        payment = sandbox.state.create_payment(NEW)
    document = storage.load(path)  # Saved by stop(), before its timer was due.
    assert document is not None
    assert [p["id"] for p in document["state"]["payments"]] == [payment["id"]]
    path.unlink()  # As a test's temporary directory goes away after it.
    time.sleep(0.4)
    assert not path.exists()  # The timer of that change was canceled: stop() saved it.


def test_a_crash_between_writing_and_renaming_keeps_the_previous_state(tmp_path, monkeypatch):
    class Killed(BaseException):
        """The process dies."""

    path = tmp_path / "state.json"
    sandbox = Sandbox(state_file=path, save_delay=60)  # Saved only when told, here.
    first = sandbox.state.create_payment(NEW)
    sandbox.save()
    sandbox.state.create_payment(NEW)

    def killed(*args: Any) -> None:
        raise Killed

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(Killed):
        sandbox.save()
    monkeypatch.undo()
    # And a temporary file cut short by a crash while it was written, left beside it.
    (tmp_path / ".state.json.crashed.tmp").write_bytes(path.read_bytes()[:50])
    restarted = Sandbox(state_file=path)
    assert list(restarted.payments) == [first["id"]]


SAVED = {"id": "pay_1", "status": "pending", "created_at": "2026-12-01T00:00:00Z", "amount": 1}


def state_file_of(**state: Any) -> bytes:
    """A state file holding ``state``'s lists (payments, refunds, idempotency)."""
    lists = {"payments": [], "refunds": [], "idempotency": [], **state}
    document = {"format": "ledgepay-sandbox-state", "version": 1, "state": lists}
    return json.dumps({**document, "deliveries": []}).encode()


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b'{"format": "ledgepay-sandbox-state", "version": 1, "state": {"paym', "not complete"),
        (b"", "not complete JSON"),
        (b'{"payments": []}', "not a LedgePay sandbox state file"),
        (b'{"format": "ledgepay-sandbox-state", "version": 9}', "of version 9"),
        (
            b'{"format": "ledgepay-sandbox-state", "version": 1, "state": {"payments": [{}]}}',
            "not of the expected shape",
        ),
        (
            b'{"format": "ledgepay-sandbox-state", "version": 1, "state": '
            b'{"payments": [], "refunds": [], "idempotency": []}, "deliveries": [1]}',
            "not of the expected shape",
        ),
        (state_file_of(payments=[SAVED, SAVED]), "payment pay_1 appears twice"),
        (state_file_of(refunds=[{**SAVED, "id": "re_1"}]), "refund re_1 is of no payment"),
    ],
)
def test_a_state_file_that_cannot_be_read_is_a_clear_error(tmp_path, content, reason):
    path = tmp_path / "state.json"
    path.write_bytes(content)
    with pytest.raises(StateFileError, match=reason) as caught:
        Sandbox(state_file=path)
    assert str(path) in str(caught.value)
    with pytest.raises(CommandError, match=reason):
        call_command("ledgepay_sandbox", "--port", "0", "--state", str(path))
    assert path.read_bytes() == content  # Left as it was, for a person to look at.


def test_a_state_file_of_the_documented_shape_loads(tmp_path):
    # The same shape as the refused files above, but whole: they fail for their own reason.
    path = tmp_path / "state.json"
    refund = {**SAVED, "id": "re_1", "payment_id": "pay_1", "status": "failed"}
    path.write_bytes(state_file_of(payments=[SAVED], refunds=[refund]))
    sandbox = Sandbox(state_file=path)
    assert sandbox.payments == {"pay_1": SAVED}
    assert sandbox.refunds == {"re_1": refund}
    page = sandbox.state.list_payments({"status": "pending"})
    assert [p["id"] for p in page["data"]] == ["pay_1"]


def test_a_missing_state_file_starts_empty(tmp_path):
    sandbox = Sandbox(state_file=tmp_path / "new.json")
    assert sandbox.payments == {}
    sandbox.save()
    assert Sandbox(state_file=tmp_path / "new.json").payments == {}


def test_sandbox_command_refuses_a_state_file_it_cannot_write(tmp_path):
    path = tmp_path / "missing-directory" / "state.json"
    with pytest.raises(CommandError, match="Cannot write the state file"):
        call_command("ledgepay_sandbox", "--port", "0", "--state", str(path))


def test_sandbox_command_with_state_remembers_payments_across_a_restart(tmp_path):
    path = tmp_path / "state.json"
    with sandbox_command("--state", str(path)) as (api, process):
        payment = requests.post(f"{api}/payments", json=NEW, headers=AUTH, timeout=5).json()
        output = stop_with_ctrl_c(process)
    assert process.returncode == 0, output
    assert f"State in {path} (0 payments)." in output
    with sandbox_command("--state", str(path)) as (api, process):
        fetched = requests.get(f"{api}/payments/{payment['id']}", headers=AUTH, timeout=5)
        output = stop_with_ctrl_c(process)
    assert fetched.status_code == 200
    assert fetched.json()["id"] == payment["id"]
    assert f"State in {path} (1 payment)." in output


# A refused delivery's log line


def test_a_refused_delivery_logs_the_shops_answer_cut_short(caplog):
    reason = b'{"detail": "No valid signature:\n   the secret may be wrong.", "x": "' + b"y" * 500
    receiver = Receiver(refuse=lambda body: True, refusal=(400, reason + b'"}'))
    with (
        caplog.at_level(logging.INFO, logger="django_ledgepay.sandbox"),
        delivering_to(receiver, delivery_attempts=1) as sandbox,
    ):
        payment = create(sandbox).json()
        sandbox.pay(payment["id"])
        assert sandbox.wait_for_deliveries()
    [line] = [r.getMessage() for r in caplog.records if ", attempt 1: " in r.getMessage()]
    head = f"Webhook payment.succeeded {payment['id']} to {receiver.url}, attempt 1: HTTP 400: "
    assert line.startswith(head)
    answer = line.removeprefix(head)
    assert answer.startswith('{"detail": "No valid signature: the secret may be wrong.", "x": "y')
    assert len(answer) == 200
    assert answer.endswith("y…")
    assert "\n" not in line


# Docstrings


def sandbox_modules() -> list[Path]:
    command = ROOT / "django_ledgepay" / "management" / "commands" / "ledgepay_sandbox.py"
    return [*sorted((ROOT / "django_ledgepay" / "sandbox").glob("*.py")), command]


def test_the_sandbox_docstrings_cite_only_files_in_the_repository():
    cited = []
    for module in sandbox_modules():
        for node in ast.walk(ast.parse(module.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)):
                docstring = ast.get_docstring(node) or ""
                names = re.findall(r"[\w./-]+\.(?:md|py|rst|txt|toml|ini|cfg)\b", docstring)
                cited += [(module, name) for name in names]
    assert cited  # The search finds what it looks for.
    missing = [
        f"{module.relative_to(ROOT)} cites {name}"
        for module, name in cited
        # manage.py: every Django project's, not a file of this repository.
        if name != "manage.py"
        and not (ROOT / name).exists()
        and not (module.parent / name).exists()
    ]
    assert missing == []
