"""The look-up and the one statement on PostgreSQL: what each delivery costs, the same rows
as the general path they mirror, and what happens when the mirror moved after the look-up."""

from __future__ import annotations

import datetime
import json
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import requests

from django.db import connection, connections, transaction
from django.test.utils import CaptureQueriesContext

from django_ledgepay import intake, services, signals, webhooks
from django_ledgepay.mirror import sql as statements
from django_ledgepay.models import Payment, Refund, Transition, WebhookEvent
from django_ledgepay.testing import signed_webhook
from tests.conftest import API, lock_waiters
from tests.factories import make_payment, make_refund, payment_data

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("without_shop_receivers"),
]

URL = "/ledgepay/webhook/"


def post(client: Any, payload: dict[str, Any]) -> Any:
    body, headers = signed_webhook(payload)
    return client.post(URL, body, content_type="application/json", headers=headers)


def paid(payment_id: str, **data: Any) -> dict[str, Any]:
    return {"event": "payment.succeeded", "data": {"id": payment_id, **data}}


def refund_event(kind: str, refund_id: str, payment_id: str, **data: Any) -> dict[str, Any]:
    return {"event": kind, "data": {"id": refund_id, "payment_id": payment_id, **data}}


def happened(payload: dict[str, Any], at: int) -> dict[str, Any]:
    """``payload`` with the event's ``timestamp`` at ``at`` (Unix seconds)."""
    moment = datetime.datetime.fromtimestamp(at, datetime.timezone.utc)
    return {**payload, "timestamp": services.iso_z(moment)}


# Scenarios: the state before, and the deliveries (each also delivered twice).


def pending_paid() -> list[dict[str, Any]]:
    make_payment(ledgepay_id="pay_a", status="pending", metadata={"order": "1"})
    data = {"amount": 5000, "currency": "EUR", "metadata": {"order": "1", "x": "y"}}
    return [paid("pay_a", **data, completed_at="2024-01-15T10:32:15Z")]


def final_news() -> list[dict[str, Any]]:
    make_payment(ledgepay_id="pay_a", status="succeeded")
    failed = {"event": "payment.failed", "data": {"id": "pay_a", "amount": 5000}}
    return [paid("pay_a", amount=5000, currency="EUR", note=1), failed]


def never_seen() -> list[dict[str, Any]]:
    return [paid("pay_new", amount=1234, currency="JPY", description="Teapot")]


def never_seen_without_facts() -> list[dict[str, Any]]:
    # Not enough to record it: both paths leave it to a fetch (which fails: no API here).
    return []


def contradicting() -> list[dict[str, Any]]:
    make_payment(ledgepay_id="pay_a", status="succeeded", amount=5000)
    return [
        {"event": "payment.canceled", "data": {"id": "pay_a", "amount": 5000, "currency": "USD"}}
    ]


def refund_created() -> list[dict[str, Any]]:
    make_payment(ledgepay_id="pay_a", status="succeeded", amount=5000)
    return [
        refund_event("refund.created", "re_1", "pay_a", amount=2000, status="pending"),
        refund_event("refund.succeeded", "re_1", "pay_a", amount=2000, currency="EUR"),
        refund_event("refund.created", "re_2", "pay_a", amount=1000, reason="duplicate"),
    ]


def refund_first_seen_final() -> list[dict[str, Any]]:
    make_payment(ledgepay_id="pay_a", status="succeeded", amount=5000)
    return [refund_event("refund.succeeded", "re_1", "pay_a", amount=3000)]


def refund_known() -> list[dict[str, Any]]:
    payment = make_payment(ledgepay_id="pay_a", status="succeeded", amount=5000)
    make_refund(payment, ledgepay_id="re_1", amount=2000, status="pending")
    make_refund(payment, ledgepay_id="re_2", amount=1000, status="succeeded")
    return [
        refund_event("refund.created", "re_1", "pay_a", amount=2000, status="pending"),
        refund_event("refund.succeeded", "re_1", "pay_a", amount=2000),
        refund_event("refund.failed", "re_2", "pay_a"),
        refund_event("refund.succeeded", "re_2", "pay_a", amount=999),
        refund_event("refund.created", "re_2", "pay_a", reason="fraudulent"),
    ]


