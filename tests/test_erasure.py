"""``ledgepay_erase``: a customer's personal data erased from the mirror and wherever the app
stored it, recorded without the data, never brought back by a sync or a webhook, and the
books still adding up."""

from __future__ import annotations

import datetime
import hashlib
import json
import time
from io import StringIO
from typing import Any

import pytest
import responses

from django.core.management import CommandError, call_command
from django.test import override_settings
from django.utils import timezone

from django_ledgepay import intake, services, webhooks
from django_ledgepay.erasure import ERASED, erase_personal_data
from django_ledgepay.mirror import orm, rules
from django_ledgepay.models import (
    Erasure,
    Payment,
    PaymentRequest,
    Reaction,
    Refund,
    RefundRequest,
    Transition,
    WebhookEvent,
)
from django_ledgepay.testing import FakeLedgePay, signed_webhook
from tests.factories import make_payment, make_refund, payment_data

pytestmark = pytest.mark.django_db

UTC = datetime.timezone.utc
EMAIL = "Ann.Smith+shop@Example.com"
NAME = "Ann Smith"
JAN = datetime.datetime(2026, 1, 15, 10, 30, tzinfo=UTC)
URLS: dict[str, Any] = {
    "success_url": "https://shop.test/ok",
    "cancel_url": "https://shop.test/no",
}


def run(*args: str) -> tuple[str, str, int]:
    out, err = StringIO(), StringIO()
    try:
        call_command("ledgepay_erase", *args, stdout=out, stderr=err)
    except CommandError as error:
        return out.getvalue(), err.getvalue() + str(error), error.returncode
    return out.getvalue(), err.getvalue(), 0


def store_event(payload: dict[str, Any], **fields: Any) -> WebhookEvent:
    body = json.dumps(payload).encode()
    return WebhookEvent.objects.create(
        event_type=payload.get("event", ""),
        object_id=payload.get("data", {}).get("id", ""),
        payload=payload,
        body_sha256=hashlib.sha256(body).hexdigest(),
        **{"status": WebhookEvent.Status.PROCESSED, **fields},
    )


def ann_and_bob() -> dict[str, Any]:
    """Ann with two payments (her address in two cases), a refund, and her data in every
    place the app keeps it; Bob with one payment and an event of his own."""
    first = make_payment(
        ledgepay_id="pay_ann_1",
        customer_email=EMAIL,
        customer_name=NAME,
        created_at=JAN,
        completed_at=JAN,
    )
    second = make_payment(
        ledgepay_id="pay_ann_2",
        customer_email=EMAIL.lower(),
        customer_name=NAME,
        amount=900,
        currency="JPY",
        status=Payment.Status.PENDING,
        created_at=JAN,
    )
    bob = make_payment(
        ledgepay_id="pay_bob",
        customer_email="bob@example.com",
        customer_name="Bob",
        created_at=JAN,
    )
    refund = make_refund(first, ledgepay_id="re_ann", amount=1000, created_at=JAN)
    customer = {"email": EMAIL, "name": NAME}
    events = {
        "paid": store_event(
            {"event": "payment.succeeded", "data": {"id": "pay_ann_1", "customer": customer}},
            note=f"The event contradicted the payment pay_ann_1's fixed facts: customer_name "
            f"{NAME!r} (recorded: '').",
        ),
        "refund": store_event(
            {
                "event": "refund.created",
                "data": {"id": "re_ann", "payment_id": "pay_ann_1", "amount": 1000},
            }
        ),
        "unknown_type": store_event(
            {"event": "customer.updated", "data": {"id": "cus_1", "email": EMAIL.upper()}},
            status=WebhookEvent.Status.IGNORED,
        ),
        "bob": store_event(
            {
                "event": "payment.succeeded",
                "data": {"id": "pay_bob", "customer": {"email": "bob@example.com", "name": "Bob"}},
            }
        ),
    }
    made = PaymentRequest.objects.create(
        idempotency_key="payment-1", fingerprint="f" * 64, payment=first, outcome="made"
    )
    refund_request = RefundRequest.objects.create(
        idempotency_key="refund-1",
        payment=first,
        amount=1000,
        reason="customer_request",
        source="api",
        outcome="made",
        refund=refund,
        error=f"An earlier attempt said: no refunds for {EMAIL}.",
    )
    transition = Transition.objects.create(
        signal="payment_succeeded",
        payment=first,
        source="webhook",
        error=f"Traceback ...\nValueError: no order for {EMAIL.lower()} ({NAME})",
    )
    reaction = Reaction.objects.create(
        transition=transition, receiver="shop.receivers.mark_paid", error=f"{NAME} not found"
    )
    return {
        "payments": (first, second, bob),
        "refund": refund,
        "events": events,
        "payment_request": made,
        "refund_request": refund_request,
        "transition": transition,
        "reaction": reaction,
    }


