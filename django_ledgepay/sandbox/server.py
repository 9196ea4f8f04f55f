"""The sandbox's HTTP server: API, checkout page, webhook deliveries, injected failures."""

from __future__ import annotations

import contextlib
import html
import json
import logging
import queue
import random
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import requests

from django_ledgepay.currencies import format_amount
from django_ledgepay.sandbox.state import (
    Answer,
    APIFailure,
    Driver,
    LedgePayState,
    event_payload,
)
from django_ledgepay.webhooks import SIGNATURE_HEADER, signature_header

logger = logging.getLogger(__name__)

#: The limit shown in the rate-limit headers when none is enforced.
UNENFORCED_LIMIT = 10_000
WINDOW_SECONDS = 60
FAILURES = ("500", "429", "drop")
LOST_ANSWERS = ("500-after", "drop-after")


@dataclass(frozen=True)
class Delivery:
    """One attempt to deliver a webhook event."""

    event: str
    object_id: str
    url: str
    attempt: int
    status: int | None
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


class Sandbox(Driver):
    """LedgePay in memory, served on loopback. Start it, point LEDGEPAY_API_BASE at
    ``api_base``, and stop it (or use it as a context manager)."""

    def __init__(
        self,
        *,
        port: int = 0,
        host: str = "127.0.0.1",
        webhook_url: str | None = None,
        webhook_secret: str = "",
        failure_rate: float = 0.0,
        rate_limit: int | None = None,
        refund_delay: float = 1.0,
        delivery_attempts: int = 8,
        delivery_backoff: float = 0.5,
        seed: int | None = None,
    ) -> None:
        if not 0.0 <= failure_rate <= 1.0:
            raise ValueError("failure_rate must be between 0 and 1.")
        if webhook_url and not webhook_secret:
            raise ValueError("Deliveries need a webhook_secret to sign them.")
        self.host = host
        self.port = port
        self.webhook_url = webhook_url
        self.webhook_secret = webhook_secret
        self.failure_rate = failure_rate
        self.rate_limit = rate_limit
        self.refund_delay = refund_delay
        self.delivery_attempts = delivery_attempts
        self.delivery_backoff = delivery_backoff
        self.random = random.Random(seed)
        self.state = LedgePayState()
        self.state.listeners.append(self._on_event)
        self.deliveries: list[Delivery] = []
        self.injected: list[str] = []
        self._server: ThreadingHTTPServer | None = None
        self._threads: list[threading.Thread] = []
        self._outbox: queue.Queue[tuple[str, dict[str, Any]] | None] = queue.Queue()
        self._window = (0, 0)  # (window start, requests in it)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._session = requests.Session()

    # Life

    def start(self) -> Sandbox:
        handler = type("Handler", (_Handler,), {"sandbox": self})
        self._server = ThreadingHTTPServer((self.host, self.port), handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.state.checkout_base = f"{self.url}/checkout"
        self._stopping.clear()
        self._threads = [
            threading.Thread(
                target=self._server.serve_forever, args=(0.05,), name="sandbox-http", daemon=True
            ),
            threading.Thread(target=self._deliver_forever, name="sandbox-webhooks", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._outbox.put(None)
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        self._session.close()

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def api_base(self) -> str:
        return f"{self.url}/v1"

    # Driving it from tests

    def wait_until(self, condition: Callable[[], bool], timeout: float = 10.0) -> bool:
        """Poll ``condition`` until it holds or ``timeout`` seconds pass."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return True
            time.sleep(0.02)
        return condition()

    def wait_for_deliveries(self, timeout: float = 10.0) -> bool:
        """Wait until every queued webhook event has been delivered or given up."""
        return self.wait_until(lambda: self._outbox.unfinished_tasks == 0, timeout)

    # API requests, with rate limits and injected failures

    def rate_limit_headers(self) -> tuple[dict[str, str], bool]:
        """Count one request; return the headers and whether it is over the limit."""
        now = int(time.time())
        start = now - now % WINDOW_SECONDS
        with self._lock:
            window_start, count = self._window
            count = count + 1 if window_start == start else 1
            self._window = (start, count)
        limit = self.rate_limit or UNENFORCED_LIMIT
        headers = {
            "X-RateLimit-Limit": str(limit),
            "X-RateLimit-Remaining": str(max(0, limit - count)),
            "X-RateLimit-Reset": str(start + WINDOW_SECONDS),
        }
        over = self.rate_limit is not None and count > self.rate_limit
        if over:
            headers["Retry-After"] = str(max(1, start + WINDOW_SECONDS - now))
        return headers, over

    def draw_failure(self, method: str) -> str | None:
        """Which failure, if any, this request suffers."""
        with self._lock:
            if self.failure_rate <= 0 or self.random.random() >= self.failure_rate:
                return None
            choices = FAILURES + LOST_ANSWERS if method == "POST" else FAILURES
            failure = self.random.choice(choices)
            self.injected.append(failure)
            return failure

    # Webhooks

    def _on_event(self, event_type: str, data: dict[str, Any]) -> None:
        if event_type == "refund.created" and self.refund_delay >= 0:
            timer = threading.Timer(self.refund_delay, self._complete_refund, args=(data["id"],))
            timer.daemon = True
            timer.start()
        if self.webhook_url:
            self._outbox.put((event_type, data))

    def _complete_refund(self, refund_id: str) -> None:
        if not self._stopping.is_set():
            self.state.complete_refund(refund_id)

    def _deliver_forever(self) -> None:
        while True:
            item = self._outbox.get()
            try:
                if item is None:
                    return
                self._deliver(*item)
            finally:
                self._outbox.task_done()

    def _deliver(self, event_type: str, data: dict[str, Any]) -> None:
        assert self.webhook_url is not None
        body = json.dumps(event_payload(event_type, data)).encode()
        for attempt in range(1, self.delivery_attempts + 1):
            if self._stopping.is_set():
                return
            headers = {
                "Content-Type": "application/json",
                SIGNATURE_HEADER: signature_header(body, self.webhook_secret),
            }
            status: int | None = None
            error = ""
            try:
                response = self._session.post(
                    self.webhook_url, data=body, headers=headers, timeout=10
                )
                status = response.status_code
            except requests.RequestException as err:
                error = type(err).__name__
            delivery = Delivery(event_type, data["id"], self.webhook_url, attempt, status, error)
            self.deliveries.append(delivery)
            outcome = f"HTTP {status}" if status is not None else f"failed ({error})"
            logger.info(
                "Webhook %s %s to %s, attempt %d: %s",
                event_type,
                data["id"],
                self.webhook_url,
                attempt,
                outcome,
            )
            if delivery.ok:
                return
            self._stopping.wait(min(self.delivery_backoff * 2 ** (attempt - 1), 30.0))
        logger.warning(
            "Webhook %s %s given up after %d attempts.",
            event_type,
            data["id"],
            self.delivery_attempts,
        )


class _Handler(BaseHTTPRequestHandler):
    sandbox: Sandbox
    protocol_version = "HTTP/1.1"
    server_version = "LedgePaySandbox/1"

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")

    def do_PUT(self) -> None:
        self._route("PUT")

    def do_DELETE(self) -> None:
        self._route("DELETE")

    def _route(self, method: str) -> None:
        parts = urlsplit(self.path)
        body = self._body()
        if parts.path == "/v1" or parts.path.startswith("/v1/"):
            self._api(method, parts.path.removeprefix("/v1"), dict(parse_qsl(parts.query)), body)
        elif parts.path.startswith("/checkout/"):
            self._checkout(method, parts.path.removeprefix("/checkout/"), body)
        else:
            self._send(404, {"Content-Type": "text/plain"}, b"Not found.")

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _api(self, method: str, path: str, query: dict[str, str], body: bytes) -> None:
        sandbox = self.sandbox
        headers, over = sandbox.rate_limit_headers()
        if over:
            answer = Answer(
                429, APIFailure(429, "Too many requests.", error_type="rate_limit_error").body()
            )
            self._answer(answer, headers)
            return
        failure = sandbox.draw_failure(method)
        if failure == "500":
            self._answer(
                Answer(500, {"error": {"type": "api_error", "message": "Injected."}}), headers
            )
            return
        if failure == "429":
            headers["Retry-After"] = "0"
            self._answer(
                Answer(429, {"error": {"type": "rate_limit_error", "message": "Injected."}}),
                headers,
            )
            return
        if failure == "drop":
            self._drop()
            return
        answer = sandbox.state.handle(method, path, query, body, dict(self.headers.items()))
        if failure == "500-after":
            self._answer(
                Answer(500, {"error": {"type": "api_error", "message": "Injected."}}), headers
            )
        elif failure == "drop-after":
            self._drop()
        else:
            self._answer(answer, headers)

    def _answer(self, answer: Answer, headers: dict[str, str]) -> None:
        self._send(
            answer.status, {**headers, "Content-Type": "application/json"}, answer.json().encode()
        )

    def _drop(self) -> None:
        # The connection closes with no answer, as when a network drops it.
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _checkout(self, method: str, payment_id: str, body: bytes) -> None:
        state = self.sandbox.state
        try:
            payment = state.retrieve_payment(payment_id)
        except APIFailure:
            self._send(404, {"Content-Type": "text/plain"}, b"No such payment.")
            return
        if method == "POST":
            action = dict(parse_qsl(body.decode("utf-8", "replace"))).get("action")
            statuses = {"pay": "succeeded", "fail": "failed", "cancel": "canceled"}
            if action not in statuses:
                self._send(400, {"Content-Type": "text/plain"}, b"Unknown action.")
                return
            payment = state.settle(payment_id, statuses[action])
            target = payment["cancel_url"] if action == "cancel" else payment["success_url"]
            self._send(303, {"Location": target, "Content-Type": "text/plain"}, b"")
            return
        if method != "GET":
            self._send(405, {"Allow": "GET, POST", "Content-Type": "text/plain"}, b"")
            return
        self._send(
            200, {"Content-Type": "text/html; charset=utf-8"}, checkout_page(payment).encode()
        )

    def _send(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def checkout_page(payment: dict[str, Any]) -> str:
    """The hosted checkout page: plain HTML, no JavaScript."""
    amount = html.escape(format_amount(payment["amount"], payment["currency"]))
    description = html.escape(payment.get("description") or "")
    if payment["status"] == "pending":
        actions = "".join(
            f'<form method="post"><button type="submit" name="action" value="{value}">'
            f"{label}</button></form>"
            for value, label in (("pay", "Pay"), ("fail", "Fail"), ("cancel", "Cancel"))
        )
    else:
        back = payment["cancel_url"] if payment["status"] == "canceled" else payment["success_url"]
        actions = (
            f"<p>This payment is <strong>{html.escape(payment['status'])}</strong>.</p>"
            f'<p><a href="{html.escape(back)}">Back to the shop</a></p>'
        )
    return f"""<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>LedgePay sandbox checkout</title>
<style>body{{font-family:sans-serif;max-width:32rem;margin:3rem auto}}
form{{display:inline-block;margin-right:.5rem}}button{{font-size:1.1rem;padding:.4rem 1rem}}
</style></head>
<body>
<p><small>LedgePay sandbox: no money moves.</small></p>
<h1>Pay {amount}</h1>
<p class="description">{description}</p>
<p class="payment-id">{html.escape(payment["id"])}</p>
{actions}
</body>
</html>
"""