def refund_for_a_payment_never_seen() -> list[dict[str, Any]]:
    # The payment is fetched (FETCHED), recorded with its transition, then the refund.
    return [
        refund_event("refund.created", "re_1", "pay_far", amount=2000, status="pending"),
        refund_event("refund.succeeded", "re_2", "pay_pending", amount=100, currency="USD"),
    ]


#: What LedgePay answers for the payments the scenarios' events name but the mirror lacks.
FETCHED = {
    "pay_far": payment_data(id="pay_far", status="succeeded", amount=5000, currency="EUR"),
    "pay_pending": payment_data(id="pay_pending", amount=700, currency="USD"),
}


SCENARIOS: dict[str, Callable[[], list[dict[str, Any]]]] = {
    "pending_paid": pending_paid,
    "final_news": final_news,
    "never_seen": never_seen,
    "contradicting": contradicting,
    "refund_created": refund_created,
    "refund_first_seen_final": refund_first_seen_final,
    "refund_known": refund_known,
    "refund_for_a_payment_never_seen": refund_for_a_payment_never_seen,
}


def rows() -> dict[str, Any]:
    """The mirror, the event log and the transitions, without ids and clocks."""
    return {
        "payments": sorted(
            Payment.objects.values_list(
                "ledgepay_id", "status", "amount", "currency", "description", "metadata"
            )
        ),
        "completed": sorted(
            (p.ledgepay_id, p.completed_at is not None) for p in Payment.objects.all()
        ),
        "refunds": sorted(
            Refund.objects.values_list(
                "ledgepay_id", "payment__ledgepay_id", "amount", "currency", "status", "reason"
            )
        ),
        "events": sorted(
            (e.body_sha256, e.event_type, e.object_id, e.status, e.error, e.attempts)
            for e in WebhookEvent.objects.all()
        ),
        "transitions": sorted(
            (
                t.signal,
                t.payment.ledgepay_id,
                t.refund.ledgepay_id if t.refund else None,
                t.source,
                t.event.body_sha256 if t.event else None,
                t.delivered_at is not None,
            )
            for t in Transition.objects.select_related("payment", "refund", "event")
        ),
    }


def run(client: Any, scenario: str, *, late: bool = False) -> tuple[dict[str, Any], list[int]]:
    """The rows and answers the scenario's deliveries leave; ``late``: each event happened
    an hour before it is signed (a retry, looked up first)."""
    codes = []
    for payload in SCENARIOS[scenario]():
        if late:
            payload = happened(payload, int(time.time()) - 3600)
        codes += [post(client, payload).status_code for _ in range(2)]
    return rows(), codes


def reset() -> None:
    Transition.objects.all().delete()
    WebhookEvent.objects.all().delete()
    Refund.objects.all().delete()
    Payment.objects.all().delete()


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_the_statement_leaves_the_rows_of_the_general_path(client, monkeypatch, api, scenario):
    for payment_id, answer in FETCHED.items():
        api.get(f"{API}/payments/{payment_id}", json=answer)
    fast, fast_codes = run(client, scenario)
    reset()
    with monkeypatch.context() as patched:
        patched.setattr(intake, "settle_in_one_statement", lambda body, **kw: None)
        general, general_codes = run(client, scenario)
    assert fast == general
    assert fast_codes == general_codes


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_a_retry_looked_up_first_leaves_the_rows_of_the_general_path(client, api, scenario):
    for payment_id, answer in FETCHED.items():
        api.get(f"{API}/payments/{payment_id}", json=answer)
    late, late_codes = run(client, scenario, late=True)
    reset()
    prompt, prompt_codes = run(client, scenario)
    # The same rows as a prompt delivery's, which match the general path's (above), but
    # for the events' bodies, which hold their timestamps.
    for rows_left in (late, prompt):
        rows_left["events"] = sorted(event[1:] for event in rows_left["events"])
        rows_left["transitions"] = sorted(t[:4] + t[5:] for t in rows_left["transitions"])
    assert late == prompt
    assert late_codes == prompt_codes


# What each delivery costs


def count(
    django_assert_num_queries: Any, client: Any, payload: dict[str, Any], expected: int
) -> Any:
    body, headers = signed_webhook(payload)
    with django_assert_num_queries(expected):
        response = client.post(URL, body, content_type="application/json", headers=headers)
    assert response.status_code == 200
    return response, body, headers


