from __future__ import annotations

import datetime
import json
import logging
import threading
import time
from typing import Any

import pytest
import requests
import responses

from django.db import OperationalError, connection, connections

from django_ledgepay import services, signals
from django_ledgepay.exceptions import (
    APIConnectionError,
    APIError,
    InvalidRequestError,
    NotFoundError,
    RefundError,
    RefundsChangedError,
)
from django_ledgepay.mirror.values import parse_time
from django_ledgepay.models import Payment, Refund
from tests.conftest import API, concurrent_writers
from tests.factories import make_payment, make_refund, next_id, payment_data, refund_data

pytestmark = pytest.mark.django_db

VALID: dict[str, Any] = {
    "amount": 5000,
    "currency": "EUR",
    "success_url": "https://shop.example/ok",
    "cancel_url": "https://shop.example/cancel",
}


# create_payment


@pytest.mark.parametrize(
    ("overrides", "param"),
    [
        ({"amount": 0}, "amount"),
        ({"amount": -5}, "amount"),
        ({"amount": 12.5}, "amount"),
        ({"amount": "5000"}, "amount"),
        ({"amount": True}, "amount"),
        ({"currency": "EURO"}, "currency"),
        ({"currency": "XYZ"}, "currency"),
        ({"currency": 978}, "currency"),
        ({"success_url": "/relative/ok"}, "success_url"),
        ({"success_url": "ftp://shop.example/ok"}, "success_url"),
        ({"cancel_url": "javascript:alert(1)"}, "cancel_url"),
        ({"cancel_url": None}, "cancel_url"),
        ({"cancel_url": "https://shop.example/a b"}, "cancel_url"),
        ({"cancel_url": "https:///no-host"}, "cancel_url"),
        ({"cancel_url": "https://shop.example:port/"}, "cancel_url"),
        ({"description": 5}, "description"),
        ({"customer": {"email": "not-an-email"}}, "customer.email"),
        ({"customer": {"phone": "123"}}, "customer"),
        ({"metadata": {"order": object()}}, "metadata"),
        ({"metadata": ["a"]}, "metadata"),
        ({"idempotency_key": ""}, "idempotency_key"),
        ({"idempotency_key": "k" * 256}, "idempotency_key"),
        ({"idempotency_key": "order\n1"}, "idempotency_key"),
        ({"idempotency_key": "commande-été"}, "idempotency_key"),
        ({"amount": 2**63}, "amount"),
        ({"metadata": {"ratio": float("nan")}}, "metadata"),
        ({"customer": {"name": "N" * 256}}, "customer.name"),
        (
            {"customer": {"email": "a" * 64 + "@" + "b" * 63 + "." + "c" * 63 + "." + "d" * 63}},
            "customer.email",
        ),
    ],
)
def test_create_payment_validates_before_any_call(api, overrides, param):
    with pytest.raises(InvalidRequestError) as excinfo:
        services.create_payment(**{**VALID, **overrides})
    assert excinfo.value.param == param
    assert excinfo.value.http_status is None
    assert len(api.calls) == 0
    assert not Payment.objects.exists()


def test_create_payment_merges_what_was_sent_with_a_partial_answer(api):
    answer = {
        "id": "pay_new",
        "status": "pending",
        "amount": 5000,
        "currency": "EUR",
        "checkout_url": "https://checkout.ledgepay.com/pay_new",
        "created_at": "2024-01-15T10:30:00Z",
    }
    api.post(f"{API}/payments", json=answer, status=201)

    payment = services.create_payment(
        **{**VALID, "currency": "eur"},
        description="Order #1",
        customer={"email": "ann@example.com", "name": "Ann"},
        metadata={"order_id": "1"},
        idempotency_key="order-1",
    )

    sent = json.loads(api.calls[0].request.body)
    assert sent["currency"] == "EUR"
    assert sent["customer"] == {"email": "ann@example.com", "name": "Ann"}
    assert api.calls[0].request.headers["Idempotency-Key"] == "order-1"
    payment.refresh_from_db()
    assert payment.ledgepay_id == "pay_new"
    assert payment.status == Payment.Status.PENDING
    assert payment.checkout_url == "https://checkout.ledgepay.com/pay_new"
    assert payment.description == "Order #1"
    assert (payment.customer_email, payment.customer_name) == ("ann@example.com", "Ann")
    assert payment.metadata == {"order_id": "1"}
    assert payment.success_url == VALID["success_url"]
    assert payment.cancel_url == VALID["cancel_url"]
    assert payment.created_at is not None
    assert payment.created_at.isoformat() == "2024-01-15T10:30:00+00:00"


