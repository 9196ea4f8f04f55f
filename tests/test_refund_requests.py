"""Refunds and payments whose answer was lost are never doubled; fixed facts never change."""

from __future__ import annotations

import datetime
import json
import logging
from typing import Any

import pytest
import requests
import responses

from django.utils import timezone

from django_ledgepay import refunds, services, webhooks
from django_ledgepay.exceptions import (
    APIConnectionError,
    APIError,
    LedgePayUnavailableError,
    RefundError,
    RefundUnresolvedError,
)
from django_ledgepay.models import (
    Payment,
    PaymentRequest,
    Refund,
    RefundRequest,
    Transition,
    WebhookEvent,
)
from django_ledgepay.testing import signed_webhook
from tests.conftest import API
from tests.factories import make_payment, next_id, payment_data, refund_data

VALID: dict[str, Any] = {
    "amount": 5000,
    "currency": "EUR",
    "success_url": "https://shop.example/ok",
    "cancel_url": "https://shop.example/cancel",
}


class FakeRefunds:
    """LedgePay's POST /refunds with idempotency keys; ``lose`` answers are lost after it
    acted, ``down`` calls never reach it."""

    def __init__(self, api: responses.RequestsMock, payment: Payment) -> None:
        self.payment = payment
        self.by_key: dict[str, dict[str, Any]] = {}
        self.lose = 0
        self.down = 0
        self.refuse = False
        api.add_callback(responses.POST, f"{API}/refunds", callback=self)

    def __call__(self, request: Any) -> Any:
        if self.down:
            self.down -= 1
            raise requests.ConnectionError("no route")
        if self.refuse:
            return 400, {}, json.dumps({"error": {"message": "Amount too large."}})
        key = request.headers["Idempotency-Key"]
        body = json.loads(request.body)
        if key not in self.by_key:
            # Recorded before the call: the request is in the mirror, unknown, being sent.
            recorded = RefundRequest.objects.get(idempotency_key=key)
            assert (recorded.outcome, recorded.amount) == ("unknown", body["amount"])
            if not recorded.attempts:  # Its first call (a resend runs under the row lock).
                assert recorded.sending_since is not None
            self.by_key[key] = refund_data(
                self.payment.ledgepay_id, id=next_id("re"), amount=body["amount"]
            )
        if self.lose:
            self.lose -= 1
            raise requests.ConnectionError("reset after it acted")
        return 201, {}, json.dumps(self.by_key[key])

    @property
    def made(self) -> list[int]:
        return sorted(refund["amount"] for refund in self.by_key.values())


@pytest.fixture
def payment(db):
    return make_payment(amount=5000)


def test_a_retry_after_a_lost_answer_returns_the_first_refund_whatever_arrived(api, payment):
    ledgepay = FakeRefunds(api, payment)
    ledgepay.lose = 4  # The first call and its three retries: every answer lost.
    with pytest.raises(APIConnectionError):
        services.refund_payment(payment, amount=1000)
    request = RefundRequest.objects.get()
    assert request.outcome == "unknown" and request.sending_since is None
    assert request.attempts == 1 and "ConnectionError" in request.error
    # Its refund.created webhook arrives before the caller tries again.
    (made,) = ledgepay.by_key.values()
    services.apply_refund(made)
    refund = services.refund_payment(payment, amount=1000)
    assert refund.ledgepay_id == made["id"]
    assert ledgepay.made == [1000]
    assert payment.refunds.count() == 1
    request.refresh_from_db()
    assert (request.outcome, request.refund) == ("made", refund)


def test_a_whole_refund_retried_returns_its_refund(api, payment):
    ledgepay = FakeRefunds(api, payment)
    ledgepay.lose = 4
    with pytest.raises(APIConnectionError):
        services.refund_payment(payment)
    refund = services.refund_payment(payment)
    assert (refund.amount, ledgepay.made) == (5000, [5000])
    with pytest.raises(RefundError, match="already refunded"):
        services.refund_payment(payment)