def on(postgresql: int, elsewhere: int) -> int:
    return postgresql if connection.vendor == "postgresql" else elsewhere


def test_a_known_pending_payment_and_its_redelivery(client, django_assert_num_queries):
    make_payment(ledgepay_id="pay_a", status="pending")
    payload = paid("pay_a", amount=5000, currency="EUR")
    response, body, headers = count(django_assert_num_queries, client, payload, on(1, 8))
    assert response.json() == {"detail": "processed"}
    with django_assert_num_queries(1):  # the look-up alone
        again = client.post(URL, body, content_type="application/json", headers=headers)
    assert again.json() == {"detail": "duplicate"}


def test_a_new_body_for_a_final_payment(client, django_assert_num_queries):
    make_payment(ledgepay_id="pay_a", status="succeeded")
    response, *_ = count(django_assert_num_queries, client, paid("pay_a", amount=5000, retry=1), 2)
    assert response.json() == {"detail": "processed"}
    ignored, *_ = count(
        django_assert_num_queries,
        client,
        {"event": "payment.failed", "data": {"id": "pay_a"}},
        2,
    )
    assert ignored.json() == {"detail": "ignored"}


def test_a_payment_never_seen_with_its_amount_and_currency(client, django_assert_num_queries):
    response, *_ = count(
        django_assert_num_queries, client, paid("pay_new", amount=900, currency="EUR"), on(2, 8)
    )
    assert response.json() == {"detail": "processed"}
    assert Payment.objects.get().status == "succeeded"
    assert Transition.objects.get().signal == "payment_succeeded"


def test_refund_created_and_succeeded_for_a_known_payment(client, django_assert_num_queries):
    make_payment(ledgepay_id="pay_a", status="succeeded", amount=5000)
    created = refund_event("refund.created", "re_1", "pay_a", amount=2000)
    # Elsewhere the general path; it sums the payment's refunds under its lock (the bound).
    response, *_ = count(django_assert_num_queries, client, created, on(2, 17))
    assert response.json() == {"detail": "processed"}
    succeeded = refund_event("refund.succeeded", "re_1", "pay_a", amount=2000)
    response, *_ = count(django_assert_num_queries, client, succeeded, on(2, 10))
    assert Refund.objects.get().status == "succeeded"
    assert list(Transition.objects.values_list("signal", flat=True)) == [
        "refund_created",
        "refund_succeeded",
    ]


# A retry, signed well after its event: looked up first, with the plain SELECT.

postgresql_only = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="the look-up's own statement"
)


def deliver(client: Any, body: bytes, signed_at: int) -> tuple[Any, list[str]]:
    """The answer to ``body`` signed at ``signed_at``, and the first word of each query."""
    _, headers = signed_webhook(body, timestamp=signed_at)
    with CaptureQueriesContext(connection) as queries:
        response = client.post(URL, body, content_type="application/json", headers=headers)
    return response.json(), [query["sql"].split(None, 1)[0] for query in queries]


@postgresql_only
def test_a_retry_of_an_applied_body_is_answered_by_the_plain_look_up(client):
    make_payment(ledgepay_id="pay_a", status="pending")
    now = int(time.time())
    body = json.dumps(happened(paid("pay_a", amount=5000, currency="EUR"), now - 60)).encode()
    # Its first attempt, signed as the event happened: the sale in one statement.
    assert deliver(client, body, now - 60) == ({"detail": "processed"}, ["WITH"])
    # LedgePay's retries: one signed soon after (the move's statement answers it), one a
    # minute later (the look-up alone).
    assert deliver(client, body, now - 59) == ({"detail": "duplicate"}, ["WITH"])
    assert deliver(client, body, now) == ({"detail": "duplicate"}, ["SELECT"])
    assert list(Transition.objects.values_list("signal", flat=True)) == ["payment_succeeded"]