@pytest.mark.parametrize(
    "answered",
    [
        {"amount": "5000", "currency": 978},  # Ill-typed: what was sent stands.
        {"amount": 5000.0, "customer": {"email": "ann@example.com"}, "metadata": {}},
        {"customer": {}, "description": "", "metadata": None},
    ],
)
def test_create_payment_keeps_what_was_sent_over_an_odd_answer(api, answered):
    answer = payment_data(id="pay_odd", status="pending")
    del answer["description"], answer["customer"], answer["metadata"]
    answer.update(answered)
    api.post(f"{API}/payments", json=answer, status=201)
    payment = services.create_payment(
        **VALID,
        description="Order #2",
        customer={"email": "ann@example.com", "name": "Ann"},
        metadata={"order_id": "2"},
    )
    payment.refresh_from_db()
    assert (payment.amount, payment.currency) == (5000, "EUR")
    assert (payment.customer_email, payment.customer_name) == ("ann@example.com", "Ann")
    assert (payment.description, payment.metadata) == ("Order #2", {"order_id": "2"})


@pytest.mark.parametrize(
    "url", ["http://testserver/ok", "http://web:8000/ok", "http://127.0.0.1:8000/ok?x=1"]
)
def test_create_payment_accepts_any_host(api, url):
    api.post(f"{API}/payments", json=payment_data(), status=201)
    payment = services.create_payment(**{**VALID, "success_url": url})
    assert payment.success_url == url


def test_create_payment_twice_with_one_key_keeps_one_payment(api):
    api.post(f"{API}/payments", json=payment_data(id="pay_same"), status=201)
    first = services.create_payment(**VALID, idempotency_key="order-7")
    second = services.create_payment(**VALID, idempotency_key="order-7")
    assert first.pk == second.pk
    assert Payment.objects.count() == 1
    assert [call.request.headers["Idempotency-Key"] for call in api.calls] == ["order-7"] * 2


def test_create_payment_answer_without_id_is_an_api_error(api):
    api.post(f"{API}/payments", json={"status": "pending"}, status=201)
    with pytest.raises(services.IncompleteDataError):
        services.create_payment(**VALID)
    assert not Payment.objects.exists()


def test_create_payment_failure_records_nothing(api):
    api.post(f"{API}/payments", status=400, json={"error": {"message": "Bad", "param": "x"}})
    with pytest.raises(InvalidRequestError, match="Bad"):
        services.create_payment(**VALID)
    assert not Payment.objects.exists()


# apply_payment and the status rules


def test_apply_payment_never_blanks_known_fields():
    payment = make_payment(status="pending", checkout_url="https://checkout.example/p")
    services.apply_payment(
        {
            "id": payment.ledgepay_id,
            "status": "pending",
            "description": "",
            "customer": None,
            "metadata": None,
            "checkout_url": None,
        }
    )
    payment.refresh_from_db()
    assert payment.checkout_url == "https://checkout.example/p"
    assert payment.description == "Order #12345"
    assert payment.customer_email == "customer@example.com"
    assert payment.metadata == {"order_id": "12345"}


def test_apply_payment_skips_mistyped_fields():
    payment = make_payment(status="pending")
    _, changed = services.apply_payment(
        {"id": payment.ledgepay_id, "amount": "lots", "currency": 5, "created_at": "yesterday"}
    )
    assert changed is False
    payment.refresh_from_db()
    assert (payment.amount, payment.currency) == (5000, "EUR")


@pytest.mark.parametrize("final", ["succeeded", "failed", "canceled"])
def test_pending_payment_moves_to_a_final_status_and_signals_once(
    final, receive, django_capture_on_commit_callbacks
):
    payment = make_payment(status="pending")
    receivers = {
        "succeeded": receive(signals.payment_succeeded),
        "failed": receive(signals.payment_failed),
        "canceled": receive(signals.payment_canceled),
    }
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        updated, changed = services.apply_payment(
            {"id": payment.ledgepay_id, "status": final, "completed_at": "2024-01-15T10:32:15Z"}
        )
        assert receivers[final].calls == []  # Not before the commit.
    assert changed is True
    assert len(callbacks) == 1
    assert receivers[final].calls == [{"sender": Payment, "payment": updated, "event": None}]
    assert all(not r.calls for name, r in receivers.items() if name != final)
    payment.refresh_from_db()
    assert payment.status == final
    assert payment.completed_at is not None
    assert payment.completed_at.isoformat() == "2024-01-15T10:32:15+00:00"

    # The same news again changes nothing and fires nothing.
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        _, changed = services.apply_payment({"id": payment.ledgepay_id, "status": final})
    assert changed is False
    assert callbacks == []
    assert len(receivers[final].calls) == 1


@pytest.mark.parametrize(
    ("later", "level"),
    # Pending after a final status is older news overtaken, an everyday race: not a warning.
    [("pending", logging.INFO), ("failed", logging.WARNING), ("canceled", logging.WARNING)],
)
def test_final_status_never_changes(
    later, level, receive, django_capture_on_commit_callbacks, caplog
):
    caplog.set_level(logging.INFO, logger="django_ledgepay")
    payment = make_payment(status="succeeded")
    failed = receive(signals.payment_failed)
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        _, changed = services.apply_payment({"id": payment.ledgepay_id, "status": later})
    assert changed is False
    assert callbacks == []
    assert failed.calls == []
    payment.refresh_from_db()
    assert payment.status == "succeeded"
    said = f"LedgePay says {payment.ledgepay_id} is {later}, but it is already succeeded"
    assert [r.levelno for r in caplog.records if r.getMessage().startswith(said)] == [level]