def test_another_amount_resolves_the_unknown_request_first(api, payment):
    ledgepay = FakeRefunds(api, payment)
    ledgepay.lose = 4
    with pytest.raises(APIConnectionError):
        services.refund_payment(payment, amount=1000)
    second = services.refund_payment(payment, amount=500)
    assert second.amount == 500
    assert ledgepay.made == [500, 1000]
    assert payment.amount_refunded == 1500
    # Nothing is left unknown, and a refund of more than what is left is refused locally.
    assert not RefundRequest.objects.filter(outcome="unknown").exists()
    with pytest.raises(RefundError, match="between 1 and 3500"):
        services.refund_payment(payment, amount=4000)


@pytest.mark.parametrize("refused", ["changed", "too much"])
def test_what_was_resolved_is_kept_when_the_new_refund_is_refused(api, payment, refused):
    # The admin's page: 20.00 asked, the answer lost; then 10.00 asked from a page that
    # still shows nothing refunded, or more than is left once the first refund counts.
    ledgepay = FakeRefunds(api, payment)
    ledgepay.lose = 4
    with pytest.raises(APIConnectionError):
        services.refund_payment(payment, amount=2000, expected_refunded=0)
    amount, expected = (1000, 0) if refused == "changed" else (4000, None)
    with pytest.raises(RefundError):
        services.refund_payment(payment, amount=amount, expected_refunded=expected)
    # The first request was resolved, and that stays: the page now shows 20.00 refunded,
    # and the next call is not refused for the same reason again.
    request = RefundRequest.objects.get()
    assert request.outcome == "made" and request.refund is not None
    assert payment.amount_refunded == 2000
    assert payment.transitions.filter(signal="refund_created").count() == 1
    refund = services.refund_payment(payment, amount=1000, expected_refunded=2000)
    assert refund.amount == 1000
    assert ledgepay.made == [1000, 2000]


@pytest.mark.parametrize(
    "answer",
    [{"amount": 5000}, {"payment_id": "pay_other"}, {"currency": "USD"}],
    ids=["amount", "payment", "currency"],
)
def test_an_answer_for_another_refund_is_not_recorded(api, payment, caplog, answer):
    asked = refund_data(payment.ledgepay_id, id="re_odd", amount=1000)
    api.add(responses.POST, f"{API}/refunds", status=201, json={**asked, **answer})
    errors = caplog.at_level(logging.ERROR, logger="django_ledgepay.services")
    with errors, pytest.raises(APIError, match="instead of"):
        services.refund_payment(payment, amount=1000)
    # Nothing recorded as made: the request stays unresolved, its amount held back.
    assert not Refund.objects.exists()
    request = RefundRequest.objects.get()
    assert request.outcome == "unknown" and "instead of" in request.error
    assert [record.levelname for record in caplog.records] == ["ERROR"]
    # The next refund sends it again first; the same answer keeps it unresolved, and
    # nothing new is sent.
    with pytest.raises(RefundUnresolvedError, match="instead of"):
        services.refund_payment(payment, amount=500)
    keys = {call.request.headers["Idempotency-Key"] for call in api.calls}
    assert keys == {request.idempotency_key}
    # LedgePay's answer to the resend names the refund asked for: resolved, once.
    api.replace(responses.POST, f"{API}/refunds", status=201, json=asked)
    assert services.refund_payment(payment, amount=1000).ledgepay_id == "re_odd"
    request.refresh_from_db()
    assert request.outcome == "made"
    assert payment.amount_refunded == 1000


def test_while_ledgepay_is_unreachable_nothing_new_is_sent(api, payment):
    ledgepay = FakeRefunds(api, payment)
    ledgepay.lose = 4
    with pytest.raises(APIConnectionError):
        services.refund_payment(payment, amount=1000)
    calls = len(api.calls)
    ledgepay.down = 4
    with pytest.raises(RefundUnresolvedError, match="being resolved") as excinfo:
        services.refund_payment(payment, amount=2000)
    assert "Nothing new was sent" in str(excinfo.value)
    keys = {call.request.headers["Idempotency-Key"] for call in api.calls[calls:]}
    assert keys == {RefundRequest.objects.get().idempotency_key}
    assert RefundRequest.objects.count() == 1
    with pytest.raises(RefundUnresolvedError):
        ledgepay.down = 4
        services.resolve_refund_requests(payment)
    assert services.resolve_refund_requests(payment)[0].outcome == "made"


