"""The HTTP client for LedgePay's API: transport, retries, idempotency and rate limits.

Only :mod:`django_ledgepay.services` calls it; it knows nothing of the models. Code that
runs outside a request may let its calls wait longer than ``LEDGEPAY_MAX_WAIT`` with
:func:`patience`, as the management commands do; background work (a sync, a
reconciliation) runs inside :func:`background`, and leaves part of each rate-limit window to
checkout and refunds. Every process of a project shares one rate-limit budget
(:mod:`django_ledgepay.ratelimit`) and one circuit breaker (:mod:`django_ledgepay.breaker`).
"""

from __future__ import annotations

import contextvars
import logging
import os
import random
import re
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from importlib import metadata
from typing import Any, Final
from urllib.parse import quote

import requests
import urllib3

from django.core.exceptions import ImproperlyConfigured
from django.views.decorators.debug import sensitive_variables

from django_ledgepay import __name__ as package_name
from django_ledgepay import breaker, ratelimit, sharedcache, telemetry
from django_ledgepay.conf import conf
from django_ledgepay.exceptions import (
    APIConnectionError,
    APIError,
    AuthenticationError,
    InvalidRequestError,
    LedgePayError,
    NotFoundError,
    RateLimitError,
)
from django_ledgepay.ratelimit import RateLimit as RateLimit
from django_ledgepay.redaction import REDACT_MIN_CHARS as REDACT_MIN_CHARS
from django_ledgepay.redaction import REDACTED as REDACTED
from django_ledgepay.redaction import redact as redact
from django_ledgepay.redaction import shows_key

logger = logging.getLogger(__name__)

try:
    _version = metadata.version("django-ledgepay")
except metadata.PackageNotFoundError:  # Imported from a checkout that pip did not install.
    _version = "unknown"
USER_AGENT: Final = f"{package_name}/{_version}"
#: The largest page the list endpoint serves.
MAX_PAGE_SIZE: Final = 100
#: Backoff between retries: base * 2**retry seconds, with full jitter, at most the cap.
BACKOFF_BASE: Final = 0.5
BACKOFF_CAP: Final = 8.0
#: The longest wait for a rate-limit window to reset, before one attempt.
RATE_LIMIT_WAIT_CAP: Final = 60.0
#: How much of an unreadable error body goes into an exception's message.
RAW_ERROR_CHARS: Final = 200


#: What an API key may hold: printable ASCII without spaces, as an HTTP header carries it.
API_KEY_PATTERN: Final = re.compile(r"[!-~]+")

#: Transport failures after which the request may be sent again: no answer came, or it was
#: cut off. A POST is retried under the same ``Idempotency-Key``, so it cannot act twice.
RETRYABLE_FAILURES: Final = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    urllib3.exceptions.ProtocolError,
)
#: Transport failures where an answer came but could not be read or followed.
UNREADABLE_ANSWERS: Final = (
    requests.exceptions.ContentDecodingError,
    requests.TooManyRedirects,
)

ERRORS_BY_STATUS: Final[Mapping[int, type[LedgePayError]]] = {
    400: InvalidRequestError,
    401: AuthenticationError,
    403: AuthenticationError,
    404: NotFoundError,
    429: RateLimitError,
}

# Indirection so tests can replace the clock and the sleep.
sleep = time.sleep
monotonic = time.monotonic
now = time.time

_UNSET: Final = object()
_patience: contextvars.ContextVar[object] = contextvars.ContextVar(
    "ledgepay_patience", default=_UNSET
)
_background: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "ledgepay_background", default=False
)


@contextmanager
def patience(seconds: float | None) -> Iterator[None]:
    """Let each call made inside wait up to ``seconds`` in all between its attempts, in
    place of ``LEDGEPAY_MAX_WAIT``; ``None``: as long as the retries take, each wait within
    its cap. The commands that page through LedgePay run with ``None``: an operator's
    command may wait out a rate limit, where a shopper's request must not."""
    token = _patience.set(seconds)
    try:
        yield
    finally:
        _patience.reset(token)


