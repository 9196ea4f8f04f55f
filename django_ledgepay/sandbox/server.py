"""The sandbox's HTTP server: API, checkout page, webhook deliveries, injected failures."""

from __future__ import annotations

import contextlib
import heapq
import html
import itertools
import json
import logging
import os
import random
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

import requests

from django_ledgepay.currencies import format_amount
from django_ledgepay.sandbox import storage
from django_ledgepay.sandbox.state import (
    Answer,
    APIFailure,
    Driver,
    LedgePayState,
    SnapshotError,
    event_payload,
    is_http_url,
)
from django_ledgepay.signatures import SIGNATURE_HEADER, signature_header

logger = logging.getLogger(__name__)

#: The limit shown in the rate-limit headers when none is enforced.
UNENFORCED_LIMIT = 10_000
WINDOW_SECONDS = 60
FAILURES = ("500", "429", "drop")
LOST_ANSWERS = ("500-after", "drop-after")
#: Threads that deliver webhooks, so that a slow endpoint holds up few events.
DELIVERY_THREADS = 4
#: How much of a refusing shop's answer a log line shows.
ANSWER_EXCERPT = 200


@dataclass(frozen=True)
class Delivery:
    """One attempt to deliver a webhook event."""

    event: str
    object_id: str
    #: Empty when ``webhook_url`` had been set to None.
    url: str
    attempt: int
    status: int | None
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


@dataclass(eq=False)
class _Outgoing:
    """A webhook event on its way: the same body on every attempt."""

    event: str
    object_id: str
    #: Events with one key (the payment's id) go out one at a time, in order.
    key: str
    body: bytes
    attempts: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "event": self.event,
            "object_id": self.object_id,
            "key": self.key,
            "body": self.body.decode(),
            "attempts": self.attempts,
        }

    @classmethod
    def from_json(cls, value: Any) -> _Outgoing:
        if not isinstance(value, dict):
            raise SnapshotError("a delivery is not an object")
        fields = ("event", "object_id", "key", "body")
        if not all(isinstance(value.get(name), str) for name in fields):
            raise SnapshotError("a delivery lacks its event, object, key or body")
        attempts = value.get("attempts")
        if not isinstance(attempts, int) or isinstance(attempts, bool) or attempts < 0:
            raise SnapshotError("a delivery's attempts are not a count")
        return cls(
            value["event"], value["object_id"], value["key"], value["body"].encode(), attempts
        )


@dataclass(order=True)
class _Due:
    """An entry of the retry schedule: the next attempt at ``when`` (monotonic seconds)."""

    when: float
    sequence: int
    outgoing: _Outgoing = field(compare=False)