def test_status_change_without_completed_at_records_when_it_was_seen():
    payment = make_payment(status="pending")
    services.apply_payment({"id": payment.ledgepay_id, "status": "failed"})
    payment.refresh_from_db()
    assert payment.completed_at is not None


def test_new_payment_needs_amount_and_currency():
    with pytest.raises(services.IncompleteDataError):
        services.apply_payment({"id": "pay_unknown", "status": "succeeded"})
    assert not Payment.objects.exists()


def test_new_payment_already_final_signals(receive, django_capture_on_commit_callbacks):
    succeeded = receive(signals.payment_succeeded)
    with django_capture_on_commit_callbacks(execute=True):
        payment, created = services.apply_payment(payment_data(status="succeeded"))
    assert created is True
    assert [call["payment"] for call in succeeded.calls] == [payment]


# sync_payment


def test_sync_payment_fetches_and_applies(api, receive, django_capture_on_commit_callbacks):
    payment = make_payment(status="pending", checkout_url="https://checkout.example/p")
    succeeded = receive(signals.payment_succeeded)
    data = payment_data(id=payment.ledgepay_id, status="succeeded")
    del data["checkout_url"]  # Retrieve may leave it out.
    api.get(f"{API}/payments/{payment.ledgepay_id}", json=data)
    with django_capture_on_commit_callbacks(execute=True):
        synced = services.sync_payment(payment)
    assert synced.status == "succeeded"
    assert synced.checkout_url == "https://checkout.example/p"
    assert len(succeeded.calls) == 1
    assert succeeded.calls[0]["event"] is None


def test_sync_payment_of_an_unknown_id_creates_it(api):
    api.get(f"{API}/payments/pay_remote", json=payment_data(id="pay_remote"))
    payment = services.sync_payment("pay_remote")
    assert payment.pk is not None
    assert Payment.objects.get().ledgepay_id == "pay_remote"


def test_sync_payment_not_found(api):
    api.get(f"{API}/payments/pay_gone", status=404, json={"error": {"message": "No such"}})
    with pytest.raises(NotFoundError):
        services.sync_payment("pay_gone")


# sync_payments: pagination by created_before


class ListServer:
    """A LedgePay list endpoint over a fixed set of payments, for ``responses``."""

    def __init__(self, payments: list[dict[str, Any]], *, inclusive: bool) -> None:
        self.payments = sorted(payments, key=lambda p: (p["created_at"], p["id"]), reverse=True)
        self.inclusive = inclusive
        self.queries: list[dict[str, str]] = []

    def __call__(self, request):
        from urllib.parse import parse_qsl, urlsplit

        query = dict(parse_qsl(urlsplit(request.url).query))
        self.queries.append(query)
        items = self.payments
        if "status" in query:
            items = [p for p in items if p["status"] == query["status"]]
        if "created_before" in query:
            before = query["created_before"]
            items = [
                p
                for p in items
                if p["created_at"] < before or (self.inclusive and p["created_at"] == before)
            ]
        if "created_after" in query:
            items = [p for p in items if p["created_at"] > query["created_after"]]
        limit = int(query.get("limit", 10))
        body = {"data": items[:limit], "has_more": len(items) > limit}
        return 200, {}, json.dumps(body)


def many_payments(count_by_second: dict[int, int]) -> list[dict[str, Any]]:
    payments = []
    for second, count in count_by_second.items():
        for _ in range(count):
            stamp = f"2024-01-15T10:{second // 60:02d}:{second % 60:02d}Z"
            payments.append(payment_data(id=next_id("pay"), created_at=stamp))
    return payments


@pytest.mark.parametrize("inclusive", [False, True])
def test_sync_payments_neither_loses_nor_repeats_shared_timestamps(api, inclusive):
    # 250 payments: page borders fall inside seconds that several payments share.
    payments = many_payments({10: 30, 11: 95, 12: 40, 13: 1, 14: 84})
    server = ListServer(payments, inclusive=inclusive)
    api.add_callback(responses.GET, f"{API}/payments", callback=server)

    result = services.sync_payments()

    assert result.created == len(payments) == 250
    assert result.updated == result.unchanged == result.skipped == 0
    assert Payment.objects.count() == 250
    assert set(Payment.objects.values_list("ledgepay_id", flat=True)) == {
        p["id"] for p in payments
    }
    assert all(query["limit"] == "100" for query in server.queries)
    assert result.pages == len(server.queries) < 10


def test_sync_payments_steps_past_a_second_with_more_than_a_page(api):
    payments = many_payments({20: 150, 19: 5})
    server = ListServer(payments, inclusive=True)
    api.add_callback(responses.GET, f"{API}/payments", callback=server)
    result = services.sync_payments()
    # The API cannot serve more than 100 payments of one second; the rest of the run goes on.
    assert result.created == 105
    assert Payment.objects.filter(created_at__second=19).count() == 5