def test_a_resent_request_that_is_refused_is_resolved_so(api, payment):
    ledgepay = FakeRefunds(api, payment)
    ledgepay.down = 4  # Never reached LedgePay.
    with pytest.raises(APIConnectionError):
        services.refund_payment(payment, amount=1000)
    ledgepay.refuse = True
    (resolved,) = services.resolve_refund_requests(payment)
    assert (resolved.outcome, "Amount too large" in resolved.error) == ("refused", True)
    assert payment.refunds.count() == 0


def test_a_request_left_by_a_dead_process_waits_for_its_lease(api, payment, monkeypatch):
    ledgepay = FakeRefunds(api, payment)
    # As if a process recorded it and died during the call.
    request = RefundRequest.objects.create(
        payment=payment,
        amount=1000,
        reason="customer_request",
        idempotency_key="refund-dead",
        source="api",
        sending_since=timezone.now(),
    )
    monkeypatch.setattr(refunds, "IN_FLIGHT_WAIT", 0.0)
    with pytest.raises(RefundUnresolvedError, match="being sent right now"):
        services.refund_payment(payment, amount=1000)
    # A different amount may go ahead, with the request's amount held back.
    with pytest.raises(RefundError, match="between 1 and 4000"):
        services.refund_payment(payment, amount=4500)
    assert len(api.calls) == 0
    RefundRequest.objects.filter(pk=request.pk).update(
        sending_since=timezone.now() - services.sending_lease() - datetime.timedelta(seconds=1)
    )
    refund = services.refund_payment(payment, amount=1000)
    assert [call.request.headers["Idempotency-Key"] for call in api.calls] == ["refund-dead"]
    assert refund.amount == 1000 and ledgepay.made == [1000]


def test_an_explicit_key_works_as_before(api, payment):
    ledgepay = FakeRefunds(api, payment)
    ledgepay.lose = 4
    with pytest.raises(APIConnectionError):
        services.refund_payment(payment, amount=1000, idempotency_key="return-9")
    first = services.refund_payment(payment, amount=1000, idempotency_key="return-9")
    again = services.refund_payment(payment, amount=1000, idempotency_key="return-9")
    assert first == again
    assert ledgepay.made == [1000]


def test_the_request_records_who_asked(api, payment, admin_user):
    from django_ledgepay import reactions
    from django_ledgepay.models import Transition

    FakeRefunds(api, payment)
    with reactions.origin(Transition.Source.ADMIN, actor=admin_user):
        refund = services.refund_payment(payment, amount=100)
    request = RefundRequest.objects.get()
    assert (request.source, request.actor, request.refund) == ("admin", admin_user, refund)


# create_payment without a key


def lost_then_answered(api: Any, lose: int) -> dict[str, dict[str, Any]]:
    """LedgePay makes a payment per key; the first ``lose`` answers are lost after it acted."""
    made: dict[str, dict[str, Any]] = {}
    left = [lose]

    def create(request: Any) -> Any:
        key = request.headers["Idempotency-Key"]
        made.setdefault(key, payment_data(id=next_id("pay"), **VALID))
        if left[0]:
            left[0] -= 1
            raise requests.ConnectionError("reset after it acted")
        return 201, {}, json.dumps(made[key])

    api.add_callback(responses.POST, f"{API}/payments", callback=create)
    return made


def test_create_payment_without_a_key_is_a_new_payment_every_call(api, db, settings):
    # Two shoppers with the same cart: two orders, two payments, never one shared. The
    # first call's answer is lost (after LedgePay acted); the second is not its retry.
    settings.LEDGEPAY_MAX_RETRIES = 0
    made = lost_then_answered(api, lose=1)
    with pytest.raises(APIConnectionError):
        services.create_payment(**VALID)
    second = services.create_payment(**VALID)
    assert len(made) == 2 and Payment.objects.get() == second
    first_request, second_request = PaymentRequest.objects.order_by("pk")
    # The lost one stays unknown, with its key, for the reconcile to find (missing).
    assert (first_request.outcome, first_request.payment) == ("unknown", None)
    assert (second_request.outcome, second_request.payment) == ("made", second)
    assert first_request.idempotency_key != second_request.idempotency_key
    assert first_request.fingerprint == second_request.fingerprint


