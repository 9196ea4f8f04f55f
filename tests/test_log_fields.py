"""Log records carry ``extra`` fields naming what they are about (for JSON formatters and
django-structlog): LedgePay's ids and the event's or transition's pk, never the key or
personal data."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from django_ledgepay import services, signals, webhooks
from django_ledgepay.testing import signed_webhook
from tests.conftest import API
from tests.factories import make_payment, payment_data

FIELDS = ("ledgepay_payment", "ledgepay_refund", "ledgepay_event", "ledgepay_transition")


def fields_of(record: logging.LogRecord) -> dict[str, Any]:
    return {name: getattr(record, name) for name in FIELDS if hasattr(record, name)}


def test_a_contradicted_event_is_logged_with_its_payment_and_event(api, db, caplog):
    payment = make_payment(status="pending", customer_email="ann@example.com")
    api.get(f"{API}/payments/{payment.ledgepay_id}", json=payment_data(id=payment.ledgepay_id))
    body, _ = signed_webhook(
        {"event": "payment.succeeded", "data": {"id": payment.ledgepay_id, "amount": 1}}
    )
    event = webhooks.record_event(body)[0]
    with caplog.at_level(logging.INFO, logger="django_ledgepay"):
        webhooks.process_event(event)
    noted = [r for r in caplog.records if "contradicted" in r.getMessage()]
    assert [fields_of(r) for r in noted] == [{"ledgepay_event": event.pk}]
    kept = [fields_of(r) for r in caplog.records if "never changes" in r.getMessage()]
    assert kept and all(f == {"ledgepay_payment": payment.ledgepay_id} for f in kept)
    for record in caplog.records:
        assert "ann@example.com" not in str(fields_of(record))


def test_a_final_status_kept_is_logged_with_its_payment(db, caplog):
    payment = make_payment(status="succeeded")
    with caplog.at_level(logging.INFO, logger="django_ledgepay"):
        services.apply_payment({"id": payment.ledgepay_id, "status": "failed"})
    (record,) = [r for r in caplog.records if "already succeeded" in r.getMessage()]
    assert fields_of(record) == {"ledgepay_payment": payment.ledgepay_id}


def test_a_failing_receiver_is_logged_with_its_transition_and_payment(
    db, receive, caplog, django_capture_on_commit_callbacks
):
    def broken(sender: Any, **kwargs: Any) -> None:
        raise RuntimeError("warehouse down")

    signals.payment_succeeded.connect(broken, dispatch_uid="tests.broken")
    try:
        payment = make_payment(status="pending")
        with (
            caplog.at_level(logging.ERROR, logger="django_ledgepay"),
            django_capture_on_commit_callbacks(execute=True),
        ):
            services.apply_payment({"id": payment.ledgepay_id, "status": "succeeded"})
    finally:
        signals.payment_succeeded.disconnect(dispatch_uid="tests.broken")
    (record,) = [r for r in caplog.records if "tests.broken" in r.getMessage()]
    transition = payment.transitions.get()
    assert fields_of(record) == {
        "ledgepay_transition": transition.pk,
        "ledgepay_payment": payment.ledgepay_id,
    }


@pytest.mark.parametrize("field", FIELDS)
def test_the_fields_are_documented(field):
    from pathlib import Path

    settings_page = Path(__file__).resolve().parent.parent / "docs" / "howto" / "logging.md"
    assert field in settings_page.read_text()


def test_a_contradicted_customer_is_named_but_never_quoted(api, db, caplog):
    payment = make_payment(status="pending", customer_email="ann@example.com")
    remote = payment_data(id=payment.ledgepay_id, customer={"email": "eve@example.com"})
    api.get(f"{API}/payments/{payment.ledgepay_id}", json=remote)
    data = {"id": payment.ledgepay_id, "customer": {"email": "eve@example.com"}}
    body, _ = signed_webhook({"event": "payment.succeeded", "data": data})
    event = webhooks.record_event(body)[0]
    with caplog.at_level(logging.INFO, logger="django_ledgepay"):
        webhooks.process_event(event)
    event.refresh_from_db()
    assert "customer_email" in event.note and "customer_email" in caplog.text
    for text in (event.note, event.error, caplog.text):
        assert "ann@example.com" not in text and "eve@example.com" not in text
