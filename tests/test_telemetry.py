"""OpenTelemetry: the metrics and spans the SPEC names, through the API only; nothing
without the package; never the key or personal data in an attribute."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
import requests

from django.test import Client
from django.utils import timezone

from django_ledgepay import signals, telemetry
from django_ledgepay.client import LedgePayClient
from django_ledgepay.exceptions import APIConnectionError
from django_ledgepay.testing import signed_webhook
from tests.conftest import API
from tests.factories import make_payment, make_refund, payment_data

sdk = pytest.importorskip("opentelemetry.sdk", reason="the SDK (test extra) is not installed")

from opentelemetry import metrics, trace  # noqa: E402
from opentelemetry.sdk.metrics import MeterProvider  # noqa: E402
from opentelemetry.sdk.metrics.export import InMemoryMetricReader  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: E402
    InMemorySpanExporter,
)

URL = "/ledgepay/webhook/"
METRICS = (
    "ledgepay.client.request.duration",
    "ledgepay.webhook.deliveries",
    "ledgepay.webhook.lag",
    "ledgepay.delivery.attempts",
)


@pytest.fixture(scope="session")
def otel() -> tuple[InMemoryMetricReader, InMemorySpanExporter]:
    """The SDK, installed once per process (OpenTelemetry's providers are set once)."""
    reader = InMemoryMetricReader()
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(tracer_provider)
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
    return reader, exporter


@pytest.fixture
def seen(otel: Any) -> Any:
    reader, exporter = otel
    reader.get_metrics_data()  # Cumulative: keep what came before this test apart.
    exporter.clear()

    class Seen:
        def __init__(self) -> None:
            self.before = points(reader)

        def points(self, name: str) -> list[tuple[dict[str, Any], Any]]:
            """The points of ``name`` since the test began (counts: the difference)."""
            was = {key(a): v for a, v in self.before.get(name, [])}
            found = []
            for attributes, value in points(reader).get(name, []):
                value -= was.get(key(attributes), 0)
                if value:
                    found.append((attributes, value))
            return found

        @property
        def spans(self) -> list[Any]:
            return list(exporter.get_finished_spans())

    return Seen()


def key(attributes: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(sorted(attributes.items()))


def points(reader: InMemoryMetricReader) -> dict[str, list[tuple[dict[str, Any], Any]]]:
    """Every metric's points: (attributes, value), a histogram's value being its count."""
    found: dict[str, list[tuple[dict[str, Any], Any]]] = {}
    data = reader.get_metrics_data()
    if data is None:
        return found
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            if scope.scope.name != "django_ledgepay":
                continue
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    value = getattr(point, "value", None)
                    if value is None:
                        value = getattr(point, "count", None)
                    attributes = dict(point.attributes or {})
                    found.setdefault(metric.name, []).append((attributes, value))
    return found


def post(client: Client, payload: dict[str, Any]) -> Any:
    body, headers = signed_webhook(payload)
    return client.post(URL, body, content_type="application/json", headers=headers)


def test_a_sale_is_counted_timed_and_traced(db, client, seen):
    payment = make_payment(status="pending")
    data = {"id": payment.ledgepay_id, "amount": 5000, "currency": "EUR"}
    payload = {"event": "payment.succeeded", "data": data, "timestamp": "2026-12-08T10:00:00Z"}
    assert post(client, payload).status_code == 200
    assert post(client, payload).json() == {"detail": "duplicate"}
    delivered = seen.points("ledgepay.webhook.deliveries")
    assert ({"ledgepay.event_type": "payment.succeeded", "ledgepay.outcome": "applied"}, 1) in (
        delivered
    )
    assert any(a["ledgepay.outcome"] == "duplicate" and v == 1 for a, v in delivered)
    assert seen.points("ledgepay.webhook.lag") == [
        ({"ledgepay.event_type": "payment.succeeded"}, 1)
    ]
    assert [span.name for span in seen.spans].count("ledgepay.webhook") == 2


def test_a_bad_signature_is_rejected(client, seen):
    body = json.dumps({"event": "payment.succeeded", "data": {"id": "pay_1"}}).encode()
    response = client.post(
        URL, body, content_type="application/json", headers={"LedgePay-Signature": "t=1,v1=0"}
    )
    assert response.status_code == 400
    assert seen.points("ledgepay.webhook.deliveries") == [({"ledgepay.outcome": "rejected"}, 1)]


def test_each_attempt_is_a_span_and_a_duration(api, settings, sleeps, seen):
    settings.LEDGEPAY_MAX_RETRIES = 2
    api.get(f"{API}/payments/pay_7", status=500, json={"error": {"message": "down"}})
    api.get(f"{API}/payments/pay_7", json=payment_data(id="pay_7"))
    LedgePayClient().retrieve_payment("pay_7")
    spans = [span for span in seen.spans if span.name == "ledgepay.client.request"]
    assert [dict(span.attributes) for span in spans] == [
        {
            "http.request.method": "GET",
            "url.template": "/payments/{id}",
            "http.response.status_code": 500,
            "error.type": "500",
        },
        {
            "http.request.method": "GET",
            "url.template": "/payments/{id}",
            "http.request.resend_count": 1,
            "http.response.status_code": 200,
        },
    ]
    durations = seen.points("ledgepay.client.request.duration")
    assert sorted(a.get("http.response.status_code") for a, _ in durations) == [200, 500]


def test_a_connection_failure_names_its_error_type(api, settings, seen):
    settings.LEDGEPAY_MAX_RETRIES = 0
    api.get(f"{API}/payments/pay_8", body=requests.ConnectionError("refused"))
    with pytest.raises(APIConnectionError):
        LedgePayClient().retrieve_payment("pay_8")
    (attributes, count), *_ = seen.points("ledgepay.client.request.duration")
    assert attributes["error.type"] == "ConnectionError" and count == 1


def test_receivers_are_counted_by_outcome(
    db, client, receive, seen, django_capture_on_commit_callbacks
):
    payment = make_payment(status="pending")
    receive(signals.payment_succeeded)
    data = {"id": payment.ledgepay_id, "amount": 5000, "currency": "EUR"}
    with django_capture_on_commit_callbacks(execute=True):
        post(client, {"event": "payment.succeeded", "data": data})
    attempts = seen.points("ledgepay.delivery.attempts")
    ours = [
        (a["ledgepay.signal"], a["ledgepay.outcome"], v)
        for a, v in attempts
        if a["ledgepay.receiver"] == "tests.conftest.Receiver"
    ]
    assert ours == [("payment_succeeded", "succeeded", 1)], attempts
    assert "ledgepay.deliver" in [span.name for span in seen.spans]


def test_the_backlog_gauges(db, seen):
    payment = make_payment()
    make_refund(payment)
    from django_ledgepay.models import RefundRequest, Transition

    Transition.objects.create(
        signal="payment_succeeded", payment=payment, source="api", created_at=timezone.now()
    )
    RefundRequest.objects.create(
        payment=payment, amount=1, reason="customer_request", idempotency_key="k", source="api"
    )
    gauges = {
        name: seen.points(name)
        for name in (
            "ledgepay.transitions.undelivered",
            "ledgepay.refund_requests.unresolved",
        )
    }
    assert gauges == {
        "ledgepay.transitions.undelivered": [({}, 1)],
        "ledgepay.refund_requests.unresolved": [({}, 1)],
    }


def test_no_attribute_holds_the_key_or_personal_data(db, client, api, settings, sleeps, seen):
    settings.LEDGEPAY_API_KEY = "sk_test_telemetry_0123456789"
    payment = make_payment(status="pending", customer_email="ann@example.com")
    api.get(f"{API}/payments/{payment.ledgepay_id}", json=payment_data(id=payment.ledgepay_id))
    LedgePayClient().retrieve_payment(payment.ledgepay_id)
    data = {"id": payment.ledgepay_id, "amount": 5000, "currency": "EUR"}
    post(client, {"event": "payment.succeeded", "data": data})
    said = json.dumps(
        [dict(span.attributes) for span in seen.spans]
        + [a for name in METRICS for a, _ in seen.points(name)],
        default=str,
    )
    for secret in ("sk_test_telemetry", "ann@example.com", "John Doe", payment.ledgepay_id):
        assert secret not in said


def test_without_the_package_nothing_is_imported_and_every_hook_does_nothing():
    code = (
        "import sys; sys.modules['opentelemetry'] = None\n"
        "from django_ledgepay import telemetry\n"
        "assert not telemetry.enabled()\n"
        "with telemetry.client_attempt('GET', '/payments/x', 1) as a: a.answered(200)\n"
        "with telemetry.span('ledgepay.webhook'): pass\n"
        "telemetry.webhook_delivery('payment.succeeded', 'applied')\n"
        "telemetry.delivery_attempt('payment_succeeded', 'r', succeeded=True)\n"
        "telemetry.observe('g', 'd', lambda: 1)\n"
        "assert telemetry.client_attempt('GET', '/', 0) is telemetry.NOTHING\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry.')))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_url_templates_never_hold_an_id():
    assert telemetry.url_template("/payments/pay_123") == "/payments/{id}"
    assert telemetry.url_template("/payments") == "/payments"
    assert telemetry.url_template("/refunds") == "/refunds"
