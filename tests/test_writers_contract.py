"""One contract, every writer of the mirror: the same news gives the same rows.

In the manner of django-anymail's ``tests/webhook_cases.py``: Hypothesis generates what the
mirror holds, then a sequence of LedgePay's news in any order, repeated, and each case runs
through every writer in turn, from the same start:

- ``statements``: the view's entry point, :func:`django_ledgepay.intake.receive` (the SQL
  statements where the database allows, PostgreSQL above all; the general path for the rest);
- ``general``: the general ORM path (``webhooks.record_event`` and ``process_event``);
- ``task``: task processing (``LEDGEPAY_WEBHOOK_PROCESSING = "task"``: stored, then applied
  by the task ``process_event``);
- ``sync``: a sync's page write, for payment news (LedgePay's listed object).

They are compared on every concrete column of the payments and refunds but ids and clocks,
the transitions written (signal and objects), the signals sent, and, between the webhook
writers, each event's outcome and note. ``HYPOTHESIS_PROFILE=ci`` runs the thorough count.
"""

from __future__ import annotations

import datetime
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
import responses
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from django.test import override_settings

from django_ledgepay import intake, signals, webhooks
from django_ledgepay.mirror import orm
from django_ledgepay.mirror.values import payment_values
from django_ledgepay.models import (
    Payment,
    PaymentRequest,
    Reaction,
    Refund,
    RefundRequest,
    Transition,
    WebhookEvent,
)
from django_ledgepay.testing import signed_webhook
from tests.conftest import API

PAYMENT_ID = "pay_contract"
TRUTH_CREATED = "2026-12-01T10:00:00Z"
COMPLETED = "2026-12-01T10:05:00Z"
FINAL = ("succeeded", "failed", "canceled")
EXAMPLES = 150 if os.environ.get("HYPOTHESIS_PROFILE") == "ci" else 25

# What LedgePay holds of the payment (its truth), and what the mirror may hold at the start.

truths = st.fixed_dictionaries(
    {
        "id": st.just(PAYMENT_ID),
        "amount": st.sampled_from([5000, 700]),
        "currency": st.just("EUR"),
        "description": st.sampled_from(["Order 1", ""]),
        "customer": st.sampled_from([{"email": "ann@example.com", "name": "Ann"}, {}]),
        "metadata": st.sampled_from([{"order_id": 1}, {}]),
        "checkout_url": st.just(f"https://checkout.ledgepay.test/{PAYMENT_ID}"),
        "created_at": st.just(TRUTH_CREATED),
        "completed_at": st.sampled_from([COMPLETED, None]),
    }
)
#: The mirror's start: no payment, or the truth recorded pending or final, perhaps with what
#: the shop sent still blank (recorded from an event that lacked it).
starts = st.fixed_dictionaries(
    {
        "status": st.sampled_from([None, "pending", "pending", "succeeded", "failed"]),
        "blank": st.sampled_from([(), ("description",), ("metadata", "customer_email")]),
        "refunds": st.sampled_from(
            [(), (("re_held", 300, "pending"),), (("re_held", 300, "succeeded"),)]
        ),
    }
)
#: Crafted overrides a signed event may carry (only where the mirror knows the payment:
#: the first news of a payment is all the mirror knows of it, whatever it says).
CRAFTED = [
    {},
    {},
    {"metadata": {"order_id": 666}},
    {"description": "Order 666"},
    {"amount": 9999},
    {"customer": {"email": "mallory@example.com", "name": "Ann"}},
]
payment_news = st.fixed_dictionaries(
    {
        "kind": st.just("payment"),
        "status": st.sampled_from(FINAL),
        "crafted": st.sampled_from(CRAFTED),
        "incomplete": st.booleans(),  # Without amount and currency: LedgePay is asked.
        "late": st.booleans(),  # Signed 60 s after its event: looked up first.
    }
)
refund_news = st.fixed_dictionaries(
    {
        "kind": st.just("refund"),
        "event": st.sampled_from(["refund.created", "refund.succeeded", "refund.failed"]),
        "id": st.sampled_from(["re_1", "re_2", "re_held"]),
        "amount": st.sampled_from([1, 300, 2000, 4700, 50000]),
        "currency": st.sampled_from(["EUR", "EUR", "JPY", None]),
        "payment_id": st.sampled_from([PAYMENT_ID, PAYMENT_ID, "pay_other"]),
        "late": st.booleans(),
    }
)


