"""django_ledgepay.webhooks: the signature scheme, reading bodies, the event log, applying."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from typing import Any

import pytest
import requests

from django.core.exceptions import SuspiciousOperation
from django.db import connection, transaction

from django_ledgepay import signals, signatures, webhooks
from django_ledgepay.exceptions import WebhookPayloadError, WebhookSignatureError
from django_ledgepay.mirror import orm
from django_ledgepay.models import Payment, Refund, WebhookEvent
from tests.conftest import API
from tests.factories import make_payment, make_refund, payment_data, refund_data

NOW = 1_705_314_735
PAYMENT_SIGNALS = (signals.payment_succeeded, signals.payment_failed, signals.payment_canceled)
BODY = b'{"event": "payment.succeeded", "data": {"id": "pay_1"}}'


def body_of(event_type: str, data: dict[str, Any]) -> bytes:
    return json.dumps({"event": event_type, "data": data}).encode()


def stored(event_type: str, data: dict[str, Any]) -> WebhookEvent:
    """An event as the view stores it, not yet processed."""
    event, created, invalid = webhooks.record_event(body_of(event_type, data))
    assert created and invalid is None
    return event


# The signature


def test_compute_signature_is_hmac_sha256_of_timestamp_dot_body():
    expected = hmac.new(b"whsec_x", b"1705314735." + BODY, hashlib.sha256).hexdigest()
    assert webhooks.compute_signature(BODY, "whsec_x", NOW) == expected
    assert expected == expected.lower() and len(expected) == 64


def test_signature_header_has_one_v1_per_secret():
    header = webhooks.signature_header(BODY, ["old", "new"], NOW)
    old, new = (webhooks.compute_signature(BODY, s, NOW) for s in ("old", "new"))
    assert header == f"t={NOW},v1={old},v1={new}"
    assert webhooks.parse_signature_header(header) == (NOW, [old, new])


def test_parse_signature_header_tolerates_spaces_and_unknown_entries():
    header = f" t={NOW} , v0=abc, v1=def ,junk"
    assert webhooks.parse_signature_header(header) == (NOW, ["def"])


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        ("v1=abc", "no timestamp"),
        (f"t={NOW}", "no v1"),
        (f"t={NOW},v1=", "no v1"),
        ("t=-5,v1=abc", "not a number"),
        ("t=1.5,v1=abc", "not a number"),
        ("t=١٢٣,v1=abc", "not a number"),  # Arabic-Indic digits: isdigit() but not ASCII.
        ("t=" + "9" * 400 + ",v1=abc", "not a number"),  # Would overflow a float.
        ("t=" + "9" * 5000 + ",v1=abc", "not a number"),  # Past int()'s digit limit.
    ],
)
def test_parse_signature_header_refuses(header, reason):
    with pytest.raises(WebhookSignatureError, match=reason):
        webhooks.parse_signature_header(header)


def test_verify_signature_returns_the_timestamp():
    header = webhooks.signature_header(BODY, "s", NOW)
    assert webhooks.verify_signature(BODY, header, ["s"], now=NOW) == NOW


@pytest.mark.parametrize(("offset", "passes"), [(-300, True), (300, True), (-301, False)])
def test_verify_signature_tolerance_is_inclusive(offset, passes):
    header = webhooks.signature_header(BODY, "s", NOW + offset)
    if passes:
        webhooks.verify_signature(BODY, header, ["s"], now=NOW)
    else:
        with pytest.raises(WebhookSignatureError, match="tolerance"):
            webhooks.verify_signature(BODY, header, ["s"], now=NOW)


def test_verify_signature_custom_tolerance():
    header = webhooks.signature_header(BODY, "s", NOW - 20)
    with pytest.raises(WebhookSignatureError, match="tolerance"):
        webhooks.verify_signature(BODY, header, ["s"], tolerance=10, now=NOW)


@pytest.mark.parametrize(
    ("header", "secrets", "reason"),
    [
        (None, ["s"], "missing"),
        ("", ["s"], "missing"),
        ("t=1,v1=x", [], "No webhook secret"),
        ("t=1,v1=x", ["", ""], "No webhook secret"),
    ],
)
def test_verify_signature_refuses_without_header_or_secret(header, secrets, reason):
    with pytest.raises(WebhookSignatureError, match=reason):
        webhooks.verify_signature(BODY, header, secrets, now=1)


def test_verify_signature_any_entry_any_secret():
    header = webhooks.signature_header(BODY, ["unknown", "b"], NOW)
    webhooks.verify_signature(BODY, header, ["a", "b"], now=NOW)
    with pytest.raises(WebhookSignatureError, match="No signature matches"):
        webhooks.verify_signature(BODY, header, ["a", "c"], now=NOW)
    with pytest.raises(WebhookSignatureError, match="No signature matches"):
        webhooks.verify_signature(BODY + b" ", header, ["b"], now=NOW)


def test_verify_signature_is_case_sensitive_hex():
    signature = webhooks.compute_signature(BODY, "s", NOW)
    header = f"t={NOW},v1={signature.upper()}"
    with pytest.raises(WebhookSignatureError):
        webhooks.verify_signature(BODY, header, ["s"], now=NOW)


def test_signature_comparison_is_constant_time_and_checks_every_entry(monkeypatch):
    compared: list[tuple[str, str]] = []

    def spy(a: str, b: str) -> bool:
        compared.append((a, b))
        return a == b

    monkeypatch.setattr(signatures, "constant_time_compare", spy)
    header = webhooks.signature_header(BODY, ["a", "b"], NOW)
    webhooks.verify_signature(BODY, header, ["a", "b"], now=NOW)
    assert len(compared) == 4  # No early exit on the first match.


def test_signature_error_is_suspicious_operation():
    assert issubclass(WebhookSignatureError, SuspiciousOperation)


# Reading the body


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"\xff\xfe{}", "not UTF-8"),
        (b"not json", "not JSON"),
        (b"", "not JSON"),
        (b'{"event": "x", "data": {"a": NaN}}', "not JSON"),
        (b'{"event": "x", "data": {"a": -Infinity}}', "not JSON"),
        (b'{"event": "x", "data": {"a": 1e400}}', "not JSON"),  # Would be inf.
        (b"[" * 100_000, "not JSON"),
        (b'{"event": "x", "data": {"a": "\\u0000"}}', "NUL"),
        (b'{"event": "x", "data": {"a\\u0000": 1}}', "NUL"),
        (b'{"event": "x", "data": {"a": ["\\ud800"]}}', "unpaired surrogate"),
        (b'{"event": "x", "data": {"\\udfff": 1}}', "unpaired surrogate"),
        (b"[1, 2]", "not a JSON object"),
        (b'"text"', "not a JSON object"),
        (b"null", "not a JSON object"),
        (b"{}", "no string 'event'"),
        (b'{"event": "", "data": {}}', "no string 'event'"),
        (b'{"event": 5, "data": {}}', "no string 'event'"),
        (b'{"event": "x"}', "no object 'data'"),
        (b'{"event": "x", "data": null}', "no object 'data'"),
        (b'{"event": "x", "data": []}', "no object 'data'"),
    ],
)
def test_parse_event_refuses_what_is_not_an_event(body, reason):
    with pytest.raises(WebhookPayloadError, match=reason):
        webhooks.parse_event(body)


@pytest.mark.parametrize(
    ("event_type", "data", "reason"),
    [
        ("payment.succeeded", {}, "no string 'id'"),
        ("payment.succeeded", {"id": ""}, "no string 'id'"),
        ("payment.failed", {"id": 7}, "no string 'id'"),
        ("refund.created", {"id": "re_1"}, "no string 'payment_id'"),
        ("refund.succeeded", {"id": "re_1", "payment_id": 3}, "no string 'payment_id'"),
        ("payment.succeeded", {"id": "p", "amount": "5000"}, "mistyped 'amount'"),
        ("payment.succeeded", {"id": "p", "amount": 50.0}, "mistyped 'amount'"),
        ("payment.succeeded", {"id": "p", "amount": True}, "mistyped 'amount'"),
        ("payment.succeeded", {"id": "p", "amount": 0}, "'amount' that is not a positive"),
        ("payment.succeeded", {"id": "p", "amount": -5}, "'amount' that is not a positive"),
        ("payment.succeeded", {"id": "p", "amount": 2**63}, "'amount' that is not a positive"),
        ("payment.succeeded", {"id": "p", "currency": 978}, "mistyped 'currency'"),
        ("payment.succeeded", {"id": "p", "metadata": []}, "mistyped 'metadata'"),
        ("payment.succeeded", {"id": "p", "customer": "Jo"}, "mistyped 'customer'"),
        ("payment.succeeded", {"id": "p", "customer": {"email": 1}}, "'customer.email'"),
        ("payment.succeeded", {"id": "p", "customer": {"name": []}}, "'customer.name'"),
        ("payment.succeeded", {"id": "p", "description": False}, "mistyped 'description'"),
        ("payment.succeeded", {"id": "p", "created_at": 1705314735}, "mistyped 'created_at'"),
        ("payment.canceled", {"id": "p", "checkout_url": {}}, "mistyped 'checkout_url'"),
        ("refund.failed", {"id": "r", "payment_id": "p", "reason": 1}, "mistyped 'reason'"),
        ("payment.succeeded", {"id": "p" * 256}, "'id' over 255"),
        ("refund.created", {"id": "r", "payment_id": "p" * 256}, "'payment_id' over 255"),
        ("payment.succeeded", {"id": "p", "checkout_url": "h" * 2049}, "over 2048"),
        ("payment.succeeded", {"id": "p", "customer": {"email": "e" * 255}}, "over 254"),
        ("payment.succeeded", {"id": "p", "customer": {"name": "n" * 256}}, "over 255"),
        ("payment.succeeded", {"id": ".."}, "invalid 'id'"),
        ("payment.succeeded", {"id": "pay/../x"}, "invalid 'id'"),
        ("refund.created", {"id": "r", "payment_id": "."}, "invalid 'payment_id'"),
    ],
)
def test_parse_event_refuses_known_types_with_missing_or_mistyped_fields(event_type, data, reason):
    with pytest.raises(WebhookPayloadError, match=reason):
        webhooks.parse_event(body_of(event_type, data))


@pytest.mark.parametrize(
    "body",
    [
        body_of("payment.succeeded", {"id": "pay_1"}),
        body_of("payment.succeeded", payment_data(description=None, metadata=None)),
        body_of("payment.succeeded", {"id": "p" * 255, "amount": 2**63 - 1}),
        body_of("refund.succeeded", refund_data("pay_1")),
        body_of("payment.disputed", {"id": 5, "amount": "any", "x": [None]}),
        body_of("anything", {}),
        b'{"event": "x", "data": {"a": "\\\\u0000"}}',  # A backslash, then "u0000".
        b'{"event": "x", "data": {"smile": "\\ud83d\\ude00"}}',  # A paired surrogate.
        '{"event": "x", "data": {"name": "Zoë 東京"}}'.encode(),
    ],
)
def test_parse_event_accepts(body):
    assert webhooks.parse_event(body) == json.loads(body)


def test_max_lengths_match_the_columns():
    columns = {
        "id": Payment._meta.get_field("ledgepay_id"),
        "payment_id": Refund._meta.get_field("ledgepay_id"),
        "checkout_url": Payment._meta.get_field("checkout_url"),
        "success_url": Payment._meta.get_field("success_url"),
        "cancel_url": Payment._meta.get_field("cancel_url"),
        "customer.email": Payment._meta.get_field("customer_email"),
        "customer.name": Payment._meta.get_field("customer_name"),
    }
    assert {name: getattr(field, "max_length", None) for name, field in columns.items()} == (
        dict(webhooks.MAX_LENGTHS)
    )


# Recording


@pytest.mark.django_db
def test_record_event_stores_a_new_delivery_once():
    body = body_of("payment.succeeded", {"id": "pay_1", "amount": 5000})
    event, created, invalid = webhooks.record_event(body)
    assert (created, invalid) == (True, None)
    event.refresh_from_db()
    assert (event.event_type, event.object_id, event.status) == (
        "payment.succeeded",
        "pay_1",
        "received",
    )
    assert event.payload == json.loads(body)
    assert event.body_sha256 == hashlib.sha256(body).hexdigest()
    assert event.attempts == 0

    again, created, _ = webhooks.record_event(body)
    assert (again.pk, created) == (event.pk, False)
    # Inside a transaction (as here), the duplicate's savepoint keeps it usable.
    assert WebhookEvent.objects.count() == 1


@pytest.mark.django_db
def test_record_event_keeps_an_invalid_json_object_as_it_is():
    body = body_of("payment.succeeded", {"id": "pay_1", "amount": "5000"})
    event, created, invalid = webhooks.record_event(body)
    assert created and invalid is not None
    event.refresh_from_db()
    assert event.payload == json.loads(body)
    assert (event.event_type, event.object_id, event.status) == (
        "payment.succeeded",
        "pay_1",
        "ignored",
    )
    assert event.error == invalid.message == "The event's data has a mistyped 'amount'."


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("body", "raw"),
    [
        (b"not json", "not json"),
        (b"[1, 2]", "[1, 2]"),
        (b"\xff{\x00}", "\ufffd{\ufffd}"),
        (b'{"event": "x", "data": {"a": "\\u0000"}}', '{"event": "x", "data": {"a": "\\u0000"}}'),
        (b"x" * 20_000, "x" * webhooks.RAW_BODY_CHARS),
    ],
)
def test_record_event_keeps_an_unreadable_body_as_raw_text(body, raw):
    event, created, invalid = webhooks.record_event(body)
    assert created and invalid is not None
    event.refresh_from_db()
    assert event.payload == {"raw": raw}
    assert (event.event_type, event.object_id, event.status) == ("", "", "ignored")
    assert event.error == invalid.message


@pytest.mark.django_db
def test_record_event_cuts_long_types_and_ids_to_their_columns():
    event, _, invalid = webhooks.record_event(body_of("e" * 150, {"id": "i" * 300}))
    assert invalid is None
    event.refresh_from_db()
    assert (event.event_type, event.object_id) == ("e" * 100, "i" * 255)


# Processing


@pytest.mark.django_db
def test_process_event_applies_and_records(receive, django_capture_on_commit_callbacks):
    payment = make_payment(status="pending")
    paid = receive(signals.payment_succeeded)
    event = stored("payment.succeeded", {"id": payment.ledgepay_id})
    with django_capture_on_commit_callbacks(execute=True):
        webhooks.process_event(event)
    assert (event.status, event.error, event.attempts) == ("processed", "", 1)
    event.refresh_from_db()
    assert (event.status, event.error, event.attempts) == ("processed", "", 1)
    assert event.processed_at is not None
    payment.refresh_from_db()
    assert payment.status == "succeeded"
    assert payment.completed_at is not None
    assert paid.calls == [{"sender": Payment, "payment": payment, "event": event}]


@pytest.mark.django_db
def test_process_event_twice_applies_once(receive, django_capture_on_commit_callbacks):
    payment = make_payment(status="pending")
    paid = receive(signals.payment_succeeded)
    event = stored("payment.canceled", {"id": payment.ledgepay_id})
    canceled = receive(signals.payment_canceled)
    with django_capture_on_commit_callbacks(execute=True):
        webhooks.process_event(event)
        webhooks.process_event(event)
    event.refresh_from_db()
    assert (event.status, event.attempts) == ("processed", 2)
    assert len(canceled.calls) == 1
    assert paid.calls == []


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("final", "event_type"),
    [
        ("succeeded", "payment.failed"),
        ("succeeded", "payment.canceled"),
        ("failed", "payment.succeeded"),
        ("canceled", "payment.succeeded"),
    ],
)
def test_contradicting_payment_event_is_ignored(
    final, event_type, receive, django_capture_on_commit_callbacks
):
    payment = make_payment(status=final)
    receivers = [receive(s) for s in PAYMENT_SIGNALS]
    event = stored(event_type, {"id": payment.ledgepay_id, "description": "changed?"})
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        webhooks.process_event(event)
    assert (event.status, event.error) == ("ignored", f"The payment is already {final}.")
    payment.refresh_from_db()
    assert payment.status == final
    assert callbacks == []
    assert all(r.calls == [] for r in receivers)


@pytest.mark.django_db
def test_contradicting_refund_event_is_ignored(receive, django_capture_on_commit_callbacks):
    payment = make_payment()
    refund = make_refund(payment, status="succeeded", amount=2500)
    failed = receive(signals.refund_failed)
    # Its other fields are not trusted either: a smaller amount would free money to refund.
    data = refund_data(payment.ledgepay_id, id=refund.ledgepay_id, amount=100, reason="other")
    event = stored("refund.failed", data)
    with django_capture_on_commit_callbacks(execute=True):
        webhooks.process_event(event)
    assert (event.status, event.error) == ("ignored", "The refund is already succeeded.")
    refund.refresh_from_db()
    assert (refund.status, refund.amount, refund.reason) == ("succeeded", 2500, "customer_request")
    assert payment.amount_refunded == 2500
    assert failed.calls == []


@pytest.mark.django_db
def test_refund_events_in_any_order_give_one_refund_and_each_signal_once(
    django_capture_on_commit_callbacks,
):
    payment = make_payment()
    order: list[tuple[str, Any]] = []

    def on_created(sender: Any, **kwargs: Any) -> None:
        order.append(("created", kwargs["event"]))

    def on_succeeded(sender: Any, **kwargs: Any) -> None:
        order.append(("succeeded", kwargs["event"]))

    signals.refund_created.connect(on_created)
    signals.refund_succeeded.connect(on_succeeded)
    try:
        data = refund_data(payment.ledgepay_id)  # status "pending", as LedgePay sends it
        succeeded = stored("refund.succeeded", data)
        created = stored("refund.created", data)
        with django_capture_on_commit_callbacks(execute=True):
            webhooks.process_event(succeeded)
            webhooks.process_event(created)
            webhooks.process_event(succeeded)
    finally:
        signals.refund_created.disconnect(on_created)
        signals.refund_succeeded.disconnect(on_succeeded)
    assert order == [("created", succeeded), ("succeeded", succeeded)]
    assert (succeeded.status, created.status) == ("processed", "processed")
    refund = Refund.objects.get()
    assert (refund.status, refund.amount, refund.payment) == ("succeeded", 2500, payment)


@pytest.mark.django_db
def test_unknown_type_is_ignored_with_a_note():
    event = stored("payment.disputed", {"id": "pay_1"})
    webhooks.process_event(event)
    event.refresh_from_db()
    assert event.status == "ignored"
    assert event.error == "Unknown event type 'payment.disputed': kept, ignored."
    assert event.processed_at is not None


@pytest.mark.django_db
def test_stored_invalid_payloads_are_ignored_not_raised():
    payment = make_payment(status="pending")
    bad = WebhookEvent.objects.create(
        event_type="payment.succeeded",
        payload={"event": "payment.succeeded", "data": {"id": payment.ledgepay_id, "amount": "1"}},
        body_sha256="a" * 64,
    )
    raw = WebhookEvent.objects.create(
        payload={"raw": "not json"}, body_sha256="b" * 64, error="The body is not JSON."
    )
    odd = WebhookEvent.objects.create(payload=[1, 2], body_sha256="c" * 64)
    for event in (bad, raw, odd):
        webhooks.process_event(event)
    assert (bad.status, bad.error) == ("ignored", "The event's data has a mistyped 'amount'.")
    assert (raw.status, raw.error) == ("ignored", "The body is not JSON.")
    assert (odd.status, odd.error) == ("ignored", "The body is not a JSON object.")
    payment.refresh_from_db()
    assert payment.status == "pending"


@pytest.mark.django_db
def test_api_failure_is_recorded_as_failed(api, settings, caplog):
    settings.LEDGEPAY_MAX_RETRIES = 0
    api.get(f"{API}/payments/pay_far", body=requests.ConnectionError("down"))
    event = stored("payment.succeeded", {"id": "pay_far"})
    with caplog.at_level(logging.DEBUG):
        webhooks.process_event(event)
    event.refresh_from_db()
    assert (event.status, event.attempts, event.processed_at) == ("failed", 1, None)
    assert "Could not reach LedgePay" in event.error
    assert "failed: Could not reach LedgePay" in caplog.text
    assert settings.LEDGEPAY_API_KEY not in caplog.text + event.error
    assert not Payment.objects.exists()


@pytest.mark.django_db
def test_unexpected_error_is_recorded_as_failed(monkeypatch):
    payment = make_payment(status="pending")
    event = stored("payment.succeeded", {"id": payment.ledgepay_id})

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("bug")

    monkeypatch.setattr("django_ledgepay.webhooks.apply_payment_event", boom)
    webhooks.process_event(event)
    event.refresh_from_db()
    assert (event.status, event.error) == ("failed", "RuntimeError: bug")


@pytest.mark.django_db
def test_a_database_error_leaves_the_callers_transaction_usable(monkeypatch):
    payment = make_payment(status="pending")
    event = stored("payment.succeeded", {"id": payment.ledgepay_id})

    def broken(*args: Any, **kwargs: Any) -> Any:
        with connection.cursor() as cursor:
            cursor.execute("SELECT * FROM no_such_table")  # Aborts a PostgreSQL transaction.

    monkeypatch.setattr("django_ledgepay.webhooks.apply_payment_event", broken)
    with transaction.atomic():  # As the admin's action may be.
        webhooks.process_event(event)
        assert Payment.objects.count() == 1  # Would raise if the transaction were broken.
    event.refresh_from_db()
    assert event.status == "failed"
    assert "no_such_table" in event.error


@pytest.mark.django_db(transaction=True)  # The rival's UPDATE commits, as in production.
def test_a_failure_does_not_overwrite_a_concurrent_success(monkeypatch):
    payment = make_payment(status="pending")
    event = stored("payment.succeeded", {"id": payment.ledgepay_id})

    def finished_elsewhere(*args: Any, **kwargs: Any) -> Any:
        # Another worker applies the same event meanwhile, then this one fails.
        WebhookEvent.objects.filter(pk=event.pk).update(status="processed", attempts=1)
        raise requests.ConnectionError("late")

    monkeypatch.setattr("django_ledgepay.webhooks.apply_payment_event", finished_elsewhere)
    webhooks.process_event(event)
    assert (event.status, event.attempts) == ("processed", 1)
    event.refresh_from_db()
    assert (event.status, event.attempts) == ("processed", 1)


@pytest.mark.django_db
def test_news_that_did_not_take_is_failed_to_try_again(monkeypatch):
    payment = make_payment(status="pending")
    event = stored("payment.succeeded", {"id": payment.ledgepay_id})
    monkeypatch.setattr(
        "django_ledgepay.webhooks.apply_payment_event", lambda *a, **kw: (payment, False)
    )
    webhooks.process_event(event)
    assert (event.status, event.error) == ("failed", "The payment is still pending; not applied.")


@pytest.mark.django_db
def test_refund_inserted_by_a_rival_while_waiting_for_the_lock_is_still_updated(
    monkeypatch, receive, django_capture_on_commit_callbacks
):
    # The race of two deliveries of refund.created and refund.succeeded, made deterministic:
    # the first look finds no refund, the look under the payment's lock finds the rival's.
    payment = make_payment()
    rival = make_refund(payment, status="pending", amount=2500)
    done = receive(signals.refund_succeeded)
    locked_refund = orm.lock_refund
    looks: list[str] = []

    def first_look_misses(ledgepay_id: str) -> Refund | None:
        looks.append(ledgepay_id)
        return None if len(looks) == 1 else locked_refund(ledgepay_id)

    monkeypatch.setattr(orm, "lock_refund", first_look_misses)
    data = refund_data(payment.ledgepay_id, id=rival.ledgepay_id)
    event = stored("refund.succeeded", data)
    with django_capture_on_commit_callbacks(execute=True):
        webhooks.process_event(event)
    assert len(looks) == 2
    assert event.status == "processed"
    rival.refresh_from_db()
    assert rival.status == "succeeded"
    assert [call["refund"] for call in done.calls] == [rival]
