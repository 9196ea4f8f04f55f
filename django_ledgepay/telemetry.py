"""Metrics and traces through OpenTelemetry's API, when the ``otel`` extra is installed.

``pip install "django-ledgepay[otel]"`` installs ``opentelemetry-api``; the project's own
OpenTelemetry SDK set-up (an exporter to Prometheus, OTLP, ...) decides where they go.
Without the package nothing here imports it and every hook is a no-op: a shared object
whose methods do nothing.

The meter and the tracer are named ``django_ledgepay``:

- ``ledgepay.client.request.duration`` (histogram, s): each attempt of a call to LedgePay,
  with ``http.request.method``, ``url.template`` and ``http.response.status_code`` or
  ``error.type``; span ``ledgepay.client.request`` per attempt (``http.request.resend_count``
  on a retry);
- ``ledgepay.webhook.deliveries`` (counter): ``ledgepay.event_type`` and
  ``ledgepay.outcome`` (``applied``, ``duplicate``, ``ignored``, ``rejected``, ``failed``);
  ``ledgepay.webhook.lag`` (histogram, s): from an event's ``timestamp`` to its application;
  span ``ledgepay.webhook``;
- ``ledgepay.delivery.attempts`` (counter): ``ledgepay.signal``, ``ledgepay.receiver``,
  ``ledgepay.outcome`` (``succeeded``, ``failed``); span ``ledgepay.deliver``;
- observable gauges ``ledgepay.transitions.undelivered`` and
  ``ledgepay.refund_requests.unresolved`` (registered by the app's ``ready()``).

No attribute holds the API key or personal data: methods, URL templates, statuses, error
class names, event types, signal and receiver names.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import Any, Final

try:
    from opentelemetry import metrics as otel_metrics
    from opentelemetry import trace as otel_trace
except ImportError:  # The otel extra is not installed: every hook is a no-op.
    otel_metrics = otel_trace = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

NAME: Final = "django_ledgepay"
#: The outcomes of a webhook delivery, by the status the app answered or stored.
WEBHOOK_OUTCOMES: Final[Mapping[str, str]] = {
    "processed": "applied",
    "received": "applied",
    "duplicate": "duplicate",
    "ignored": "ignored",
    "failed": "failed",
}


def enabled() -> bool:
    """Whether OpenTelemetry's API is installed (the ``otel`` extra)."""
    return otel_trace is not None


class _Instruments:
    """The meter's instruments and the tracer, made on first use (after the project's SDK
    set-up has installed its providers, if it has)."""

    def __init__(self) -> None:
        assert otel_metrics is not None and otel_trace is not None
        meter = otel_metrics.get_meter(NAME)
        self.tracer = otel_trace.get_tracer(NAME)
        self.duration = meter.create_histogram(
            "ledgepay.client.request.duration",
            unit="s",
            description="Each attempt of a call to LedgePay.",
        )
        self.deliveries = meter.create_counter(
            "ledgepay.webhook.deliveries", description="Webhook deliveries, by outcome."
        )
        self.lag = meter.create_histogram(
            "ledgepay.webhook.lag",
            unit="s",
            description="From an event's timestamp to its application.",
        )
        self.attempts = meter.create_counter(
            "ledgepay.delivery.attempts", description="Receivers run for transitions."
        )
        self.meter = meter


_instruments: _Instruments | None = None


def _get() -> _Instruments:
    global _instruments
    if _instruments is None:
        _instruments = _Instruments()
    return _instruments