@postgresql_only
@pytest.mark.parametrize(
    ("status", "answer", "statements_run"),
    [
        # A pending payment: the look-up, then the move's statement, which repeats it.
        ("pending", "processed", ["SELECT", "WITH"]),
        # A final payment: the look-up, then the event alone.
        ("succeeded", "processed", ["SELECT", "INSERT"]),
        ("failed", "ignored", ["SELECT", "INSERT"]),
        # A payment never seen: the look-up, then its three INSERTs.
        (None, "processed", ["SELECT", "WITH"]),
    ],
)
def test_a_first_delivery_signed_late_is_applied_in_two_statements(
    client, receive, status, answer, statements_run
):
    if status is not None:
        make_payment(ledgepay_id="pay_a", status=status, amount=5000)
    sent = receive(signals.payment_succeeded)
    now = int(time.time())
    payload = happened(paid("pay_a", amount=5000, currency="EUR"), now - 3600)
    moved = status in {"pending", None}
    # After the change, the receiver's delivery: the transition read with its receiver's
    # claim (one statement), then its success recorded in the receiver's transaction.
    delivered = ["WITH", "BEGIN", "WITH", "COMMIT"] if moved else []
    assert deliver(client, json.dumps(payload).encode(), now) == (
        {"detail": answer},
        statements_run + delivered,
    )
    assert Payment.objects.get().status == ("succeeded" if moved else status)
    assert len(sent.calls) == int(moved)
    assert Transition.objects.count() == int(moved)
    assert WebhookEvent.objects.get().status == answer


@postgresql_only
def test_a_late_delivery_whose_payment_a_rival_moves_after_the_look_up(client, receive):
    """The look-up finds the payment pending; a rival moves it before the move's statement,
    which then finds it final: this body is stored with its own outcome, the change made
    once."""
    payment = make_payment(ledgepay_id="pay_a", status="pending", amount=5000)
    sent = receive(signals.payment_succeeded)
    look_up = statements.look_up

    def then_the_rival(*args: Any) -> Any:
        found = look_up(*args)
        Payment.objects.filter(pk=payment.pk).update(status="failed")
        return found

    now = int(time.time())
    body = json.dumps(happened(paid("pay_a", amount=5000, currency="EUR"), now - 120)).encode()
    with pytest.MonkeyPatch.context() as patched:
        patched.setattr(statements, "look_up", then_the_rival)
        answer, run = deliver(client, body, now)
    # The look-up, the rival's UPDATE, the move's statement (nothing moved), the event alone.
    assert (answer, run) == ({"detail": "ignored"}, ["SELECT", "UPDATE", "WITH", "INSERT"])
    assert Payment.objects.get().status == "failed"
    assert sent.calls == []
    assert not Transition.objects.exists()


def test_signed_late_reads_the_event_timestamp():
    def late(stamp: Any, signed_at: float | None = 1_700_000_000) -> bool:
        return statements.signed_late({"timestamp": stamp}, signed_at)

    at = 1_700_000_000 - statements.LATE_AFTER
    moment = datetime.datetime.fromtimestamp(at, datetime.timezone.utc)
    assert late(services.iso_z(moment))
    assert not late(services.iso_z(moment + datetime.timedelta(seconds=1)))
    # No time zone: UTC.
    assert late(moment.replace(tzinfo=None).isoformat())
    assert not late((moment + datetime.timedelta(seconds=1)).replace(tzinfo=None).isoformat())
    # Another zone's clock, the same moment.
    assert late(moment.astimezone(datetime.timezone(datetime.timedelta(hours=5))).isoformat())
    # Nothing to tell by: a first delivery, the move's statement first.
    for unreadable in (None, 1_700_000_000, "", "yesterday", "2024-13-45T10:00:00Z"):
        assert not late(unreadable)
    assert not late(services.iso_z(moment), signed_at=None)
    assert not statements.signed_late({}, 1_700_000_000)


# The mirror moved between the look-up and the statement: the statement changes nothing, and
# the general path decides, as for any case the statement cannot.


def stale(monkeypatch: Any, payment: Any) -> None:
    """The look-up reports the payment as it was (``payment``), not as it is."""
    found = statements.found

    def as_it_was(row: tuple[Any, ...], digest: str) -> Any:
        stored, _ = found(row, digest)
        return stored, payment

    monkeypatch.setattr(statements, "found", as_it_was)