# Running a case


@dataclass
class Run:
    """What one writer left: rows, transitions, signals, event outcomes."""

    payments: list[tuple[Any, ...]] = field(default_factory=list)
    refunds: list[tuple[Any, ...]] = field(default_factory=list)
    transitions: list[tuple[Any, ...]] = field(default_factory=list)
    signals: list[tuple[str, str]] = field(default_factory=list)
    events: list[tuple[Any, ...]] = field(default_factory=list)


SENT: list[tuple[str, str]] = []


def _record(signal: Any, sender: Any, **kwargs: Any) -> None:
    name = next(n for n in SIGNAL_NAMES if getattr(signals, n) is signal)
    subject = kwargs.get("refund") or kwargs["payment"]
    SENT.append((name, subject.ledgepay_id))


SIGNAL_NAMES = (
    "payment_succeeded",
    "payment_failed",
    "payment_canceled",
    "refund_created",
    "refund_succeeded",
    "refund_failed",
)


@contextmanager
def recording() -> Iterator[None]:
    for name in SIGNAL_NAMES:
        getattr(signals, name).connect(_record, dispatch_uid=f"contract.{name}")
    try:
        yield
    finally:
        for name in SIGNAL_NAMES:
            getattr(signals, name).disconnect(dispatch_uid=f"contract.{name}")


def clean() -> None:
    for model in (Reaction, Transition, RefundRequest, PaymentRequest, Refund, WebhookEvent):
        model.objects.all().delete()
    Payment.objects.all().delete()
    SENT.clear()


def start(truth: dict[str, Any], at: dict[str, Any]) -> None:
    """Record what the mirror holds at the start."""
    if at["status"] is None:
        return
    fields = payment_values({**truth, "status": at["status"]})
    for name in at["blank"]:
        fields[name] = {} if name == "metadata" else ""
    if at["status"] == "pending":
        fields.pop("completed_at", None)
    payment = Payment.objects.create(ledgepay_id=PAYMENT_ID, **fields)
    for ledgepay_id, amount, status in at["refunds"]:
        Refund.objects.create(
            payment=payment, ledgepay_id=ledgepay_id, amount=amount, currency="EUR", status=status
        )


def stamp(moment: datetime.datetime | None) -> Any:
    """A time LedgePay gave, as it is; one the mirror stamped, as such."""
    if moment is None:
        return None
    given_at = datetime.datetime(2026, 12, 1, 10, 5, tzinfo=datetime.timezone.utc)
    return moment if moment == given_at else "stamped"


def snapshot(run: Run) -> None:
    for payment in Payment.objects.order_by("ledgepay_id"):
        run.payments.append(
            tuple(
                stamp(getattr(payment, f.attname))
                if f.name == "completed_at"
                else getattr(payment, f.attname)
                for f in Payment._meta.concrete_fields
                if f.name not in {"id", "updated_at"}
            )
        )
    for refund in Refund.objects.select_related("payment").order_by("ledgepay_id"):
        run.refunds.append(
            (refund.payment.ledgepay_id,)
            + tuple(
                getattr(refund, f.attname)
                for f in Refund._meta.concrete_fields
                if f.name not in {"id", "updated_at", "payment"}
            )
        )
    run.transitions = [
        (t.signal, t.payment.ledgepay_id, t.refund.ledgepay_id if t.refund else None)
        for t in Transition.objects.select_related("payment", "refund").order_by("pk")
    ]
    run.signals = list(SENT)
    run.events = list(
        WebhookEvent.objects.order_by("pk").values_list("event_type", "status", "error", "note")
    )


def payload_of(news: dict[str, Any], truth: dict[str, Any], known: bool) -> dict[str, Any]:
    if news["kind"] == "payment":
        data = {**truth, "status": news["status"]}
        if news["incomplete"]:
            del data["amount"], data["currency"]
        if known:
            data.update(news["crafted"])
        event = f"payment.{news['status']}"
    else:
        data = {
            "id": news["id"],
            "payment_id": news["payment_id"],
            "amount": news["amount"],
            "reason": "customer_request",
            "status": {"refund.created": "pending"}.get(news["event"], news["event"][7:]),
            "created_at": TRUTH_CREATED,
        }
        if news["currency"] is not None:
            data["currency"] = news["currency"]
        event = news["event"]
    happened = time.time() - (60 if news["late"] else 0)
    stamp_text = datetime.datetime.fromtimestamp(happened, datetime.timezone.utc).isoformat()
    return {"event": event, "data": data, "timestamp": stamp_text}