def test_sync_payments_updates_and_counts(api, receive, django_capture_on_commit_callbacks):
    known = make_payment(status="pending", ledgepay_id="pay_known")
    same = make_payment(status="succeeded", ledgepay_id="pay_same", amount=5000)
    succeeded = receive(signals.payment_succeeded)
    remote = [
        payment_data(id="pay_known", status="succeeded", created_at="2024-01-15T10:30:02Z"),
        payment_data(
            id="pay_same",
            status="succeeded",
            description=same.description,
            created_at="2024-01-15T10:30:01Z",
        ),
        payment_data(id="pay_new", status="failed", created_at="2024-01-15T10:30:00Z"),
        {"id": "pay_broken", "created_at": "2024-01-15T10:29:00Z"},
    ]
    same.created_at = parse_time("2024-01-15T10:30:01Z")
    same.checkout_url = remote[1]["checkout_url"]
    same.save()
    api.get(f"{API}/payments", json={"data": remote, "has_more": False})

    with django_capture_on_commit_callbacks(execute=True):
        result = services.sync_payments(status=None)

    assert (result.created, result.updated, result.unchanged, result.skipped) == (1, 1, 1, 1)
    known.refresh_from_db()
    assert known.status == "succeeded"
    assert [call["payment"].ledgepay_id for call in succeeded.calls] == ["pay_known"]
    assert Payment.objects.get(ledgepay_id="pay_new").status == "failed"


def test_sync_of_a_final_payment_that_changed_otherwise_changes_and_signals_nothing(
    api, receive, django_capture_on_commit_callbacks
):
    # A final payment is settled: its row never changes again (0.2's sync rewrote its other
    # fields, where its webhooks did not; 0.3 has one rule for both).
    payment = make_payment(
        status="succeeded", description="Order #1", checkout_url="https://pay.example/a"
    )
    receivers = [receive(signal) for signal in services.PAYMENT_SIGNALS.values()]
    remote = payment_data(
        id=payment.ledgepay_id,
        status="succeeded",
        description="Order #1b",
        checkout_url="https://pay.example/b",
    )
    api.get(f"{API}/payments", json={"data": [remote], "has_more": False})
    api.get(f"{API}/payments/{payment.ledgepay_id}", json=remote)
    with django_capture_on_commit_callbacks(execute=True):
        assert services.sync_payments().unchanged == 1
        services.sync_payment(payment)
    payment.refresh_from_db()
    assert (payment.description, payment.checkout_url) == ("Order #1", "https://pay.example/a")
    assert all(r.calls == [] for r in receivers)


def test_payment_event_that_loses_the_race_signals_nothing(
    receive, django_capture_on_commit_callbacks
):
    # Between this event's read and its UPDATE, another caller moves the payment first.
    payment = make_payment(status="pending")
    succeeded, failed = receive(signals.payment_succeeded), receive(signals.payment_failed)
    table = Payment._meta.db_table
    raced: list[bool] = []

    def rival_first(execute: Any, sql: str, *args: Any) -> Any:
        if not raced and sql.startswith("UPDATE") and table in sql:
            raced.append(True)
            Payment.objects.filter(pk=payment.pk).update(status=Payment.Status.FAILED)
        return execute(sql, *args)

    data = {"id": payment.ledgepay_id, "amount": payment.amount, "currency": payment.currency}
    with django_capture_on_commit_callbacks(execute=True), connection.execute_wrapper(rival_first):
        moved, changed = services.apply_payment_event(data, status="succeeded")
    assert raced == [True]
    assert (moved.status, changed) == ("failed", False)
    assert succeeded.calls == [] and failed.calls == []  # The rival's own signal is its own.


@pytest.mark.parametrize("how", ["sync_payment", "sync_payments", "refund_payment"])
def test_signals_wait_for_the_commit_whatever_made_the_change(
    api, receive, django_capture_on_commit_callbacks, how
):
    payment = make_payment(status="pending" if how.startswith("sync") else "succeeded")
    remote = payment_data(id=payment.ledgepay_id, status="succeeded")
    api.get(f"{API}/payments/{payment.ledgepay_id}", json=remote)
    api.get(f"{API}/payments", json={"data": [remote], "has_more": False})
    api.post(f"{API}/refunds", json=refund_answer(payment, status="succeeded"), status=201)
    signal = signals.refund_succeeded if how == "refund_payment" else signals.payment_succeeded
    sent = receive(signal)
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        if how == "sync_payments":
            services.sync_payments()
        else:
            getattr(services, how)(payment)
        assert sent.calls == []  # Not before the transaction commits.
    assert callbacks  # refund_payment queues refund_created too.
    assert len(sent.calls) == 1