def test_a_payment_a_rival_moved_after_the_look_up(client, monkeypatch):
    payment = make_payment(ledgepay_id="pay_a", status="pending", amount=5000)
    assert post(client, paid("pay_a", amount=5000)).json() == {"detail": "processed"}
    stale(monkeypatch, statements.KnownPayment(payment.pk, "pending", 5000, "EUR"))
    # The rival's change is not made twice; this body is stored with its own outcome.
    assert post(client, paid("pay_a", amount=5000, retry=1)).json() == {"detail": "processed"}
    failed = {"event": "payment.failed", "data": {"id": "pay_a"}}
    assert post(client, failed).json() == {"detail": "ignored"}
    assert list(Transition.objects.values_list("signal", flat=True)) == ["payment_succeeded"]
    assert WebhookEvent.objects.count() == 3
    assert Payment.objects.get().status == "succeeded"


def test_a_payment_a_rival_recorded_after_the_look_up(client, monkeypatch):
    unseen_statement = statements._unseen_payment_statement

    def after_the_rival(*args: Any) -> Any:
        make_payment(ledgepay_id="pay_a", status="pending", amount=5000)
        return unseen_statement(*args)

    # The look-up finds no payment; a rival records it before the INSERT, which yields.
    monkeypatch.setattr(statements, "_unseen_payment_statement", after_the_rival)
    assert post(client, paid("pay_a", amount=5000, currency="EUR")).json() == {
        "detail": "processed"
    }
    assert Payment.objects.get().status == "succeeded"
    assert list(Transition.objects.values_list("signal", flat=True)) == ["payment_succeeded"]


def test_a_refund_a_rival_moved_after_the_look_up(client, monkeypatch):
    payment = make_payment(ledgepay_id="pay_a", status="succeeded", amount=5000)
    refund = make_refund(payment, ledgepay_id="re_1", amount=2000, status="pending")
    succeeded = refund_event("refund.succeeded", "re_1", "pay_a", amount=2000)
    assert post(client, succeeded).json() == {"detail": "processed"}
    look_up = statements.look_up
    as_it_was = statements.KnownRefund(
        refund.pk, "pending", payment.pk, 2000, "EUR", refund.reason, refund.created_at
    )
    monkeypatch.setattr(statements, "look_up", lambda *args: (*look_up(*args)[:2], as_it_was))
    failed = refund_event("refund.failed", "re_1", "pay_a", amount=2000)
    # Not moved twice: the general path finds it succeeded, and the news contradicts that.
    assert post(client, failed).json() == {"detail": "ignored"}
    assert Refund.objects.get().status == "succeeded"
    assert list(Transition.objects.values_list("signal", flat=True)) == ["refund_succeeded"]


def test_a_refund_whose_payment_cannot_be_fetched_is_kept_failed(client, api, settings):
    settings.LEDGEPAY_MAX_RETRIES = 0
    api.get(f"{API}/payments/pay_x", body=requests.ConnectionError("down"))
    created = refund_event("refund.created", "re_1", "pay_x", amount=2000)
    response = post(client, created)
    assert response.status_code == 503
    assert "kept for redelivery" in response.json()["detail"]
    event = WebhookEvent.objects.get()
    assert (event.status, event.attempts, event.processed_at) == ("failed", 1, None)
    assert "Could not reach LedgePay" in event.error
    assert len(api.calls) == 1  # Asked once, not again by the general path.
    assert not Payment.objects.exists()
    assert not Transition.objects.exists()
    # Its redelivery, once LedgePay answers, applies it.
    api.replace("GET", f"{API}/payments/pay_x", json=payment_data(id="pay_x", status="succeeded"))
    assert post(client, created).json() == {"detail": "processed"}
    event.refresh_from_db()
    assert (event.status, event.attempts) == ("processed", 2)
    assert Refund.objects.get().payment.ledgepay_id == "pay_x"


def test_a_refund_for_a_payment_never_seen_costs_the_fetch_and_two_statements(
    client, api, django_assert_num_queries
):
    api.get(f"{API}/payments/pay_far", json=FETCHED["pay_far"])
    created = refund_event("refund.created", "re_1", "pay_far", amount=2000)
    # PostgreSQL: the look-up, then one statement records the payment, the refund, the event
    # and three transitions. Elsewhere the general path, in three transactions.
    response, *_ = count(django_assert_num_queries, client, created, on(2, 22))
    assert response.json() == {"detail": "processed"}
    assert Refund.objects.get().payment.ledgepay_id == "pay_far"
    assert sorted(Transition.objects.values_list("signal", "source")) == [
        ("payment_succeeded", "sync"),
        ("refund_created", "webhook"),
    ]
    assert len(api.calls) == 1


