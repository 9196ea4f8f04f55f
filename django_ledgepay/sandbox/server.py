"""The sandbox: LedgePay served on loopback, with its webhook deliveries, its refunds'
timers, its rate limit, the failures it injects and its state file.

The parts live in modules of their own: the HTTP handler in ``handler``, the checkout page
in ``checkout``, webhook deliveries in ``delivery``, LedgePay's state in ``state`` and the
state file in ``storage``.
"""

from __future__ import annotations

import logging
import math
import os
import random
import threading
import time
from collections.abc import Callable
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

from django_ledgepay.sandbox import storage
from django_ledgepay.sandbox.checkout import checkout_page, location_header, return_url
from django_ledgepay.sandbox.delivery import (
    ANSWER_EXCERPT,
    Delivery,
    Outbox,
    Outgoing,
    excerpt,
    is_webhook_url,
    retry_delay,
)
from django_ledgepay.sandbox.handler import Handler
from django_ledgepay.sandbox.snapshots import SnapshotError
from django_ledgepay.sandbox.state import Driver, LedgePayState

# Its public names, those defined in checkout and delivery included.
__all__ = [
    "ANSWER_EXCERPT",
    "DELIVERY_THREADS",
    "FAILURES",
    "LOST_ANSWERS",
    "MAX_REFUND_DELAY",
    "UNENFORCED_LIMIT",
    "WINDOW_SECONDS",
    "Delivery",
    "Sandbox",
    "checkout_page",
    "excerpt",
    "is_webhook_url",
    "location_header",
    "return_url",
]

logger = logging.getLogger(__name__)

#: The limit shown in the rate-limit headers when none is enforced.
UNENFORCED_LIMIT = 10_000
WINDOW_SECONDS = 60
FAILURES = ("500", "429", "drop")
LOST_ANSWERS = ("500-after", "drop-after")
#: Threads that deliver webhooks, so that a slow endpoint holds up few events.
DELIVERY_THREADS = 4
#: The longest a refund may wait before it completes, in seconds: a day.
MAX_REFUND_DELAY = 86_400


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
        if math.isnan(refund_delay) or refund_delay > MAX_REFUND_DELAY:
            # A timer cannot wait forever: one of infinite delay failed in its thread.
            raise ValueError(
                f"refund_delay must be a number of seconds up to {MAX_REFUND_DELAY} (a day), "
                "or negative to leave refunds pending."
            )
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
        self.injected: list[str] = []
        self._server: ThreadingHTTPServer | None = None
        self._threads: list[threading.Thread] = []
        self._window = (0, 0)  # (window start, requests in it)
        self._lock = threading.Lock()
        # The webhook events on their way; and how many refunds wait for their timer to
        # complete them, counted under the outbox's lock with its events.
        self.outbox = Outbox(self, self._changed)
        self._refunds_due = 0
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
        handler = type("Handler", (Handler,), {"sandbox": self})
        self._server = ThreadingHTTPServer((self.host, self.port), handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.state.checkout_base = f"{self.url}/checkout"
        self.outbox.stopping.clear()
        resume, self._refunds_to_resume = self._refunds_to_resume, []
        for refund_id in resume:
            self._start_refund_timer(refund_id)
        self._threads = [
            threading.Thread(
                target=self._server.serve_forever, args=(0.05,), name="sandbox-http", daemon=True
            ),
            *(
                threading.Thread(
                    target=self.outbox.deliver_forever,
                    name=f"sandbox-webhooks-{number}",
                    daemon=True,
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
        self.outbox.stop()
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
        with self.outbox.lock:
            return self.outbox.undelivered == 0 and self._refunds_due == 0

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
        # happen. The lock order is the state's, then the outbox's: nothing holding the
        # outbox's waits for the state.
        with self.outbox.lock:
            # Queued before the refund can complete, so refund.created goes out first.
            if self.webhook_url:
                self.outbox.queue(event_type, data)
            if event_type == "refund.created":
                self._start_refund_timer(data["id"])

    def _start_refund_timer(self, refund_id: str) -> None:
        if self.refund_delay < 0:
            return
        with self.outbox.lock:
            self._refunds_due += 1
        timer = threading.Timer(self.refund_delay, self._complete_refund, args=(refund_id,))
        timer.daemon = True
        timer.start()

    def _complete_refund(self, refund_id: str) -> None:
        """Complete a refund when its delay is up, even while the sandbox is stopped: its
        event then waits in the outbox like any other, for the next start()."""
        try:
            self.state.complete_refund(refund_id)
        except Exception:
            logger.exception("The sandbox failed to complete refund %s.", refund_id)
        finally:
            with self.outbox.lock:
                self._refunds_due -= 1

    def retry_delay(self, attempts: int) -> float:
        """Seconds from the ``attempts``-th failed attempt of an event to the next one."""
        return retry_delay(attempts, self.delivery_backoff, self.delivery_max_backoff)

    @property
    def deliveries(self) -> list[Delivery]:
        """Every webhook attempt, in the order they ended."""
        return self.outbox.deliveries

    # The state file

    def _load(self, path: Path) -> None:
        document = storage.load(path)
        if document is None:
            return
        try:
            self.state.restore(document["state"])
            deliveries = [Outgoing.from_json(value) for value in document["deliveries"]]
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
        self.outbox.add(deliveries)

    def save(self) -> None:
        """Write the state file now (nothing without one); raises OSError if it cannot."""
        if self.state_file is None:
            return
        with self._save_lock:
            started = time.monotonic()
            # Lock order: the state's, then the outbox's, as everywhere.
            with self.state.lock:
                state = self.state.snapshot()
                deliveries = self.outbox.pending()
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