def everything_stored() -> str:
    """Every row the app keeps, as text, to look for what should be gone."""
    rows = []
    for model in (Payment, Refund, WebhookEvent, PaymentRequest, RefundRequest, Transition):
        rows += [json.dumps(row, default=str) for row in model.objects.values()]
    rows += [json.dumps(row, default=str) for row in Reaction.objects.values()]
    rows += [json.dumps(row, default=str) for row in Erasure.objects.values()]
    return "\n".join(rows)


def books() -> list[tuple[Any, ...]]:
    """What the accountant reads: ids, amounts, currencies, statuses and dates."""
    return list(
        Payment.objects.order_by("pk").values_list(
            "ledgepay_id", "status", "amount", "currency", "created_at", "completed_at"
        )
    ) + list(
        Refund.objects.order_by("pk").values_list(
            "ledgepay_id", "payment_id", "status", "amount", "currency", "created_at"
        )
    )


# Erasing by e-mail address


def test_erase_by_email_erases_every_copy_and_keeps_the_books(api):
    stored = ann_and_bob()
    before = books()
    digests = {name: event.body_sha256 for name, event in stored["events"].items()}

    out, err, status = run(f"--email={EMAIL.upper()}", "--reference=DSR-2026-001")

    assert status == 0, err
    text = everything_stored()
    for value in (EMAIL, EMAIL.lower(), EMAIL.upper(), NAME):
        assert value not in text
    assert "bob@example.com" in text and "Bob" in text  # Another customer's stays.
    for payment in Payment.objects.filter(ledgepay_id__startswith="pay_ann"):
        assert (payment.customer_email, payment.customer_name) == ("", "")
        assert payment.erased_at is not None
    assert Payment.objects.get(ledgepay_id="pay_bob").erased_at is None
    assert books() == before
    events = {name: WebhookEvent.objects.get(pk=e.pk) for name, e in stored["events"].items()}
    assert events["paid"].payload["data"]["customer"] == {"email": "", "name": ""}
    assert events["paid"].note == (
        f"The event contradicted the payment pay_ann_1's fixed facts: customer_name "
        f"'{ERASED}' (recorded: '')."
    )
    assert events["unknown_type"].payload["data"]["email"] == ERASED
    # The hash of a body that held the data is not kept; the others' are.
    assert events["paid"].body_sha256 != digests["paid"]
    assert events["unknown_type"].body_sha256 != digests["unknown_type"]
    assert events["refund"].body_sha256 == digests["refund"]
    assert events["bob"].body_sha256 == digests["bob"]
    assert PaymentRequest.objects.get().fingerprint == ""
    assert (
        RefundRequest.objects.get().error == f"An earlier attempt said: no refunds for {ERASED}."
    )
    assert Transition.objects.get().error == (
        f"Traceback ...\nValueError: no order for {ERASED} ({ERASED})"
    )
    assert Reaction.objects.get().error == f"{ERASED} not found"
    assert out.splitlines() == [
        "Erased customer_email and customer_name of 2 payments: pay_ann_1, pay_ann_2.",
        "Erased the same data in 2 webhook events, 1 payment request, 1 refund request, "
        "1 transition and 1 receivers' record.",
        f"Recorded as erasure {Erasure.objects.get().pk}: when, by what, the payments' ids and "
        "these counts; not the data.",
    ]
    assert len(api.calls) == 0