@contextmanager
def background(seconds: float | None = None) -> Iterator[None]:
    """Run the calls made inside as background work, as ``ledgepay_sync`` and
    ``ledgepay_reconcile`` do: when a rate-limit window is down to
    ``LEDGEPAY_RATE_LIMIT_RESERVE`` requests, they wait for the next window and leave those
    to checkout and refunds. As with :func:`patience`, each call may wait up to ``seconds``
    in all (default None: as long as its retries take)."""
    token = _background.set(True)
    try:
        with patience(seconds):
            yield
    finally:
        _background.reset(token)


class _Waits:
    """What one call may still wait between its attempts; None: no limit."""

    def __init__(self) -> None:
        chosen = _patience.get()
        self.left: float | None = (
            conf.LEDGEPAY_MAX_WAIT if chosen is _UNSET else chosen  # type: ignore[assignment]
        )

    def allow(self, wait: float) -> bool:
        return self.left is None or wait <= self.left

    def sleep(self, wait: float) -> None:
        if self.left is not None:
            self.left -= wait
        sleep(wait)


class _ProcessState:
    """The session, shared by the threads of one process."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.session: requests.Session | None = None

    def get_session(self) -> requests.Session:
        with self.lock:
            if self.session is None:
                session = requests.Session()
                session.headers["User-Agent"] = USER_AGENT
                session.headers["Accept"] = "application/json"
                self.session = session
            return self.session


_state = _ProcessState()


def _reset_after_fork() -> None:
    # A session's pooled sockets must not be shared with a forked child.
    global _state
    _state = _ProcessState()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


def get_session() -> requests.Session:
    """The process's one ``requests.Session``, so connections are reused."""
    return _state.get_session()


def last_rate_limit() -> RateLimit | None:
    """The rate-limit headers of the last answer received, by any process sharing
    ``LEDGEPAY_RATE_LIMIT_CACHE`` (by this one when it is None); within one window, the
    reading with the fewest requests left."""
    return ratelimit.last()


def reset_state() -> None:
    """Forget the session, and the rate-limit budget and circuit breaker of the current API
    key and of every other this process used, shared and in this process (for tests, and
    after settings change). :func:`django_ledgepay.testing.reset_client_state` calls it."""
    with _state.lock:
        if _state.session is not None:
            _state.session.close()
        _state.session = None
    sharedcache.reset(ratelimit.NAMES + breaker.NAMES)


class _Call:
    """One logical request, and what its attempts told of LedgePay's health."""

    def __init__(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None,
        json: Mapping[str, Any] | None,
        headers: dict[str, str],
    ) -> None:
        self.method = method
        self.path = path
        self.params = params
        self.json = json
        self.headers = headers
        self.outcome = breaker.Outcome.UNSENT

    def __repr__(self) -> str:
        # Never the headers: they hold the key.
        return f"<_Call {self.method} {self.path}>"


def new_idempotency_key() -> str:
    return f"ledgepay-{uuid.uuid4()}"