def stored_after_the_look_up(monkeypatch: Any, body: bytes) -> WebhookEvent:
    """A delivery of the same body on the general path stored it (``received``) after this
    one's look-up, which therefore found no event for it."""
    event, created, _ = webhooks.record_event(body)
    assert created
    look_up = statements.look_up
    monkeypatch.setattr(statements, "look_up", lambda *args: (None, *look_up(*args)[1:]))
    return event


@pytest.mark.parametrize("kind", ["payment", "refund"])
def test_a_change_whose_body_a_rival_stored_after_the_look_up_keeps_its_signal(
    client, monkeypatch, kind
):
    payment = make_payment(
        ledgepay_id="pay_a", status="succeeded" if kind == "refund" else "pending", amount=5000
    )
    if kind == "refund":
        make_refund(payment, ledgepay_id="re_1", amount=2000, status="pending")
        payload = refund_event("refund.succeeded", "re_1", "pay_a", amount=2000)
    else:
        payload = paid("pay_a", amount=5000, currency="EUR")
    body, headers = signed_webhook(payload)
    event = stored_after_the_look_up(monkeypatch, body)
    response = client.post(URL, body, content_type="application/json", headers=headers)
    assert response.json() == {"detail": "processed"}
    # The change made once, with its transition, which names the one stored event.
    transition = Transition.objects.get()
    assert transition.signal == f"{kind}_succeeded"
    assert transition.event_id == event.pk
    assert WebhookEvent.objects.get().status == "processed"
    changed = Refund.objects.get() if kind == "refund" else Payment.objects.get()
    assert changed.status == "succeeded"


@postgresql_only
def test_a_pending_payment_whose_body_a_rival_stores_during_the_statement(client):
    """The look-up and the move are one statement: a rival on the general path whose INSERT
    of the same body is not committed when the statement starts makes the event's INSERT
    wait, then yield. The payment is moved once, and its transition names the rival's
    event."""
    make_payment(ledgepay_id="pay_a", status="pending", amount=5000)
    body, headers = signed_webhook(paid("pay_a", amount=5000, currency="EUR"))
    stored, commit, answers = threading.Event(), threading.Event(), []

    def rival() -> None:
        try:
            with transaction.atomic():
                webhooks.record_event(body)
                stored.set()
                commit.wait(10)
        finally:
            connections.close_all()

    def delivery() -> None:
        try:
            answers.append(
                client.post(URL, body, content_type="application/json", headers=headers)
            )
        finally:
            connections.close_all()

    threads = [threading.Thread(target=rival), threading.Thread(target=delivery)]
    threads[0].start()
    assert stored.wait(10)
    threads[1].start()
    deadline = time.monotonic() + 10
    while not lock_waiters():  # The delivery's INSERT waits for the rival's.
        assert time.monotonic() < deadline, "the delivery never waited for the rival"
        time.sleep(0.02)
    commit.set()
    for thread in threads:
        thread.join(10)
    assert [answer.json() for answer in answers] == [{"detail": "processed"}]
    event = WebhookEvent.objects.get()
    assert event.status == "processed"
    transition = Transition.objects.get()
    assert (transition.signal, transition.event_id) == ("payment_succeeded", event.pk)
    assert Payment.objects.get().status == "succeeded"


@pytest.mark.parametrize("news", ["payment.succeeded", "payment.failed"])
def test_a_final_payment_whose_body_a_rival_stored_after_the_look_up(client, monkeypatch, news):
    make_payment(ledgepay_id="pay_a", status="succeeded", amount=5000)
    body, headers = signed_webhook({"event": news, "data": {"id": "pay_a", "amount": 5000}})
    stored_after_the_look_up(monkeypatch, body)
    # The event's INSERT yields to the rival's (no row comes back); the general path
    # records the outcome on the rival's event.
    response = client.post(URL, body, content_type="application/json", headers=headers)
    outcome = "processed" if news == "payment.succeeded" else "ignored"
    assert response.json() == {"detail": outcome}
    assert WebhookEvent.objects.get().status == outcome
    assert not Transition.objects.exists()