def test_the_erasure_is_recorded_without_the_data():
    ann_and_bob()

    run(f"--email={EMAIL}", "--reference=DSR-2026-001")

    record = Erasure.objects.get()
    assert record.criterion == Erasure.Criterion.EMAIL
    assert record.source == Erasure.Source.COMMAND
    assert record.reference == "DSR-2026-001"
    assert record.payments == ["pay_ann_1", "pay_ann_2"]
    assert record.counts == {
        "payments": 2,
        "webhook_events": 2,
        "payment_requests": 1,
        "refund_requests": 1,
        "transitions": 1,
        "reactions": 1,
    }
    assert timezone.now() - record.erased_at < datetime.timedelta(minutes=1)
    assert EMAIL.lower() not in json.dumps(list(Erasure.objects.values()), default=str).lower()


def test_a_dry_run_says_what_it_would_erase_and_changes_nothing():
    ann_and_bob()
    before = everything_stored()

    out, _, status = run(f"--email={EMAIL}", "--dry-run")

    assert status == 0
    assert everything_stored() == before
    assert not Erasure.objects.exists()
    assert out.splitlines() == [
        "Would erase customer_email and customer_name of 2 payments: pay_ann_1, pay_ann_2.",
        "Would erase the same data in 2 webhook events, 1 payment request, 1 refund request, "
        "1 transition and 1 receivers' record.",
        "Dry run: nothing was changed or recorded.",
    ]
    assert EMAIL.lower() not in out.lower()


def test_an_address_no_payment_has_still_erases_the_deliveries_holding_it():
    store_event({"event": "customer.updated", "data": {"id": "cus_9", "email": "zed@example.com"}})

    out, _, status = run("--email=zed@example.com")

    assert status == 0
    assert "zed@example.com" not in everything_stored()
    assert out.splitlines()[0] == "Erased customer_email and customer_name of 0 payments."
    assert Erasure.objects.get().counts["webhook_events"] == 1


# Erasing one payment


def test_erase_by_payment_erases_that_payment_only():
    stored = ann_and_bob()

    out, _, status = run("--payment=pay_ann_1")

    assert status == 0
    first, second, _ = (Payment.objects.get(pk=p.pk) for p in stored["payments"])
    assert (first.customer_email, first.customer_name) == ("", "")
    assert (second.customer_email, second.customer_name) == (EMAIL.lower(), NAME)
    assert second.erased_at is None
    # The deliveries about another payment keep what that payment still holds.
    unknown = WebhookEvent.objects.get(pk=stored["events"]["unknown_type"].pk)
    assert unknown.payload["data"]["email"] == EMAIL.upper()
    assert Erasure.objects.get().criterion == Erasure.Criterion.PAYMENT
    assert (
        out.splitlines()[0] == "Erased customer_email and customer_name of 1 payment: pay_ann_1."
    )


def test_erasing_again_changes_nothing_more_and_keeps_the_first_time():
    make_payment(ledgepay_id="pay_1", customer_email=EMAIL, customer_name=NAME)
    run("--payment=pay_1")
    first = Payment.objects.get().erased_at

    out, _, status = run("--payment=pay_1")

    assert status == 0
    assert Payment.objects.get().erased_at == first
    assert Erasure.objects.count() == 2