def test_sync_payments_passes_filters(api):
    api.get(f"{API}/payments", json=[])
    services.sync_payments(
        status="succeeded", created_after="2024-01-01T00:00:00+01:00", created_before=None
    )
    url = api.calls[0].request.url
    assert "status=succeeded" in url
    assert "created_after=2023-12-31T23%3A00%3A00Z" in url


def test_sync_payments_refuses_a_bad_status(api):
    with pytest.raises(InvalidRequestError):
        services.sync_payments(status="paid")
    assert len(api.calls) == 0


@pytest.mark.parametrize("size", [3, 50])
def test_sync_payments_writes_a_page_in_constant_queries(api, size, django_assert_num_queries):
    # Half the page is known and changes, half is new: one read, one insert, one update.
    payments = many_payments({1: size * 2})
    for data in payments[:size]:
        make_payment(ledgepay_id=data["id"], status="pending")
        data["status"] = "succeeded"
    api.get(f"{API}/payments", json={"data": payments, "has_more": False})
    # SAVEPOINT and RELEASE of the page's atomic block, plus the three statements and one
    # INSERT of the transitions of the payments that succeeded.
    with django_assert_num_queries(6):
        result = services.sync_payments()
    assert (result.created, result.updated) == (size, size)


# refund_payment


def refund_answer(payment, **overrides):
    return refund_data(payment.ledgepay_id, **{"amount": payment.amount, **overrides})


@pytest.mark.parametrize("status", ["pending", "failed", "canceled"])
def test_refund_refused_unless_succeeded(api, status):
    payment = make_payment(status=status)
    with pytest.raises(RefundError, match=status):
        services.refund_payment(payment)
    assert len(api.calls) == 0


@pytest.mark.parametrize("amount", [0, -1, 5001, True, 10.0])
def test_refund_refused_outside_the_refundable_amount(api, amount):
    payment = make_payment(amount=5000)
    with pytest.raises(RefundError):
        services.refund_payment(payment, amount=amount)
    assert len(api.calls) == 0


def test_refund_refused_with_an_unknown_reason(api):
    with pytest.raises(RefundError, match="reason"):
        services.refund_payment(make_payment(), reason="because")
    assert len(api.calls) == 0


def test_refund_the_rest(api, receive, django_capture_on_commit_callbacks):
    payment = make_payment(amount=5000)
    make_refund(payment, amount=1000)
    make_refund(payment, amount=700, status=Refund.Status.FAILED)  # Does not count.
    created = receive(signals.refund_created)
    api.post(f"{API}/refunds", json=refund_answer(payment, amount=4000), status=201)

    with django_capture_on_commit_callbacks(execute=True):
        refund = services.refund_payment(payment.ledgepay_id, reason="duplicate")

    sent = json.loads(api.calls[0].request.body)
    assert sent == {"payment_id": payment.ledgepay_id, "amount": 4000, "reason": "duplicate"}
    assert refund.amount == 4000
    assert refund.payment == payment
    assert payment.amount_refunded == 5000
    assert payment.refundable_amount == 0
    assert [call["refund"] for call in created.calls] == [refund]
    assert created.calls[0]["payment"] == payment


def test_refund_twice_refunds_once(api):
    payment = make_payment(amount=5000)
    api.post(f"{API}/refunds", json=refund_answer(payment), status=201)
    services.refund_payment(payment)
    with pytest.raises(RefundError, match="already refunded"):
        services.refund_payment(payment)
    assert len(api.calls) == 1


def test_refund_idempotency_key_survives_a_lost_answer(api):
    # The first call's answer is lost after LedgePay acted; calling again must reuse the key.
    payment = make_payment(amount=5000)
    api.post(f"{API}/refunds", body=requests.ConnectionError("reset"))
    with pytest.raises(APIConnectionError):
        services.refund_payment(payment, amount=1000)
    api.replace(responses.POST, f"{API}/refunds", json=refund_answer(payment, amount=1000))
    services.refund_payment(payment, amount=1000)
    keys = {call.request.headers["Idempotency-Key"] for call in api.calls}
    assert len(keys) == 1
    assert payment.refunds.count() == 1


def test_refund_answer_fills_in_nothing_it_holds_ill_typed(api):
    payment = make_payment(amount=5000)
    answer = {**refund_answer(payment, amount=1000), "amount": "1000", "currency": None}
    api.post(f"{API}/refunds", json=answer, status=201)
    refund = services.refund_payment(payment, amount=1000)
    refund.refresh_from_db()
    assert (refund.amount, refund.currency) == (1000, payment.currency)


def test_refund_with_a_key_of_the_callers_refunds_once_whatever_arrived(
    api, client, django_capture_on_commit_callbacks
):
    # The answer is lost after LedgePay acted, and the refund's webhook arrives before the
    # caller retries: the derived key would now differ, the caller's own key does not.
    payment = make_payment(amount=5000)
    api.post(f"{API}/refunds", body=requests.ConnectionError("reset"))
    with pytest.raises(APIConnectionError):
        services.refund_payment(payment, amount=1000, idempotency_key="return-17")
    made = refund_answer(payment, amount=1000)
    with django_capture_on_commit_callbacks(execute=True):
        services.apply_refund(made)  # What the refund.created webhook does.
    api.replace(responses.POST, f"{API}/refunds", json=made)
    refund = services.refund_payment(payment, amount=1000, idempotency_key="return-17")
    keys = {call.request.headers["Idempotency-Key"] for call in api.calls}
    assert keys == {"return-17"}
    assert refund.ledgepay_id == made["id"]
    assert payment.refunds.count() == 1
    assert payment.amount_refunded == 1000