class Attempt:
    """One attempt of a call to LedgePay: its span and its duration; tell it how it ended
    with :meth:`answered` or :meth:`failed`. Use it as a context manager."""

    __slots__ = ("attributes", "ended", "span", "started", "scope")

    def __init__(self, method: str, path: str, attempt: int) -> None:
        self.attributes: dict[str, Any] = {
            "http.request.method": method,
            "url.template": url_template(path),
        }
        if attempt:
            self.attributes["http.request.resend_count"] = attempt
        self.ended: dict[str, Any] = {}

    def __enter__(self) -> Attempt:
        tracer = _get().tracer
        self.span = tracer.start_span(
            "ledgepay.client.request",
            kind=otel_trace.SpanKind.CLIENT,  # type: ignore[union-attr,unused-ignore]
            attributes=self.attributes,
        )
        self.scope = otel_trace.use_span(self.span, end_on_exit=True)  # type: ignore[union-attr,unused-ignore]
        self.scope.__enter__()
        self.started = time.perf_counter()
        return self

    def answered(self, status: int) -> None:
        self.ended = {"http.response.status_code": status}
        if status >= 400:
            self.ended["error.type"] = str(status)

    def failed(self, error: BaseException) -> None:
        self.ended = {"error.type": type(error).__name__}

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if not self.ended and error is not None:
            self.failed(error)
        attributes = {**self.attributes, **self.ended}
        self.span.set_attributes(self.ended)
        if "error.type" in self.ended:
            self.span.set_status(otel_trace.Status(otel_trace.StatusCode.ERROR))  # type: ignore[union-attr,unused-ignore]
        self.scope.__exit__(None, None, None)
        _get().duration.record(time.perf_counter() - self.started, attributes)


class _Nothing:
    """What every hook gives without OpenTelemetry: a context manager doing nothing."""

    __slots__ = ()

    def __enter__(self) -> _Nothing:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def answered(self, status: int) -> None:
        return None

    def failed(self, error: BaseException) -> None:
        return None


NOTHING: Final = _Nothing()


def client_attempt(method: str, path: str, attempt: int) -> Attempt | _Nothing:
    """The span and duration of one attempt (``attempt`` from 0) of ``method path``."""
    return Attempt(method, path, attempt) if otel_trace is not None else NOTHING


def url_template(path: str) -> str:
    """``path`` with its object id replaced: ``/payments/{id}``, never the id itself."""
    collection, _, rest = path.lstrip("/").partition("/")
    return f"/{collection}/{{id}}" if rest else f"/{collection}"


def span(name: str, attributes: Mapping[str, Any] | None = None) -> Any:
    """A span named ``name`` around a block (``ledgepay.webhook``, ``ledgepay.deliver``)."""
    if otel_trace is None:
        return NOTHING
    return _get().tracer.start_as_current_span(name, attributes=attributes)


def webhook_delivery(event_type: str | None, outcome: str) -> None:
    """Count one webhook delivery with its outcome."""
    if otel_trace is None:
        return
    attributes = {"ledgepay.outcome": outcome}
    if event_type:
        attributes["ledgepay.event_type"] = event_type[:100]
    _get().deliveries.add(1, attributes)


def webhook_lag(event_type: str, happened: float | None) -> None:
    """Record the lag of an event applied now that happened at ``happened`` (Unix s)."""
    if otel_trace is None or happened is None:
        return
    _get().lag.record(max(0.0, time.time() - happened), {"ledgepay.event_type": event_type})


def delivery_attempt(signal: str, receiver: str, *, succeeded: bool) -> None:
    """Count one run of a receiver for a transition."""
    if otel_trace is None:
        return
    _get().attempts.add(
        1,
        {
            "ledgepay.signal": signal,
            "ledgepay.receiver": receiver,
            "ledgepay.outcome": "succeeded" if succeeded else "failed",
        },
    )


def observe(name: str, description: str, count: Callable[[], int | None]) -> None:
    """Register the observable gauge ``name``, read by ``count()`` at each collection (None
    or an error: no observation this time)."""
    if otel_metrics is None:
        return

    def observed(options: Any) -> Iterable[Any]:
        try:
            value = count()
        except Exception:
            logger.warning("Could not observe %s.", name, exc_info=True)
            return []
        return [] if value is None else [otel_metrics.Observation(value)]  # type: ignore[union-attr,unused-ignore]

    _get().meter.create_observable_gauge(name, callbacks=[observed], description=description)