@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        (("--payment=pay_nope",), 1, "No payment pay_nope in the mirror."),
        ((), 2, "one of the arguments --email --payment is required"),
        (("--email=a@example.com", "--payment=pay_1"), 2, "argument --payment: not allowed with"),
        (("--email=",), 2, "--email must not be empty."),
        (("--email=  ",), 2, "--email must not be empty."),
        (("--payment=",), 2, "--payment must not be empty."),
        (("--payment=pay_1", f"--reference={'x' * 256}"), 2, "--reference must be at most 255"),
    ],
)
def test_bad_input_is_one_line_and_its_exit_status(api, args, status, message):
    out, err = StringIO(), StringIO()
    with pytest.raises(CommandError) as excinfo:
        call_command("ledgepay_erase", *args, stdout=out, stderr=err)

    assert str(excinfo.value).startswith(message), str(excinfo.value)
    assert "\n" not in str(excinfo.value)
    assert excinfo.value.returncode == status
    assert (out.getvalue(), err.getvalue()) == ("", "")
    assert not Erasure.objects.exists()
    assert len(api.calls) == 0


def test_the_service_takes_one_criterion():
    with pytest.raises(ValueError, match="Give either email or payment."):
        erase_personal_data()
    with pytest.raises(ValueError, match="Give either email or payment."):
        erase_personal_data(email="a@example.com", payment="pay_1")


# Not brought back


def ledgepay_with_ann(fake: FakeLedgePay, status: str = "succeeded") -> str:
    fake.state.clock = lambda: JAN.timestamp()
    payment = fake.state.create_payment(
        {"amount": 5000, "currency": "EUR", "customer": {"email": EMAIL, "name": NAME}, **URLS}
    )
    if status != "pending":
        fake.state.settle(payment["id"], status)
    return str(payment["id"])


def test_a_sync_does_not_bring_the_data_back():
    with FakeLedgePay() as fake:
        ledgepay_id = ledgepay_with_ann(fake)
        pending = ledgepay_with_ann(fake, "pending")
        services.sync_payments()
        assert Payment.objects.get(ledgepay_id=ledgepay_id).customer_email == EMAIL
        run(f"--email={EMAIL}")
        fake.state.settle(pending, "succeeded")

        services.sync_payments()  # A page write.
        services.sync_payment(ledgepay_id)  # LedgePay's answer by id.
        out = StringIO()
        call_command("ledgepay_reconcile", "--since=2026-01-01", "--apply", stdout=out)

    for payment in Payment.objects.all():
        assert (payment.customer_email, payment.customer_name) == ("", "")
    # What else LedgePay said is applied as before.
    assert Payment.objects.get(ledgepay_id=pending).status == "succeeded"


def test_create_payment_with_the_same_key_does_not_bring_it_back():
    with FakeLedgePay():
        customer = {"email": EMAIL, "name": NAME}
        payment = services.create_payment(
            amount=700, currency="EUR", customer=customer, idempotency_key="order-1", **URLS
        )
        erase_personal_data(payment=payment)
        again = services.create_payment(
            amount=700, currency="EUR", customer=customer, idempotency_key="order-1", **URLS
        )

    assert again.pk == payment.pk
    assert (again.customer_email, again.customer_name) == ("", "")


def through_statements(body: bytes) -> None:
    intake.receive(body, signed_at=time.time())


def through_general_path(body: bytes) -> None:
    event, created, invalid = webhooks.record_event(body)
    assert invalid is None
    if created or not event.is_processed:
        webhooks.process_event(event)


def through_task(body: bytes) -> None:
    with override_settings(LEDGEPAY_WEBHOOK_PROCESSING="task"):
        intake.receive(body, signed_at=time.time())


WRITERS = {"statements": through_statements, "general": through_general_path, "task": through_task}


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("writer", list(WRITERS))
@pytest.mark.parametrize("start", ["pending", "succeeded"])
def test_a_webhook_does_not_bring_the_data_back(writer, start):
    payment = make_payment(
        ledgepay_id="pay_ann", customer_email=EMAIL, customer_name=NAME, status=start
    )
    erase_personal_data(payment="pay_ann")
    payload = {
        "event": "payment.succeeded",
        "timestamp": timezone.now().isoformat(),
        "data": payment_data(
            id="pay_ann", status="succeeded", customer={"email": EMAIL, "name": NAME}
        ),
    }
    body, _ = signed_webhook(payload)

    # Any call to LedgePay fails the test: the data is not asked for.
    with responses.RequestsMock() as mock:
        WRITERS[writer](body)
        # Its exact redelivery too.
        WRITERS[writer](body)
        assert len(mock.calls) == 0

    payment.refresh_from_db()
    assert (payment.customer_email, payment.customer_name) == ("", "")
    assert payment.status == "succeeded"
    assert Transition.objects.filter(signal="payment_succeeded").count() == (start == "pending")
    text = everything_stored()
    assert EMAIL not in text and NAME not in text
    for event in WebhookEvent.objects.all():
        assert event.status == WebhookEvent.Status.PROCESSED
        assert event.payload["data"]["customer"] == {"email": "", "name": ""}
        assert event.body_sha256 != hashlib.sha256(body).hexdigest()
        assert event.note == ""