class LedgePayClient:
    """Calls LedgePay with the current settings. Cheap to create: the session lives per
    process, the rate-limit budget and the circuit breaker in ``LEDGEPAY_RATE_LIMIT_CACHE``."""

    def __repr__(self) -> str:
        # Never the key: only where the client points.
        return f"<LedgePayClient api_base={conf.LEDGEPAY_API_BASE!r}>"

    # Endpoints

    def create_payment(
        self, params: Mapping[str, Any], *, idempotency_key: str | None = None
    ) -> dict[str, Any]:
        return self._object(
            self.request("POST", "/payments", json=params, idempotency_key=idempotency_key)
        )

    def retrieve_payment(self, ledgepay_id: str) -> dict[str, Any]:
        if not ledgepay_id or "/" in ledgepay_id or ledgepay_id in {".", ".."}:
            raise InvalidRequestError(f"{ledgepay_id!r} is not a LedgePay payment id.")
        # Quoted, so "?", "#" or "%" cannot turn the id into another URL.
        return self._object(self.request("GET", f"/payments/{quote(ledgepay_id, safe='')}"))

    def list_payments(
        self,
        *,
        limit: int = MAX_PAGE_SIZE,
        status: str | None = None,
        created_after: str | None = None,
        created_before: str | None = None,
    ) -> tuple[list[dict[str, Any]], bool]:
        """One page of payments, newest first, and whether more exist."""
        params = {
            "limit": str(min(max(1, limit), MAX_PAGE_SIZE)),
            "status": status,
            "created_after": created_after,
            "created_before": created_before,
        }
        body = self.request(
            "GET", "/payments", params={k: v for k, v in params.items() if v is not None}
        )
        if isinstance(body, list):
            items, has_more = body, False
        elif isinstance(body, dict) and isinstance(body.get("data"), list):
            items, has_more = body["data"], bool(body.get("has_more", False))
        else:
            raise APIError("LedgePay answered a list request with something that is not a list.")
        if not all(isinstance(item, dict) for item in items):
            raise APIError("LedgePay's list holds something that is not a payment.")
        return items, has_more

    def create_refund(
        self, params: Mapping[str, Any], *, idempotency_key: str | None = None
    ) -> dict[str, Any]:
        return self._object(
            self.request("POST", "/refunds", json=params, idempotency_key=idempotency_key)
        )

    # Transport

    # Every variable of this method and of the frames it calls (its attempts, requests,
    # urllib3 and http.client) is hidden from Django's error reports: they hold the API key.
    @sensitive_variables()
    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        json: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> Any:
        """Send one logical request, retrying what may be retried; return the decoded JSON.

        A POST carries one ``Idempotency-Key`` across all its attempts, so a retry after an
        answer was lost cannot act twice. A failed call raises a :class:`LedgePayError`;
        a missing or malformed key raises ``ImproperlyConfigured`` before any call. While
        the circuit breaker is open, :class:`LedgePayUnavailableError` is raised and nothing
        is sent; a rate-limit wait longer than the call may wait raises
        :class:`RateLimitError`, and nothing is sent either.
        """
        api_key = conf.LEDGEPAY_API_KEY
        if not api_key:
            raise ImproperlyConfigured("LEDGEPAY_API_KEY is not set; LedgePay cannot be called.")
        if not API_KEY_PATTERN.fullmatch(api_key):
            # requests or http.client would refuse the header with the key in the message.
            raise ImproperlyConfigured(
                "LEDGEPAY_API_KEY holds whitespace or characters other than printable ASCII; "
                "check how it is set (a trailing newline from a file, for example)."
            )
        headers = {"Authorization": f"Bearer {api_key}"}
        if method == "POST":
            headers["Idempotency-Key"] = idempotency_key or new_idempotency_key()
        trial = breaker.admit(method, path, now())
        call = _Call(method, path, params=params, json=json, headers=headers)
        try:
            return self._attempts(call, api_key)
        finally:
            breaker.settle(call.outcome, trial=trial, now=now())

    def _attempts(self, call: _Call, api_key: str) -> Any:
        """Send ``call`` until it is answered or may not be retried; keep in
        ``call.outcome`` what the last attempt told of LedgePay's health."""
        method, path = call.method, call.path
        url = f"{conf.LEDGEPAY_API_BASE}{path}"
        timeout = conf.LEDGEPAY_TIMEOUT
        max_retries = conf.LEDGEPAY_MAX_RETRIES
        waits = _Waits()
        session = get_session()
        paused_until: float | None = None

        attempt = 0
        while True:
            self._wait_for_rate_limit(
                waits, method, path, again=attempt > 0, waited_until=paused_until
            )
            started = monotonic()
            failure: requests.RequestException | urllib3.exceptions.HTTPError | None = None
            with telemetry.client_attempt(method, path, attempt) as measured:
                try:
                    # A redirect is never followed: its target's answer is not LedgePay's,
                    # and the key would travel with the request to wherever it points.
                    response = session.request(
                        method,
                        url,
                        params=call.params,
                        json=call.json,
                        headers=call.headers,
                        timeout=timeout,
                        allow_redirects=False,
                    )
                except (requests.RequestException, urllib3.exceptions.HTTPError) as err:
                    failure = err
                    measured.failed(err)
                else:
                    measured.answered(response.status_code)
            if failure is not None:
                failed_with = failure
                if isinstance(failed_with, RETRYABLE_FAILURES):
                    call.outcome = breaker.Outcome.DOWN
                elif isinstance(failed_with, UNREADABLE_ANSWERS):
                    call.outcome = breaker.Outcome.ANSWERED
                error: LedgePayError = _error_from_failure(failed_with, method, path)
                wait = _backoff(attempt)
                retried = isinstance(failed_with, RETRYABLE_FAILURES) and attempt < max_retries
                if not retried or not _may_wait(
                    waits, wait, method, path, type(failed_with).__name__
                ):
                    if shows_key(failed_with, api_key):
                        # Left out of the chain, so no traceback or error report shows it.
                        raise error from None
                    raise error from failed_with
                logger.warning(
                    "LedgePay %s %s: %s; retry %d of %d in %.2fs",
                    method,
                    path,
                    type(failed_with).__name__,
                    attempt + 1,
                    max_retries,
                    wait,
                )
                waits.sleep(wait)
                attempt += 1
                continue

            status = response.status_code
            call.outcome = breaker.Outcome.DOWN if status >= 500 else breaker.Outcome.ANSWERED
            self._record_rate_limit(response)
            elapsed = monotonic() - started
            logger.debug("LedgePay %s %s -> %d in %.3fs", method, path, status, elapsed)
            if status < 300:
                return _decode(response, method, path)
            if status < 400:
                raise APIError(
                    f"LedgePay answered {method} {path} with a redirect (HTTP {status}), which "
                    "the client does not follow; check LEDGEPAY_API_BASE.",
                    http_status=status,
                )
            error = _error_from_response(response, api_key)
            asked = _asked_wait(response)
            if asked is not None and asked > 0:
                # Every process waits it out, not only this call.
                paused_until = ratelimit.record_pause(asked, now())
            if not (status == 429 or status >= 500) or attempt >= max_retries:
                raise error
            wait = _backoff(attempt) if asked is None else asked
            if not _may_wait(waits, wait, method, path, f"HTTP {status}"):
                raise error
            logger.warning(
                "LedgePay %s %s: HTTP %d; retry %d of %d in %.2fs",
                method,
                path,
                status,
                attempt + 1,
                max_retries,
                wait,
            )
            waits.sleep(wait)
            attempt += 1

    def _wait_for_rate_limit(
        self,
        waits: _Waits,
        method: str,
        path: str,
        *,
        again: bool = False,
        waited_until: float | None = None,
    ) -> None:
        """Before an attempt, wait for what the project's rate-limit budget asks: a 429's
        pause (one this call waited out itself, until ``waited_until``, aside), a window
        with no request left, and for a background call a window down to the reserve.
        When that is longer than the call may wait, raise RateLimitError without sending."""
        in_background = _background.get()
        needed = ratelimit.wait_before_sending(
            now(),
            background=in_background,
            reserve=conf.LEDGEPAY_RATE_LIMIT_RESERVE if in_background else 0,
            waited_until=waited_until,
        )
        if needed is None:
            return
        wait = min(needed.seconds, RATE_LIMIT_WAIT_CAP)
        if not waits.allow(wait):
            reason = ratelimit.WAIT_REASONS[needed.reason]
            raise RateLimitError(
                f"{reason} for {wait:.0f}s more, longer than this call may wait"
                f" (LEDGEPAY_MAX_WAIT); {method} {path} was not sent"
                + (" again." if again else ".")
            )
        logger.info("%s; waiting %.2fs", ratelimit.WAIT_LOGS[needed.reason], wait)
        waits.sleep(wait)

    def _record_rate_limit(self, response: requests.Response) -> None:
        rate_limit = RateLimit.from_headers(response.headers)
        if rate_limit is not None:
            ratelimit.record(rate_limit, now())

    @staticmethod
    def _object(body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise APIError("LedgePay answered with something that is not an object.")
        return body


def get_client() -> LedgePayClient:
    """A client for the current settings: what the services call (a test may replace it)."""
    return LedgePayClient()


def _decode(response: requests.Response, method: str, path: str) -> Any:
    try:
        return response.json()
    except (ValueError, RecursionError) as err:
        raise APIError(
            f"LedgePay's answer to {method} {path} is not JSON.", http_status=response.status_code
        ) from err


def _error_from_response(response: requests.Response, api_key: str) -> LedgePayError:
    status = response.status_code
    error_class = ERRORS_BY_STATUS.get(status, APIError if status >= 500 else InvalidRequestError)
    message = ""
    error_type = param = None
    try:
        body = response.json()
    except (ValueError, RecursionError):
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        message = str(error.get("message") or "")
        error_type = error.get("type") if isinstance(error.get("type"), str) else None
        param = error.get("param") if isinstance(error.get("param"), str) else None
    elif isinstance(error, str):
        message = error
    if not message:
        # Redacted before the cut, so no piece of the key is left at the end; only the
        # start of a long body is read.
        raw = response.text.strip()[: RAW_ERROR_CHARS + len(api_key)]
        message = redact(raw, api_key).strip()[:RAW_ERROR_CHARS]
        message = message or error_class.default_message
    return error_class(
        redact(message, api_key),
        http_status=status,
        error_type=None if error_type is None else redact(error_type, api_key),
        param=None if param is None else redact(param, api_key),
    )


def _error_from_failure(failure: Exception, method: str, path: str) -> LedgePayError:
    """The error for a request that got no usable answer; its message names only the type."""
    name = type(failure).__name__
    if isinstance(failure, RETRYABLE_FAILURES):
        return APIConnectionError(f"Could not reach LedgePay for {method} {path}: {name}.")
    if isinstance(failure, UNREADABLE_ANSWERS):
        return APIError(f"LedgePay's answer to {method} {path} could not be read: {name}.")
    return APIConnectionError(f"Could not send {method} {path} to LedgePay: {name}.")


def _backoff(attempt: int) -> float:
    """Exponential backoff with full jitter for retry number ``attempt`` (from 0)."""
    return random.uniform(0, min(BACKOFF_CAP, BACKOFF_BASE * 2**attempt))


def _may_wait(waits: _Waits, wait: float, method: str, path: str, failure: str) -> bool:
    """Whether the call may wait ``wait`` seconds for its next attempt; if not, say so."""
    if waits.allow(wait):
        return True
    logger.warning(
        "LedgePay %s %s: %s; not retried: the wait of %.2fs would pass LEDGEPAY_MAX_WAIT",
        method,
        path,
        failure,
        wait,
    )
    return False


def _asked_wait(response: requests.Response) -> float | None:
    """The wait a 429 asks for before a retry (capped), or None to back off."""
    if response.status_code != 429:
        return None
    wait = ratelimit.retry_after(response.headers, now())
    if wait is not None and (wait > 0 or response.headers.get("Retry-After") == "0"):
        return min(wait, RATE_LIMIT_WAIT_CAP)
    # A time already past (the clocks disagree) asks for nothing: back off instead of
    # retrying at once. Only an explicit "Retry-After: 0" means now.
    return None