@pytest.mark.parametrize("key", ["", "k" * 256, "a\tb", 17])
def test_refund_refuses_a_bad_key_before_any_call(api, key):
    with pytest.raises(InvalidRequestError, match="idempotency_key"):
        services.refund_payment(make_payment(), idempotency_key=key)
    assert len(api.calls) == 0


def test_refund_keys_differ_for_two_real_refunds(api):
    payment = make_payment(amount=5000)
    api.post(f"{API}/refunds", json=refund_answer(payment, amount=1000))
    services.refund_payment(payment, amount=1000)
    api.replace(responses.POST, f"{API}/refunds", json=refund_answer(payment, amount=1000))
    services.refund_payment(payment, amount=1000)
    keys = [call.request.headers["Idempotency-Key"] for call in api.calls]
    assert len(set(keys)) == 2


def test_refund_of_a_payment_unknown_locally_syncs_it_first(api):
    api.get(f"{API}/payments/pay_far", json=payment_data(id="pay_far", status="succeeded"))
    api.post(f"{API}/refunds", json=refund_data("pay_far", amount=5000))
    refund = services.refund_payment("pay_far")
    assert refund.payment.ledgepay_id == "pay_far"


# apply_refund


def test_refund_succeeded_before_created_ends_with_one_refund(
    receive, django_capture_on_commit_callbacks
):
    payment = make_payment()
    created, succeeded = receive(signals.refund_created), receive(signals.refund_succeeded)
    data = refund_data(payment.ledgepay_id)
    with django_capture_on_commit_callbacks(execute=True):
        services.apply_refund(data, status="succeeded")
    with django_capture_on_commit_callbacks(execute=True):
        services.apply_refund(data, status="pending")
    with django_capture_on_commit_callbacks(execute=True):
        services.apply_refund(data, status="succeeded")
    refund = Refund.objects.get()
    assert refund.status == "succeeded"
    order = [c["refund"].pk for c in created.calls] + [c["refund"].pk for c in succeeded.calls]
    assert order == [refund.pk, refund.pk]


def test_refund_signals_are_sent_in_order(django_capture_on_commit_callbacks):
    payment = make_payment()
    seen: list[str] = []

    def on_created(sender, **kwargs):
        seen.append("created")

    def on_succeeded(sender, **kwargs):
        seen.append("succeeded")

    # Connected in the opposite order, to show the order comes from the sender.
    signals.refund_succeeded.connect(on_succeeded)
    signals.refund_created.connect(on_created)
    try:
        with django_capture_on_commit_callbacks(execute=True):
            services.apply_refund(refund_data(payment.ledgepay_id, status="succeeded"))
    finally:
        signals.refund_succeeded.disconnect(on_succeeded)
        signals.refund_created.disconnect(on_created)
    assert seen == ["created", "succeeded"]


def test_failed_refund_frees_the_amount(receive, django_capture_on_commit_callbacks):
    payment = make_payment(amount=5000)
    refund = make_refund(payment, amount=5000, status="pending")
    failed = receive(signals.refund_failed)
    with django_capture_on_commit_callbacks(execute=True):
        services.apply_refund({"id": refund.ledgepay_id}, status="failed")
    assert payment.refundable_amount == 5000
    assert len(failed.calls) == 1


def test_refund_of_an_unknown_payment_fetches_it(api):
    api.get(f"{API}/payments/pay_x", json=payment_data(id="pay_x", status="succeeded"))
    refund, _ = services.apply_refund(refund_data("pay_x"))
    assert refund.payment.ledgepay_id == "pay_x"


def test_new_refund_without_amount_is_incomplete():
    payment = make_payment()
    with pytest.raises(services.IncompleteDataError):
        services.apply_refund({"id": "re_x", "payment_id": payment.ledgepay_id})


# Concurrency: on PostgreSQL, and on SQLite in IMMEDIATE mode where the test allows


requires_postgres = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="row locks need PostgreSQL"
)


def run_in_threads(target, count):
    errors: list[BaseException] = []
    results: list[object] = []
    barrier = threading.Barrier(count)

    def run():
        from django.db import connections

        try:
            barrier.wait()
            results.append(target())
        except BaseException as err:
            errors.append(err)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return results, errors