def test_the_writer_decides_again_when_an_erasure_came_between():
    payment = make_payment(ledgepay_id="pay_1", customer_email="", status="pending")
    decision = rules.decide_payment(
        orm.held(payment), {"customer_email": EMAIL}, timezone.now(), verified=True
    )
    assert decision.writes == {"customer_email": EMAIL}
    Payment.objects.filter(pk=payment.pk).update(erased_at=timezone.now())

    assert orm._write_guarded(payment, decision, None) is False

    assert Payment.objects.get().customer_email == ""


# The rulebook


def test_the_rulebook_leaves_an_erased_payment_s_personal_data_out():
    held = {
        "status": "pending",
        "amount": 5000,
        "currency": "EUR",
        "description": "",
        "customer_email": "",
        "customer_name": "",
        "metadata": {},
        "completed_at": None,
        "erased_at": JAN,
    }
    said = {"customer_email": EMAIL, "customer_name": NAME, "status": "succeeded"}

    erased = rules.decide_payment(held, said, JAN)
    kept = rules.decide_payment({**held, "erased_at": None}, said, JAN)

    assert erased.verdict == rules.Verdict.APPLY
    assert erased.writes == {"status": "succeeded"} and erased.contradicted == {}
    # Not erased, a blank fact said by an event is asked about (LedgePay fills it in).
    assert kept.verdict == rules.Verdict.CONTRADICTED


def test_blank_customer_blanks_only_the_customer_and_copies():
    payload: dict[str, Any] = {
        "event": "payment.succeeded",
        "data": {"id": "p", "customer": {"email": EMAIL}},
    }

    blanked = rules.blank_customer(payload)

    assert blanked == {
        "event": "payment.succeeded",
        "data": {"id": "p", "customer": {"email": ""}},
    }
    assert payload["data"]["customer"] == {"email": EMAIL}
    assert rules.blank_customer(blanked) is blanked
    assert rules.blank_customer({"raw": "x"}) == {"raw": "x"}
    assert rules.blank_customer({"data": {"customer": "x"}}) == {"data": {"customer": "x"}}


# The books still add up


def test_statements_exports_and_reconciliation_add_up_the_same_afterwards():
    with FakeLedgePay() as fake:
        for _ in range(3):
            ledgepay_with_ann(fake)
        services.sync_payments()
        make_refund(Payment.objects.earliest("pk"), amount=700, created_at=JAN)

        def read() -> tuple[Any, ...]:
            statement, export, reconciled = StringIO(), StringIO(), StringIO()
            call_command(
                "ledgepay_statement",
                "--month=2026-01",
                "--format=json",
                stdout=statement,
                stderr=StringIO(),
            )
            call_command("ledgepay_export", "--kind=payments", stdout=export, stderr=StringIO())
            call_command(
                "ledgepay_reconcile",
                "--since=2026-01-01",
                "--until=2026-02-01",
                "--format=json",
                stdout=reconciled,
                stderr=StringIO(),
            )
            report = json.loads(reconciled.getvalue())
            return (
                json.loads(statement.getvalue())["currencies"],
                export.getvalue().replace(EMAIL, ""),
                (report["checked"], report["drift"]),
            )

        before = read()
        run(f"--email={EMAIL}")
        after = read()

    assert after == before
    assert after[0][0]["agrees"] is True