def test_create_payment_keeps_one_key_across_its_own_retries(api, db, settings, sleeps):
    settings.LEDGEPAY_MAX_RETRIES = 3
    made = lost_then_answered(api, lose=2)
    payment = services.create_payment(**VALID)
    keys = {call.request.headers["Idempotency-Key"] for call in api.calls}
    assert len(api.calls) == 3 and len(keys) == 1 and len(made) == 1
    assert PaymentRequest.objects.get().outcome == "made"
    assert payment.ledgepay_id == next(iter(made.values()))["id"]


def test_a_key_of_the_shop_makes_a_second_click_one_payment(api, db, settings):
    settings.LEDGEPAY_MAX_RETRIES = 0
    made = lost_then_answered(api, lose=1)
    with pytest.raises(APIConnectionError):
        services.create_payment(**VALID, idempotency_key="order-7")
    again = services.create_payment(**VALID, idempotency_key="order-7")
    assert len(made) == 1 and Payment.objects.get() == again
    assert not PaymentRequest.objects.exists()  # The shop's key is the record.


def test_a_call_the_breaker_refuses_leaves_nothing_unresolved(api, db, payment, settings):
    settings.LEDGEPAY_MAX_RETRIES = 0
    settings.LEDGEPAY_BREAKER_THRESHOLD = 1
    api.get(f"{API}/payments/pay_down", body=requests.ConnectionError("refused"))
    with pytest.raises(APIConnectionError):
        services.sync_payment("pay_down")  # The breaker opens.
    sent = len(api.calls)
    with pytest.raises(LedgePayUnavailableError):
        services.create_payment(**VALID)
    with pytest.raises(LedgePayUnavailableError):
        services.refund_payment(payment, amount=1000)
    assert len(api.calls) == sent  # Nothing was sent.
    assert PaymentRequest.objects.get().outcome == "refused"
    assert RefundRequest.objects.get().outcome == "refused"
    payment.refresh_from_db()
    assert payment.refundable_amount == payment.amount  # Nothing held back.


# Fixed facts


def contradicting_event(payment: Payment, **data: Any) -> WebhookEvent:
    body, _ = signed_webhook(
        {"event": "payment.succeeded", "data": {"id": payment.ledgepay_id, **data}}
    )
    return webhooks.record_event(body)[0]


@pytest.mark.parametrize(
    "said", [{"amount": 1}, {"currency": "USD"}, {"amount": 1, "currency": "USD"}]
)
def test_an_event_contradicting_a_fixed_fact_is_checked_with_ledgepay(api, db, said, caplog):
    payment = make_payment(amount=5000, currency="EUR", status="pending")
    api.get(
        f"{API}/payments/{payment.ledgepay_id}",
        json=payment_data(id=payment.ledgepay_id, status="succeeded", amount=5000),
    )
    event = contradicting_event(payment, **said)
    with caplog.at_level(logging.ERROR, logger="django_ledgepay"):
        webhooks.process_event(event)
    payment.refresh_from_db()
    assert (payment.amount, payment.currency, payment.status) == (5000, "EUR", "succeeded")
    assert len(api.calls) == 1
    event.refresh_from_db()
    assert event.status == "processed"
    assert "contradicted" in event.note and "recorded: 5000" in event.note or "EUR" in event.note
    assert any(record.levelno == logging.ERROR for record in caplog.records)
    assert payment.refundable_amount == 5000


def test_a_contradiction_with_ledgepay_unreachable_fails_for_redelivery(api, db, client):
    payment = make_payment(amount=5000, status="pending")
    api.get(f"{API}/payments/{payment.ledgepay_id}", body=requests.ConnectionError("down"))
    body, headers = signed_webhook(
        {"event": "payment.succeeded", "data": {"id": payment.ledgepay_id, "amount": 1}}
    )
    response = client.post(
        "/ledgepay/webhook/", body, content_type="application/json", headers=headers
    )
    assert response.status_code == 503
    event = WebhookEvent.objects.get()
    assert event.status == "failed" and event.note
    payment.refresh_from_db()
    assert (payment.amount, payment.status) == (5000, "pending")