@concurrent_writers
@pytest.mark.django_db(transaction=True)
def test_two_clicks_refund_once_under_the_row_lock(api):
    payment = make_payment(amount=5000)

    def slow_refund(request):
        time.sleep(0.3)  # The second click arrives while LedgePay is working.
        return 201, {}, json.dumps(refund_answer(payment, id=next_id("re")))

    api.add_callback(responses.POST, f"{API}/refunds", callback=slow_refund)
    results, errors = run_in_threads(lambda: services.refund_payment(payment), 2)
    assert len(api.calls) == 1
    assert len(results) == 1
    assert [type(err) for err in errors] == [RefundError]
    assert Refund.objects.filter(payment=payment).count() == 1


@requires_postgres
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("level", ["REPEATABLE_READ", "SERIALIZABLE"])
def test_two_clicks_refund_once_at_stricter_isolation_levels(api, monkeypatch, level):
    # There the second click's snapshot predates the first refund: the lock alone would let
    # it read nothing refunded. The first refund writes the payment's row, so it cannot.
    import psycopg

    database = connections.settings["default"]
    isolation = getattr(psycopg.IsolationLevel, level)
    monkeypatch.setitem(
        database, "OPTIONS", {**database.get("OPTIONS", {}), "isolation_level": isolation}
    )
    payment = make_payment(amount=5000)

    def slow_refund(request):
        time.sleep(0.3)
        return 201, {}, json.dumps(refund_answer(payment, id=next_id("re")))

    api.add_callback(responses.POST, f"{API}/refunds", callback=slow_refund)
    results, errors = run_in_threads(lambda: services.refund_payment(payment), 2)
    assert len(api.calls) == 1
    assert len(results) == 1
    assert [type(err) for err in errors] in ([RefundError], [OperationalError])
    assert Refund.objects.filter(payment=payment).count() == 1


@pytest.mark.django_db(transaction=True)
def test_expected_refunded_refuses_a_double_submit_of_a_partial_refund(api):
    payment = make_payment(amount=5000)
    api.post(f"{API}/refunds", json=refund_answer(payment, amount=2000), status=201)
    shown = payment.amount_refunded  # What the form showed when it was drawn.
    services.refund_payment(payment, amount=2000, expected_refunded=shown)
    with pytest.raises(RefundsChangedError, match="2000 refunded now, 0 expected") as excinfo:
        services.refund_payment(payment, amount=2000, expected_refunded=shown)
    assert (excinfo.value.expected, excinfo.value.refunded) == (0, 2000)
    assert len(api.calls) == 1


@concurrent_writers
@pytest.mark.django_db(transaction=True)
def test_concurrent_updates_signal_once(receive):
    payment = make_payment(status="pending")
    succeeded = receive(signals.payment_succeeded)
    data = {"id": payment.ledgepay_id, "status": "succeeded"}
    results, errors = run_in_threads(lambda: services.apply_payment(data), 6)
    assert errors == []
    assert sum(changed for _, changed in results) == 1
    assert len(succeeded.calls) == 1


@concurrent_writers
@pytest.mark.django_db(transaction=True)
def test_concurrent_first_sight_creates_one_row(receive):
    succeeded = receive(signals.payment_succeeded)
    data = payment_data(status="succeeded")
    results, errors = run_in_threads(lambda: services.apply_payment(data), 6)
    assert errors == []
    assert Payment.objects.filter(ledgepay_id=data["id"]).count() == 1
    assert len(succeeded.calls) == 1


def test_sync_payments_fails_when_a_page_has_no_time_to_page_by(api):
    # More to list and nothing to page by: an error, never a sync silently partial; what
    # the page held is mirrored all the same.
    page = [payment_data(created_at=None), payment_data(created_at=None)]
    api.get(f"{API}/payments", json={"data": page, "has_more": True})
    with pytest.raises(APIError, match="none of its payments has a created_at"):
        services.sync_payments()
    assert Payment.objects.count() == 2
    assert len(api.calls) == 1


# Edges


def test_times_without_a_zone_are_utc_and_bad_times_are_skipped():
    payment, _ = services.apply_payment(payment_data(created_at="2024-01-15T10:30:00"))
    assert payment.created_at is not None
    assert payment.created_at.isoformat() == "2024-01-15T10:30:00+00:00"
    payment, _ = services.apply_payment(payment_data(created_at="2024-13-45T99:00:00Z"))
    assert payment.created_at is None


@pytest.mark.parametrize(
    "moment",
    [
        "0001-01-01T00:00:00+01:00",  # Out of range once in UTC.
        "9999-12-31T23:59:59-01:00",
        "0001-01-01T00:00:00Z",  # In range, but not readable back in every zone.
        "9999-12-31T23:59:59Z",
    ],
)
def test_times_at_the_ends_of_the_calendar_are_skipped(moment):
    data = payment_data(created_at=moment, completed_at=moment, status="succeeded")
    payment, _ = services.apply_payment(data)
    payment.refresh_from_db()
    assert (payment.status, payment.created_at) == ("succeeded", None)
    assert payment.completed_at is not None and payment.completed_at.year > 2000


def test_sync_payments_refuses_a_time_out_of_range(api):
    moment = datetime.datetime.min.replace(tzinfo=datetime.timezone(datetime.timedelta(hours=1)))
    with pytest.raises(InvalidRequestError, match="created_after is out of range"):
        services.sync_payments(created_after=moment)
    assert len(api.calls) == 0