class Sandbox(Driver):
    """LedgePay in memory, served on loopback. Start it, point LEDGEPAY_API_BASE at
    ``api_base``, and stop it (or use it as a context manager).

    Port 0 picks a free port. Each webhook event is tried up to ``delivery_attempts``
    times; after a failed attempt the next waits ``delivery_backoff`` seconds, doubled
    each time up to ``delivery_max_backoff`` (with the defaults, about 3 hours 15 minutes
    in all). An event that keeps failing holds up the later events of its payment only.

    With ``state_file``, payments, refunds, idempotency records and the webhook events not
    yet delivered are read from that file (when it exists) and written back to it whole,
    atomically, ``save_delay`` seconds after a change (one write for the changes made
    meanwhile) and on stop(); a restarted sandbox goes on where it stopped. A file that
    cannot be read back raises :class:`StateFileError`.
    """

    def __init__(
        self,
        *,
        port: int = 0,
        host: str = "127.0.0.1",
        webhook_url: str | None = None,
        webhook_secret: str | bytes = "",
        failure_rate: float = 0.0,
        rate_limit: int | None = None,
        refund_delay: float = 1.0,
        delivery_attempts: int = 200,
        delivery_backoff: float = 0.5,
        delivery_max_backoff: float = 60.0,
        seed: int | None = None,
        state_file: str | os.PathLike[str] | None = None,
        save_delay: float = 0.05,
    ) -> None:
        if not 0 <= port <= 65535:
            raise ValueError("port must be between 0 and 65535 (0 picks a free port).")
        if not 0.0 <= failure_rate <= 1.0:
            raise ValueError("failure_rate must be between 0 and 1.")
        if delivery_attempts < 1:
            raise ValueError("delivery_attempts must be at least 1.")
        if rate_limit is not None and rate_limit < 1:
            raise ValueError("rate_limit must be at least 1 (or None, for no limit).")
        if webhook_url is not None and not is_webhook_url(webhook_url):
            raise ValueError(
                "webhook_url must be an absolute http(s) URL with a host, such as "
                "http://127.0.0.1:8000/ledgepay/webhook/."
            )
        if webhook_url and not webhook_secret:
            raise ValueError("Deliveries need a webhook_secret to sign them.")
        if save_delay < 0:
            raise ValueError("save_delay must be at least 0.")
        self.host = host
        self.port = port
        self.webhook_url = webhook_url
        self.webhook_secret = webhook_secret
        self.failure_rate = failure_rate
        self.rate_limit = rate_limit
        self.refund_delay = refund_delay
        self.delivery_attempts = delivery_attempts
        self.delivery_backoff = delivery_backoff
        self.delivery_max_backoff = delivery_max_backoff
        self.random = random.Random(seed)
        self.state = LedgePayState()
        self.state.listeners.append(self._on_event)
        self.deliveries: list[Delivery] = []
        self.injected: list[str] = []
        self._server: ThreadingHTTPServer | None = None
        self._threads: list[threading.Thread] = []
        self._window = (0, 0)  # (window start, requests in it)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        # The retry schedule: a heap of the next attempt of the first event of each key,
        # each key's events in order, how many events are neither delivered nor given up,
        # and how many refunds wait for their timer to complete them. All guarded by the
        # condition, which wakes the delivery threads.
        self._schedule = threading.Condition()
        self._due: list[_Due] = []
        self._lines: dict[str, deque[_Outgoing]] = {}
        self._undelivered = 0
        self._refunds_due = 0
        self._sequence = itertools.count()
        # The state file: saves one at a time, and at most one save waiting to start.
        self.state_file = None if state_file is None else Path(state_file)
        self.save_delay = save_delay
        self._save_lock = threading.Lock()
        self._save_pending = threading.Lock()
        self._save_timer: threading.Timer | None = None
        self._save_seconds = 0.0  # How long the last save took.
        # Deliveries read from the file while there is no webhook_url: kept, not sent.
        self._parked: list[dict[str, Any]] = []
        # Refunds read from the file still pending: their timers start with start().
        self._refunds_to_resume: list[str] = []
        if self.state_file is not None:
            self._load(self.state_file)
            self.state.change_listeners.append(self._changed)

    # Life

    def start(self) -> Sandbox:
        handler = type("Handler", (_Handler,), {"sandbox": self})
        self._server = ThreadingHTTPServer((self.host, self.port), handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.state.checkout_base = f"{self.url}/checkout"
        self._stopping.clear()
        resume, self._refunds_to_resume = self._refunds_to_resume, []
        for refund_id in resume:
            self._start_refund_timer(refund_id)
        self._threads = [
            threading.Thread(
                target=self._server.serve_forever, args=(0.05,), name="sandbox-http", daemon=True
            ),
            *(
                threading.Thread(
                    target=self._deliver_forever, name=f"sandbox-webhooks-{number}", daemon=True
                )
                for number in range(1, DELIVERY_THREADS + 1)
            ),
        ]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and delivering; events not yet delivered stay scheduled, and
        refunds still complete when their delay is up, their events queued with the rest
        for the next start(). With a ``state_file``, the state is saved."""
        with self._schedule:
            self._stopping.set()
            self._schedule.notify_all()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        deadline = time.monotonic() + 5
        for thread in self._threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        with self._save_pending:
            # The save below covers the change that timer was for.
            if self._save_timer is not None:
                self._save_timer.cancel()
                self._save_timer = None
        try:
            self.save()
        except OSError:
            logger.exception("The sandbox failed to save its state to %s.", self.state_file)

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
        """Wait until every refund has completed (after ``refund_delay``) and every queued
        webhook event has been delivered or given up."""
        return self.wait_until(self._all_delivered, timeout)

    def _all_delivered(self) -> bool:
        # Both counts at once: a refund's timer queues refund.succeeded before it counts
        # itself out.
        with self._schedule:
            return self._undelivered == 0 and self._refunds_due == 0

    # API requests, with rate limits and injected failures

    def rate_limit_headers(self) -> tuple[dict[str, str], bool]:
        """Count one request; return the headers and whether it is over the limit."""
        now = int(time.time())
        start = now - now % WINDOW_SECONDS
        with self._lock:
            window_start, count = self._window
            count = count + 1 if window_start == start else 1
            self._window = (start, count)
        enforced = self.rate_limit
        limit = UNENFORCED_LIMIT if enforced is None else enforced
        headers = {
            "X-RateLimit-Limit": str(limit),
            "X-RateLimit-Remaining": str(max(0, limit - count)),
            "X-RateLimit-Reset": str(start + WINDOW_SECONDS),
        }
        over = enforced is not None and count > enforced
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
        # The state calls this holding its lock, so events are queued in the order they
        # happen. The lock order is the state's, then the schedule's: nothing holding the
        # schedule waits for the state.
        with self._schedule:
            # Queued before the refund can complete, so refund.created goes out first.
            if self.webhook_url:
                self._schedule_event(event_type, data)
            if event_type == "refund.created":
                self._start_refund_timer(data["id"])

    def _start_refund_timer(self, refund_id: str) -> None:
        if self.refund_delay < 0:
            return
        with self._schedule:
            self._refunds_due += 1
        timer = threading.Timer(self.refund_delay, self._complete_refund, args=(refund_id,))
        timer.daemon = True
        timer.start()

    def _complete_refund(self, refund_id: str) -> None:
        """Complete a refund when its delay is up, even while the sandbox is stopped: its
        event then waits in the schedule like any other, for the next start()."""
        try:
            self.state.complete_refund(refund_id)
        except Exception:
            logger.exception("The sandbox failed to complete refund %s.", refund_id)
        finally:
            with self._schedule:
                self._refunds_due -= 1

    def retry_delay(self, attempts: int) -> float:
        """Seconds from the ``attempts``-th failed attempt of an event to the next one."""
        exponent = min(max(attempts - 1, 0), 64)
        return float(min(self.delivery_backoff * 2**exponent, self.delivery_max_backoff))

    def _schedule_event(self, event_type: str, data: dict[str, Any]) -> None:
        """Queue an event behind the undelivered events of its payment."""
        outgoing = _Outgoing(
            event=event_type,
            object_id=str(data["id"]),
            key=str(data.get("payment_id") or data["id"]),
            body=json.dumps(event_payload(event_type, data)).encode(),
        )
        with self._schedule:
            self._undelivered += 1
            line = self._lines.setdefault(outgoing.key, deque())
            line.append(outgoing)
            if len(line) == 1:
                self._push(outgoing, time.monotonic())

    def _push(self, outgoing: _Outgoing, when: float) -> None:
        # The caller holds self._schedule.
        heapq.heappush(self._due, _Due(when, next(self._sequence), outgoing))
        self._schedule.notify()

    def _next_due(self) -> _Outgoing | None:
        """Wait for the next attempt that is due; None once the sandbox stops."""
        with self._schedule:
            while not self._stopping.is_set():
                timeout = None
                if self._due:
                    timeout = self._due[0].when - time.monotonic()
                    if timeout <= 0:
                        return heapq.heappop(self._due).outgoing
                self._schedule.wait(timeout)
            return None

    def _deliver_forever(self) -> None:
        with requests.Session() as session:
            while (outgoing := self._next_due()) is not None:
                delivered = False
                try:
                    delivered = self._attempt(session, outgoing)
                except Exception:
                    # Whatever went wrong, the thread lives on and the event stays
                    # scheduled: the attempt failed, and the next one is due as usual.
                    logger.exception(
                        "Webhook %s %s, attempt %d: the sandbox failed to send it.",
                        outgoing.event,
                        outgoing.object_id,
                        outgoing.attempts,
                    )
                self._after_attempt(outgoing, delivered)

    def _attempt(self, session: requests.Session, outgoing: _Outgoing) -> bool:
        """POST the event once, record and log the attempt; whether the shop took it."""
        url = self.webhook_url  # Read once: it may be changed meanwhile.
        outgoing.attempts += 1
        status: int | None = None
        error = ""
        answer = ""
        unexpected: Exception | None = None
        if url is None:
            error = "no webhook_url"
        else:
            headers = {
                "Content-Type": "application/json",
                SIGNATURE_HEADER: signature_header(outgoing.body, self.webhook_secret),
            }
            try:
                response = session.post(url, data=outgoing.body, headers=headers, timeout=10)
                status = response.status_code
                if status >= 300:
                    answer = excerpt(response.content)
            except requests.RequestException as err:
                error = type(err).__name__
            except Exception as err:
                # Not a network failure: a URL that urllib3 cannot connect to at all
                # (LocationParseError), say. Logged with its traceback below.
                error = type(err).__name__
                unexpected = err
        delivery = Delivery(
            outgoing.event, outgoing.object_id, url or "", outgoing.attempts, status, error
        )
        with self._schedule:
            self.deliveries.append(delivery)
        outcome = f"HTTP {status}" if status is not None else f"failed ({error})"
        if answer:
            outcome = f"{outcome}: {answer}"
        logger.log(
            logging.INFO if unexpected is None else logging.ERROR,
            "Webhook %s %s to %s, attempt %d: %s",
            outgoing.event,
            outgoing.object_id,
            url,
            outgoing.attempts,
            outcome,
            exc_info=unexpected,
        )
        return delivery.ok

    def _after_attempt(self, outgoing: _Outgoing, delivered: bool) -> None:
        """Schedule the event's next attempt, or, once it is done, its payment's next event."""
        if not delivered and outgoing.attempts >= self.delivery_attempts:
            logger.warning(
                "Webhook %s %s to %s given up after %d attempts: it will not be sent again.",
                outgoing.event,
                outgoing.object_id,
                self.webhook_url,
                outgoing.attempts,
            )
        with self._schedule:
            now = time.monotonic()
            if not delivered and outgoing.attempts < self.delivery_attempts:
                self._push(outgoing, now + self.retry_delay(outgoing.attempts))
                return
            line = self._lines[outgoing.key]
            line.popleft()
            if line:
                self._push(line[0], now)
            else:
                del self._lines[outgoing.key]
            self._undelivered -= 1
        self._changed()

    # The state file

    def _load(self, path: Path) -> None:
        document = storage.load(path)
        if document is None:
            return
        try:
            self.state.restore(document["state"])
            deliveries = [_Outgoing.from_json(value) for value in document["deliveries"]]
        except (SnapshotError, KeyError, TypeError) as err:
            reason = f"its content is not of the expected shape ({err})"
            raise storage.unreadable(path, reason) from err
        self._refunds_to_resume = [
            refund_id
            for refund_id, refund in self.state.refunds.items()
            if refund["status"] == "pending"
        ]
        if not self.webhook_url:
            self._parked = [outgoing.to_json() for outgoing in deliveries]
            return
        with self._schedule:
            now = time.monotonic()
            for outgoing in deliveries:
                self._undelivered += 1
                line = self._lines.setdefault(outgoing.key, deque())
                line.append(outgoing)
                if len(line) == 1:
                    self._push(outgoing, now)

    def save(self) -> None:
        """Write the state file now (nothing without one); raises OSError if it cannot."""
        if self.state_file is None:
            return
        with self._save_lock:
            started = time.monotonic()
            # Lock order: the state's, then the schedule's, as everywhere.
            with self.state.lock:
                state = self.state.snapshot()
                with self._schedule:
                    deliveries = [o.to_json() for line in self._lines.values() for o in line]
            data = storage.dump(state, deliveries + self._parked)
            storage.write_atomically(self.state_file, data)
            self._save_seconds = time.monotonic() - started

    def _changed(self) -> None:
        """Save within ``save_delay`` seconds (or as long as the last save took, when that
        is longer: a large state is saved at most half the time), once for all the changes
        made meanwhile."""
        if self.state_file is None:
            return
        with self._save_pending:
            if self._save_timer is not None:
                return
            delay = max(self.save_delay, self._save_seconds)
            self._save_timer = threading.Timer(delay, self._save_in_background)
            self._save_timer.daemon = True
            self._save_timer.start()

    def _save_in_background(self) -> None:
        with self._save_pending:
            # A change from now on needs a save after this one's snapshot: it starts a timer.
            self._save_timer = None
        try:
            self.save()
        except Exception:
            logger.exception("The sandbox failed to save its state to %s.", self.state_file)


class _Handler(BaseHTTPRequestHandler):
    sandbox: Sandbox
    protocol_version = "HTTP/1.1"
    server_version = "LedgePaySandbox/1"
    #: Buffered writes: an answer's headers and body leave in one send (see _send).
    wbufsize = 64 * 1024
    #: Whether this request's answer has begun (or its connection was dropped on purpose).
    _responded = False

    def setup(self) -> None:
        super().setup()
        # Without it, a body sent after the headers waits for the client's delayed ACK of
        # them (Nagle's algorithm): about 40 ms on every keep-alive request.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        if logger.isEnabledFor(logging.DEBUG):
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
        """Serve one request; an unexpected error is logged and answered with a JSON 500."""
        self._responded = False
        try:
            self._dispatch(method)
        except (BrokenPipeError, ConnectionResetError):
            # The client went away; there is no one to answer.
            self.close_connection = True
        except Exception:
            logger.exception("The sandbox failed to serve %s %s.", method, self.path)
            # What is left of the request may be unread: the connection cannot be reused.
            self.close_connection = True
            if not self._responded:
                failure = APIFailure(
                    500, "The sandbox failed; its log holds the details.", error_type="api_error"
                )
                with contextlib.suppress(OSError):
                    self._answer(Answer(500, failure.body()), {"Connection": "close"})

    def _dispatch(self, method: str) -> None:
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
        self._responded = True
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
            # A payment settled before (another tab, a second press) keeps its status, and
            # the shopper goes back as it says, whichever button this was.
            payment = state.settle(payment_id, statuses[action])
            location = location_header(return_url(payment))
            self._send(303, {"Location": location, "Content-Type": "text/plain"}, b"")
            return
        if method != "GET":
            self._send(405, {"Allow": "GET, POST", "Content-Type": "text/plain"}, b"")
            return
        self._send(
            200, {"Content-Type": "text/html; charset=utf-8"}, checkout_page(payment).encode()
        )

    def _send(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self._responded = True
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        # Sent here, in one piece when it fits the buffer, and where _route hears of a
        # client that has gone.
        self.wfile.flush()


def is_webhook_url(url: str) -> bool:
    """Whether webhooks can be delivered to ``url``: an absolute http(s) URL with a host."""
    if not is_http_url(url):
        return False
    try:
        parts = urlsplit(url)
        # Encoded as the connection will encode it, so that a host with an empty label
        # ("shop..example") is refused here rather than on every delivery.
        (parts.hostname or "").encode("idna")
        port = parts.port
    except ValueError:  # UnicodeError included.
        return False
    return bool(parts.hostname) and port != 0


def excerpt(content: bytes) -> str:
    """The start of an answer's body on one line, for a log: whitespace runs as one space,
    at most ANSWER_EXCERPT characters."""
    text = " ".join(content.decode("utf-8", "replace").split())
    if len(text) > ANSWER_EXCERPT:
        text = text[: ANSWER_EXCERPT - 1] + "…"
    return text


def location_header(url: str) -> str:
    """``url`` as a Location header can hold it: non-ASCII characters percent-encoded
    (http.server writes headers in Latin-1), the rest as it is."""
    return "".join(char if char.isascii() else quote(char) for char in url)


def return_url(payment: dict[str, Any]) -> str:
    """Where a settled payment sends the shopper: ``cancel_url`` if canceled, else
    ``success_url`` (the shop's return page reads the status, succeeded or failed)."""
    return str(
        payment["cancel_url"] if payment["status"] == "canceled" else payment["success_url"]
    )


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
        back = return_url(payment)
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