def through_statements(payload: dict[str, Any]) -> None:
    body, _ = signed_webhook(payload)
    intake.receive(body, signed_at=time.time())


def through_general_path(payload: dict[str, Any]) -> None:
    body, _ = signed_webhook(payload)
    event, created, invalid = webhooks.record_event(body)
    assert invalid is None
    if created or not event.is_processed:
        webhooks.process_event(event)


def through_task(payload: dict[str, Any]) -> None:
    body, _ = signed_webhook(payload)
    with override_settings(LEDGEPAY_WEBHOOK_PROCESSING="task"):
        intake.receive(body, signed_at=time.time())


def through_sync_page(payload: dict[str, Any], truth: dict[str, Any]) -> None:
    listed = {**truth, "status": payload["data"]["status"]}
    orm.write_payment_page({PAYMENT_ID: payment_values(listed)})


WEBHOOK_WRITERS: dict[str, Callable[[dict[str, Any]], None]] = {
    "statements": through_statements,
    "general": through_general_path,
    "task": through_task,
}


def run_case(
    writer: str,
    truth: dict[str, Any],
    at: dict[str, Any],
    sequence: list[dict[str, Any]],
    api: responses.RequestsMock,
) -> Run:
    clean()
    start(truth, at)
    other = {**truth, "id": "pay_other", "status": "succeeded", "completed_at": COMPLETED}
    api.upsert(responses.GET, f"{API}/payments/pay_other", json=other)
    known = at["status"] is not None
    for news in sequence:
        if news["kind"] == "payment":
            # LedgePay's answer is the truth, at the status this news tells.
            answer = {**truth, "status": news["status"]}
        else:
            answer = {**truth, "status": "succeeded", "completed_at": COMPLETED}
        api.upsert(responses.GET, f"{API}/payments/{PAYMENT_ID}", json=answer)
        payload = payload_of(news, truth, known)
        if writer == "sync":
            through_sync_page(payload, truth)
        else:
            WEBHOOK_WRITERS[writer](payload)
        known = known or Payment.objects.filter(ledgepay_id=PAYMENT_ID).exists()
    run = Run()
    snapshot(run)
    return run


def assert_same(runs: dict[str, Run], *, events: bool) -> None:
    first_name, first = next(iter(runs.items()))
    for name, run in runs.items():
        assert run.payments == first.payments, (name, first_name)
        assert run.refunds == first.refunds, (name, first_name)
        assert run.transitions == first.transitions, (name, first_name)
        assert run.signals == first.signals, (name, first_name)
        if events:
            assert run.events == first.events, (name, first_name)


def check_the_bound() -> None:
    for payment in Payment.objects.all():
        assert 0 <= payment.amount_refunded <= payment.amount, payment


CASE_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.mark.django_db(transaction=True)
@CASE_SETTINGS
@given(truth=truths, at=starts, sequence=st.lists(payment_news, min_size=1, max_size=4))
def test_payment_news_leaves_the_same_rows_through_every_writer(api, truth, at, sequence):
    with recording():
        runs = {
            name: run_case(name, truth, at, sequence, api) for name in (*WEBHOOK_WRITERS, "sync")
        }
    webhook_runs = {name: runs[name] for name in WEBHOOK_WRITERS}
    assert_same(webhook_runs, events=True)
    assert_same(runs, events=False)
    check_the_bound()


@pytest.mark.django_db(transaction=True)
@CASE_SETTINGS
@given(
    truth=truths,
    at=starts,
    sequence=st.lists(st.one_of(payment_news, refund_news), min_size=1, max_size=5),
)
def test_refund_news_leaves_the_same_rows_through_every_webhook_writer(api, truth, at, sequence):
    runs = {}
    with recording():
        for name in WEBHOOK_WRITERS:
            runs[name] = run_case(name, truth, at, sequence, api)
            check_the_bound()
    assert_same(runs, events=True)