@pytest.mark.parametrize("data", [{}, {"id": ""}, {"id": 7}])
def test_objects_without_an_id_are_refused(data):
    with pytest.raises(services.IncompleteDataError):
        services.apply_payment(data)
    with pytest.raises(services.IncompleteDataError):
        services.apply_refund(data)
    with pytest.raises(services.IncompleteDataError):
        services.apply_payment_event(data, status="succeeded")


def test_new_refund_naming_no_payment_is_refused():
    with pytest.raises(services.IncompleteDataError, match="names no payment"):
        services.apply_refund({"id": "re_lost", "amount": 100})


def test_sync_payments_refuses_a_bad_time(api):
    with pytest.raises(InvalidRequestError, match="created_before"):
        services.sync_payments(created_before="last tuesday")
    assert len(api.calls) == 0


def test_sync_payments_skips_items_without_an_id(api):
    page = [payment_data(), {"amount": 5, "created_at": "2024-01-15T10:30:00Z"}]
    api.get(f"{API}/payments", json={"data": page, "has_more": False})
    result = services.sync_payments()
    assert (result.created, result.skipped) == (1, 1)


def test_refund_answer_without_an_id_is_an_api_error(api):
    payment = make_payment()
    api.post(f"{API}/refunds", json={"status": "pending"}, status=201)
    with pytest.raises(APIError, match="no id"):
        services.refund_payment(payment)
    assert not Refund.objects.exists()


def test_refund_of_a_payment_that_vanished_is_refused(api):
    payment = make_payment()
    Payment.objects.filter(pk=payment.pk).delete()
    with pytest.raises(RefundError, match="There is no payment"):
        services.refund_payment(payment)
    assert len(api.calls) == 0


def insert_from_another_connection(data):
    """Record ``data`` through a second connection, as another process would."""
    results, errors = run_in_threads(lambda: services.apply_payment(data), 1)
    assert errors == []
    assert len(results) == 1


@requires_postgres
@pytest.mark.django_db(transaction=True)
def test_a_page_inserted_meanwhile_by_another_process_is_read_again(api, monkeypatch):
    data = payment_data(status="succeeded")
    api.get(f"{API}/payments", json={"data": [data], "has_more": False})
    real_bulk_create = Payment.objects.bulk_create
    raced: list[bool] = []

    def racing_bulk_create(objs, *args, **kwargs):
        if not raced:
            raced.append(True)
            insert_from_another_connection(data)
        return real_bulk_create(objs, *args, **kwargs)

    monkeypatch.setattr(Payment.objects, "bulk_create", racing_bulk_create)
    result = services.sync_payments()
    assert raced == [True]
    assert Payment.objects.filter(ledgepay_id=data["id"]).count() == 1
    assert (result.created, result.unchanged) == (0, 1)


@requires_postgres
@pytest.mark.django_db(transaction=True)
def test_a_payment_inserted_meanwhile_is_merged_not_duplicated(monkeypatch, receive):
    paid = receive(signals.payment_succeeded)
    data = payment_data(status="pending")
    real_create = Payment.objects.create

    raced: list[bool] = []

    def racing_create(**fields):
        if not raced:  # Another caller wins the insert.
            raced.append(True)
            insert_from_another_connection(data)
        return real_create(**fields)

    monkeypatch.setattr(Payment.objects, "create", racing_create)
    payment, changed = services.apply_payment({**data, "status": "succeeded"})
    assert raced == [True]
    assert Payment.objects.count() == 1
    assert (payment.status, changed) == ("succeeded", True)
    assert len(paid.calls) == 1


def test_values_that_do_not_fit_their_column_are_skipped(api):
    data = payment_data(
        amount=2**63,
        checkout_url="https://checkout.example/" + "x" * 3000,
        customer={"email": "a" * 300 + "@example.com", "name": "Ann"},
    )
    api.get(f"{API}/payments", json={"data": [data], "has_more": False})
    result = services.sync_payments()
    assert result.skipped == 1  # No amount it can hold: not recorded.
    data["amount"] = 5000
    payment, _ = services.apply_payment(data)
    assert (payment.checkout_url, payment.customer_email) == ("", "")
    assert payment.customer_name == "Ann"


@pytest.mark.django_db(transaction=True)
def test_a_payment_first_seen_commits_with_its_transition(monkeypatch):
    # Outside any transaction of the caller's (a task worker): the payment and the record
    # of its change are one transaction, so a failure writing the one leaves neither.
    from django_ledgepay import transitions

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("the transition's INSERT failed")

    monkeypatch.setattr(transitions, "record", broken)
    with pytest.raises(RuntimeError):
        services.apply_payment(
            {"id": "pay_first", "status": "succeeded", "amount": 700, "currency": "EUR"}
        )
    assert not Payment.objects.filter(ledgepay_id="pay_first").exists()
