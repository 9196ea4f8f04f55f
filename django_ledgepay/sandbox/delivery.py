"""Webhook deliveries: each event signed, POSTed to the shop, and retried with backoff, the
events of one payment in order and one at a time."""

from __future__ import annotations

import heapq
import itertools
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

import requests

from django_ledgepay.sandbox.api import event_payload, is_http_url
from django_ledgepay.sandbox.snapshots import SnapshotError
from django_ledgepay.signatures import SIGNATURE_HEADER, signature_header

# The name the sandbox has always logged under, which a project's LOGGING may name.
logger = logging.getLogger("django_ledgepay.sandbox.server")

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
class Outgoing:
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
    def from_json(cls, value: Any) -> Outgoing:
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
    outgoing: Outgoing = field(compare=False)


class DeliverySettings(Protocol):
    """Where and how to deliver, read at each attempt: a script may change them meanwhile."""

    webhook_url: str | None
    webhook_secret: str | bytes
    delivery_attempts: int

    def retry_delay(self, attempts: int) -> float: ...


class Outbox:
    """The events neither delivered nor given up, and the delivery threads' work.

    The retry schedule: a heap of the next attempt of the first event of each key, each
    key's events in order, and how many events are neither delivered nor given up. All
    guarded by ``lock``, a condition that wakes the delivery threads. Whoever needs the
    state's lock too takes it first: nothing holding this one waits for the state's.
    """

    def __init__(self, settings: DeliverySettings, on_change: Callable[[], None]) -> None:
        self.settings = settings
        #: Called when an event leaves the schedule (delivered or given up).
        self.on_change = on_change
        self.lock = threading.Condition()
        self.stopping = threading.Event()
        #: Every attempt, in the order they ended.
        self.deliveries: list[Delivery] = []
        self.undelivered = 0
        self._due: list[_Due] = []
        self._lines: dict[str, deque[Outgoing]] = {}
        self._sequence = itertools.count()

    def queue(self, event_type: str, data: dict[str, Any]) -> None:
        """Queue an event behind the undelivered events of its payment."""
        outgoing = Outgoing(
            event=event_type,
            object_id=str(data["id"]),
            key=str(data.get("payment_id") or data["id"]),
            body=json.dumps(event_payload(event_type, data)).encode(),
        )
        self.add([outgoing])

    def add(self, deliveries: list[Outgoing]) -> None:
        """Queue events on their way (new, or read back from a state file), in order, each
        behind the undelivered events of its payment."""
        with self.lock:
            now = time.monotonic()
            for outgoing in deliveries:
                self.undelivered += 1
                line = self._lines.setdefault(outgoing.key, deque())
                line.append(outgoing)
                if len(line) == 1:
                    self._push(outgoing, now)

    def pending(self) -> list[dict[str, Any]]:
        """The events not yet delivered, as ``Outgoing.to_json`` writes them."""
        with self.lock:
            return [outgoing.to_json() for line in self._lines.values() for outgoing in line]

    def stop(self) -> None:
        """Wake the delivery threads to end: :meth:`deliver_forever` returns."""
        with self.lock:
            self.stopping.set()
            self.lock.notify_all()

    def _push(self, outgoing: Outgoing, when: float) -> None:
        # The caller holds self.lock.
        heapq.heappush(self._due, _Due(when, next(self._sequence), outgoing))
        self.lock.notify()

    def _next_due(self) -> Outgoing | None:
        """Wait for the next attempt that is due; None once the sandbox stops."""
        with self.lock:
            while not self.stopping.is_set():
                timeout = None
                if self._due:
                    timeout = self._due[0].when - time.monotonic()
                    if timeout <= 0:
                        return heapq.heappop(self._due).outgoing
                self.lock.wait(timeout)
            return None

    def deliver_forever(self) -> None:
        """A delivery thread's work: attempt each event when it is due, until stopped."""
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

    def _attempt(self, session: requests.Session, outgoing: Outgoing) -> bool:
        """POST the event once, record and log the attempt; whether the shop took it."""
        url = self.settings.webhook_url  # Read once: it may be changed meanwhile.
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
                SIGNATURE_HEADER: signature_header(outgoing.body, self.settings.webhook_secret),
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
        with self.lock:
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

    def _after_attempt(self, outgoing: Outgoing, delivered: bool) -> None:
        """Schedule the event's next attempt, or, once it is done, its payment's next event."""
        if not delivered and outgoing.attempts >= self.settings.delivery_attempts:
            logger.warning(
                "Webhook %s %s to %s given up after %d attempts: it will not be sent again.",
                outgoing.event,
                outgoing.object_id,
                self.settings.webhook_url,
                outgoing.attempts,
            )
        with self.lock:
            now = time.monotonic()
            if not delivered and outgoing.attempts < self.settings.delivery_attempts:
                self._push(outgoing, now + self.settings.retry_delay(outgoing.attempts))
                return
            line = self._lines[outgoing.key]
            line.popleft()
            if line:
                self._push(line[0], now)
            else:
                del self._lines[outgoing.key]
            self.undelivered -= 1
        self.on_change()


def retry_delay(attempts: int, backoff: float, max_backoff: float) -> float:
    """Seconds from the ``attempts``-th failed attempt of an event to the next one:
    ``backoff``, doubled after each attempt, up to ``max_backoff``."""
    exponent = min(max(attempts - 1, 0), 64)
    return float(min(backoff * 2**exponent, max_backoff))


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