def test_a_final_payment_cannot_be_shrunk_by_a_later_event(api, db):
    payment = make_payment(amount=5000, status="succeeded")
    api.get(
        f"{API}/payments/{payment.ledgepay_id}",
        json=payment_data(id=payment.ledgepay_id, status="succeeded", amount=5000),
    )
    webhooks.process_event(contradicting_event(payment, amount=1))
    payment.refresh_from_db()
    assert payment.amount == 5000


def test_ledgepays_own_answer_never_changes_a_fixed_fact_either(api, db, caplog):
    payment = make_payment(amount=5000, status="pending")
    api.get(
        f"{API}/payments/{payment.ledgepay_id}",
        json=payment_data(id=payment.ledgepay_id, status="succeeded", amount=9999),
    )
    with caplog.at_level(logging.ERROR, logger="django_ledgepay"):
        services.sync_payment(payment)
    payment.refresh_from_db()
    assert (payment.amount, payment.status) == (5000, "succeeded")
    assert "never changes" in caplog.text


def test_a_refund_event_cannot_change_a_refunds_amount_or_payment(db, caplog):
    payment = make_payment(amount=5000)
    other = make_payment(amount=5000)
    data = refund_data(payment.ledgepay_id, amount=2000)
    refund, _ = services.apply_refund(data)
    body, _ = signed_webhook(
        {
            "event": "refund.succeeded",
            "data": {**data, "amount": 5000, "currency": "USD", "payment_id": other.ledgepay_id},
        }
    )
    event = webhooks.record_event(body)[0]
    with caplog.at_level(logging.ERROR, logger="django_ledgepay"):
        webhooks.process_event(event)
    refund = Refund.objects.get()
    assert (refund.amount, refund.currency, refund.payment) == (2000, "EUR", payment)
    # News that cannot be true moves nothing and sends nothing: kept, noted, answered 200.
    assert refund.status == "pending"
    assert not Transition.objects.filter(signal="refund_succeeded").exists()
    event.refresh_from_db()
    assert event.status == "ignored"
    assert "contradicted" in event.note
    assert payment.refundable_amount == 3000


# The admin


def unknown_request(payment: Payment, **fields: Any) -> RefundRequest:
    return RefundRequest.objects.create(
        payment=payment,
        amount=fields.pop("amount", 1000),
        reason="customer_request",
        idempotency_key=fields.pop("idempotency_key", f"refund-{next_id('k')}"),
        source="admin",
        attempts=1,  # Sent once; no answer came.
        **fields,
    )


def test_the_admin_lists_filters_and_resolves_unresolved_requests(
    api, payment, admin_client, admin_user
):
    from django.urls import reverse

    ledgepay = FakeRefunds(api, payment)
    other = make_payment(amount=700)
    request = unknown_request(payment, actor=admin_user)
    changelist = reverse("admin:django_ledgepay_payment_changelist")
    listed = admin_client.get(changelist, {"refund_request": "unknown"})
    assert [p.pk for p in listed.context["cl"].result_list] == [payment.pk]
    assert other.pk not in [p.pk for p in listed.context["cl"].result_list]
    page = admin_client.get(reverse("admin:django_ledgepay_payment_change", args=(payment.pk,)))
    html = page.content.decode()
    assert "Refund requests (who asked, and what came of it)" in html
    assert admin_user.username in html and "Unknown" in html
    response = admin_client.post(
        changelist,
        {"action": "resolve_refund_requests", "_selected_action": [payment.pk, other.pk]},
        follow=True,
    )
    assert "1 refund request(s) made, 0 refused" in response.content.decode()
    request.refresh_from_db()
    assert request.outcome == "made" and ledgepay.made == [1000]


def test_the_refund_page_says_in_words_that_a_refund_is_being_resolved(api, payment, admin_client):
    from django.urls import reverse

    ledgepay = FakeRefunds(api, payment)
    ledgepay.down = 99
    unknown_request(payment)
    url = reverse("admin:django_ledgepay_payment_refund", args=(payment.pk,))
    response = admin_client.post(
        url, {"amount": "5.00", "reason": "customer_request", "refunded_before": "0"}
    )
    assert response.status_code == 200
    assert "is being resolved" in response.content.decode()
    assert RefundRequest.objects.count() == 1
