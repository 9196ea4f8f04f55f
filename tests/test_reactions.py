"""Transitions and their delivery: at least once per receiver, exactly once for database
work, retried with backoff, caught up by ledgepay_deliver, on Django's Tasks framework."""

from __future__ import annotations

import datetime
import gc
import io
from typing import Any

import pytest

from django.contrib.auth.models import User
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from django.utils.module_loading import import_string

from django_ledgepay import (
    claims,
    delivery,
    intake,
    reactions,
    services,
    signals,
    task_backend,
    tasks,
)
from django_ledgepay.checks import check_tasks
from django_ledgepay.models import Payment, Reaction, Transition, WebhookEvent
from django_ledgepay.testing import signed_webhook
from tests.conftest import API
from tests.factories import make_payment, payment_data, refund_data

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("without_shop_receivers"),
]

URL = "/ledgepay/webhook/"


def succeeded_body(payment: Payment) -> tuple[bytes, dict[str, str]]:
    data = {"id": payment.ledgepay_id, "amount": payment.amount, "currency": payment.currency}
    return signed_webhook({"event": "payment.succeeded", "data": data})


def post(client: Any, body: bytes, headers: dict[str, str]) -> Any:
    return client.post(URL, body, content_type="application/json", headers=headers)


class Flaky:
    """A receiver that raises its first ``failures`` calls, then records a database write."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    def __call__(
        self, sender: Any, payment: Payment, transition: Transition, **kwargs: Any
    ) -> None:
        self.calls += 1
        # Database work that must happen exactly once: the receiver's transaction.
        Payment.objects.filter(pk=payment.pk).update(description=f"{payment.description}+")
        if self.calls <= self.failures:
            raise RuntimeError(f"boom {self.calls}")


def a_payment_that_succeeded() -> tuple[Payment, Transition]:
    """A pending payment moved to succeeded, and its transition (delivered or held, as the
    test's backend does)."""
    payment = make_payment(status="pending", description="")
    services.apply_payment({"id": payment.ledgepay_id, "status": "succeeded"})
    return payment, Transition.objects.get()


@pytest.fixture
def connect():
    connected: list[tuple[signals.Signal, Any, str | None]] = []

    def do(signal: signals.Signal, receiver: Any, dispatch_uid: str | None = None) -> Any:
        signal.connect(receiver, weak=False, dispatch_uid=dispatch_uid)
        connected.append((signal, receiver, dispatch_uid))
        return receiver

    yield do
    for signal, receiver, uid in connected:
        signal.disconnect(receiver, dispatch_uid=uid)


# Recording


def test_a_change_writes_its_transition_with_source_and_event(client, receive):
    payment = make_payment(status="pending")
    paid = receive(signals.payment_succeeded)
    assert post(client, *succeeded_body(payment)).status_code == 200
    transition = Transition.objects.get()
    event = WebhookEvent.objects.get()
    assert (transition.signal, transition.payment_id, transition.event_id) == (
        "payment_succeeded",
        payment.pk,
        event.pk,
    )
    assert transition.source == Transition.Source.WEBHOOK
    assert transition.delivered_at is not None
    assert paid.transitions == [transition]
    assert paid.calls[0]["event"] == event


def test_a_rolled_back_change_leaves_no_transition_and_sends_nothing(receive):
    payment = make_payment(status="pending")
    paid = receive(signals.payment_succeeded)
    with pytest.raises(RuntimeError), transaction.atomic():
        services.apply_payment({"id": payment.ledgepay_id, "status": "succeeded"})
        assert Transition.objects.count() == 1
        raise RuntimeError("the caller's transaction fails")
    assert Transition.objects.count() == 0
    assert paid.calls == []


def test_without_receivers_a_transition_is_delivered_as_it_is_written():
    payment = make_payment(status="pending")
    services.apply_payment({"id": payment.ledgepay_id, "status": "failed"})
    transition = Transition.objects.get()
    assert transition.delivered_at == transition.created_at
    assert transition.next_attempt_at is None


def test_sources_sync_api_and_admin_with_its_actor(api, receive):
    receive(signals.payment_succeeded)
    synced = make_payment(status="pending")
    api.get(
        f"{API}/payments/{synced.ledgepay_id}",
        json=payment_data(id=synced.ledgepay_id, status="succeeded"),
    )
    services.sync_payment(synced)
    by_code = make_payment(status="pending")
    services.apply_payment({"id": by_code.ledgepay_id, "status": "succeeded"})
    clerk = User.objects.create_user("clerk", is_staff=True)
    by_admin = make_payment(status="pending")
    with reactions.origin(Transition.Source.ADMIN, actor=clerk):
        # The outermost origin wins: a sync inside an admin action stays the admin's.
        api.get(
            f"{API}/payments/{by_admin.ledgepay_id}",
            json=payment_data(id=by_admin.ledgepay_id, status="succeeded"),
        )
        services.sync_payment(by_admin)
    rows = {t.payment_id: (t.source, t.actor_id) for t in Transition.objects.all()}
    assert rows == {
        synced.pk: ("sync", None),
        by_code.pk: ("api", None),
        by_admin.pk: ("admin", clerk.pk),
    }


def test_an_unknown_source_is_refused():
    with pytest.raises(ValueError, match="source"), reactions.origin("cron"):
        pass


# Delivering


def test_a_raising_receiver_never_makes_the_webhook_fail_and_is_retried(client, connect):
    flaky = connect(signals.payment_succeeded, Flaky(failures=1))
    payment = make_payment(status="pending", description="order")
    response = post(client, *succeeded_body(payment))
    assert response.status_code == 200
    payment.refresh_from_db()
    assert payment.status == "succeeded"
    # The receiver's write was rolled back with it; its error and traceback are kept.
    assert payment.description == "order"
    transition = Transition.objects.get()
    assert transition.delivered_at is None and transition.attempts == 1
    assert transition.next_attempt_at is not None
    assert transition.next_attempt_at > timezone.now()
    reaction = Reaction.objects.get()
    assert reaction.succeeded_at is None
    assert "RuntimeError: boom 1" in reaction.error and "Traceback" in reaction.error
    # Not due yet: the plain command leaves it; --all delivers it now.
    call_command("ledgepay_deliver", stdout=io.StringIO())
    assert flaky.calls == 1
    call_command("ledgepay_deliver", "--all", stdout=io.StringIO())
    payment.refresh_from_db()
    assert payment.description == "order+"
    transition.refresh_from_db()
    assert transition.delivered_at is not None and transition.error == ""
    # Delivered: never run again.
    call_command("ledgepay_deliver", "--all", stdout=io.StringIO())
    assert reactions.deliver(transition.pk).succeeded == []
    assert flaky.calls == 2


def test_a_receiver_that_succeeded_is_not_run_again_while_another_fails(connect):
    steady = connect(signals.payment_succeeded, Flaky(failures=0), dispatch_uid="steady")
    flaky = connect(signals.payment_succeeded, Flaky(failures=2), dispatch_uid="flaky")
    payment, transition = a_payment_that_succeeded()
    for _ in range(3):
        reactions.deliver(transition.pk)
    assert (steady.calls, flaky.calls) == (1, 3)
    payment.refresh_from_db()
    assert payment.description == "++"  # Each receiver's write once.
    states = dict(Reaction.objects.values_list("receiver", "attempts"))
    assert states == {"steady": 1, "flaky": 3}
    transition.refresh_from_db()
    assert transition.delivered_at is not None


def test_backoff_then_giving_up_after_max_attempts(connect, settings):
    settings.LEDGEPAY_DELIVERY_MAX_ATTEMPTS = 3
    connect(signals.payment_succeeded, Flaky(failures=99))
    payment = make_payment(status="pending")
    services.apply_payment({"id": payment.ledgepay_id, "status": "succeeded"})
    transition = Transition.objects.get()  # Attempt 1 ran after the commit.
    assert transition.next_attempt_at is not None
    waits = [transition.next_attempt_at - transition.created_at]
    before = timezone.now()
    reactions.deliver(transition.pk)
    transition.refresh_from_db()
    assert transition.next_attempt_at is not None
    waits.append(transition.next_attempt_at - before)
    assert waits[0] >= datetime.timedelta(seconds=59)
    assert waits[1] >= 2 * datetime.timedelta(seconds=59)
    with pytest.raises(CommandError, match="1 still failing"):
        call_command("ledgepay_deliver", "--all", stdout=io.StringIO())
    given_up = Transition.objects.get()
    assert (given_up.attempts, given_up.next_attempt_at) == (3, None)
    assert reactions.backoff(30) == reactions.MAX_BACKOFF


def test_a_task_backend_that_fails_loses_nothing(client, receive, monkeypatch):
    paid = receive(signals.payment_succeeded)

    def down(*args: Any, **kwargs: Any) -> None:
        raise ConnectionError("the broker is down")

    monkeypatch.setattr(task_backend, "enqueue", down)
    payment = make_payment(status="pending")
    assert post(client, *succeeded_body(payment)).status_code == 200
    assert paid.calls == []
    transition = Transition.objects.get()
    assert transition.delivered_at is None
    # A crash between commit and task looks the same: the cron job catches it up.
    Transition.objects.update(next_attempt_at=timezone.now())
    call_command("ledgepay_deliver", stdout=io.StringIO())
    assert len(paid.calls) == 1


def test_deliveries_run_on_the_configured_backend(receive, held_deliveries):
    paid = receive(signals.payment_succeeded)
    payment = make_payment(status="pending")
    services.apply_payment({"id": payment.ledgepay_id, "status": "succeeded"})
    assert paid.calls == []
    assert tasks.task_backends["held"].results[0].args == [Transition.objects.get().pk]
    held_deliveries()
    assert len(paid.calls) == 1


def test_a_receiver_connected_for_another_sender_is_not_run(connect):
    from django_ledgepay.models import Refund

    only_refunds = connect(signals.payment_succeeded, Flaky(failures=0))
    signals.payment_succeeded.disconnect(only_refunds)
    signals.payment_succeeded.connect(only_refunds, sender=Refund, weak=False)
    try:
        payment = make_payment(status="pending")
        services.apply_payment({"id": payment.ledgepay_id, "status": "succeeded"})
        assert only_refunds.calls == 0
        assert Transition.objects.get().delivered_at is not None
    finally:
        signals.payment_succeeded.disconnect(only_refunds, sender=Refund)


def test_receiver_names_are_stable_and_weak_receivers_go_away():
    def handler(sender: Any, **kwargs: Any) -> None:
        pass

    signal = signals.Signal()
    signal.connect(handler)
    signal.connect(handler, dispatch_uid="orders.mark_paid")
    names = [name for name, _ in signal.named_receivers(Payment)]
    assert names == [
        f"{__name__}.test_receiver_names_are_stable_and_weak_receivers_go_away.<locals>.handler",
        "orders.mark_paid",
    ]
    assert signal.disconnect(handler)
    assert [name for name, _ in signal.named_receivers(Payment)] == ["orders.mark_paid"]
    del handler
    gc.collect()
    assert signal.named_receivers(Payment) == []
    assert not signal.has_listeners(Payment)


def test_two_receivers_of_one_class_get_numbered_names(connect):
    first = connect(signals.payment_failed, Flaky(failures=0))
    second = connect(signals.payment_failed, Flaky(failures=0))
    names = [name for name, _ in signals.payment_failed.named_receivers(Payment)]
    assert names == ["tests.test_reactions.Flaky", "tests.test_reactions.Flaky#2"]
    payment = make_payment(status="pending")
    services.apply_payment({"id": payment.ledgepay_id, "status": "failed"})
    assert (first.calls, second.calls) == (1, 1)


# Webhooks applied in task workers


def test_task_processing_stores_and_answers_at_once(
    client, api, receive, settings, held_deliveries
):
    settings.LEDGEPAY_WEBHOOK_PROCESSING = "task"
    paid = receive(signals.payment_succeeded)
    # Never seen: fetched in the worker, never in the request.
    body, headers = signed_webhook({"event": "payment.succeeded", "data": {"id": "pay_unseen"}})
    response = post(client, body, headers)
    assert (response.status_code, response.json()) == (200, {"detail": "received"})
    assert len(api.calls) == 0
    assert WebhookEvent.objects.get().status == "received"
    api.get(f"{API}/payments/pay_unseen", json=payment_data(id="pay_unseen", status="pending"))
    held_deliveries()  # process_event, which records the transition
    assert len(api.calls) == 1
    assert WebhookEvent.objects.get().status == "processed"
    held_deliveries()  # deliver_transition
    assert len(paid.calls) == 1
    assert post(client, body, headers).json() == {"detail": "duplicate"}


def a_delivery_whose_task_was_lost(client: Any, monkeypatch: Any) -> tuple[Payment, WebhookEvent]:
    """A payment and the stored delivery that makes it succeeded, whose processing task
    never ran (the backend was down; a worker killed mid-task looks the same)."""

    def down(*args: Any, **kwargs: Any) -> None:
        raise OSError("the broker is down")

    monkeypatch.setattr(task_backend, "enqueue", down)
    payment = make_payment(status="pending")
    assert post(client, *succeeded_body(payment)).json() == {"detail": "received"}
    monkeypatch.undo()
    event = WebhookEvent.objects.get()
    assert event.status == "received"
    return payment, event


def test_a_lost_processing_task_is_caught_up_by_reprocess(client, settings, monkeypatch, receive):
    settings.LEDGEPAY_WEBHOOK_PROCESSING = "task"
    paid = receive(signals.payment_succeeded)
    payment, _ = a_delivery_whose_task_was_lost(client, monkeypatch)
    call_command("ledgepay_reprocess", "--all", stdout=io.StringIO())
    payment.refresh_from_db()
    assert payment.status == "succeeded"
    assert len(paid.calls) == 1


def deliver_command(*args: str) -> str:
    out = io.StringIO()
    call_command("ledgepay_deliver", *args, stdout=out)
    return out.getvalue()


def test_a_lost_processing_task_is_caught_up_by_ledgepay_deliver(
    client, settings, monkeypatch, receive
):
    settings.LEDGEPAY_WEBHOOK_PROCESSING = "task"
    paid = receive(signals.payment_succeeded)
    payment, event = a_delivery_whose_task_was_lost(client, monkeypatch)
    # Within the grace its task may still run: cron's command leaves it.
    assert deliver_command() == "Delivered 0 transitions; 0 still failing.\n"
    event.refresh_from_db()
    assert event.status == "received"
    WebhookEvent.objects.update(received_at=timezone.now() - delivery.GRACE)
    output = deliver_command()
    assert output.endswith(
        "Delivered 0 transitions; 0 still failing. Applied 1 stored webhook delivery whose "
        "processing was lost; 0 failed.\n"
    )
    event.refresh_from_db()
    payment.refresh_from_db()
    assert (event.status, payment.status) == ("processed", "succeeded")
    # Its transition, delivered after the commit, as any change's.
    assert len(paid.calls) == 1
    assert Transition.objects.get().delivered_at is not None
    assert deliver_command() == "Delivered 0 transitions; 0 still failing.\n"
    assert len(paid.calls) == 1


def test_ledgepay_deliver_all_applies_every_stored_delivery_at_once(
    client, settings, monkeypatch, receive, held_deliveries
):
    settings.LEDGEPAY_WEBHOOK_PROCESSING = "task"
    paid = receive(signals.payment_succeeded)
    payment, event = a_delivery_whose_task_was_lost(client, monkeypatch)
    held_deliveries()  # Nothing was queued: the task is lost.
    output = deliver_command("--all", "-v", "2")
    assert f"Event {event.pk} (payment.succeeded {payment.ledgepay_id}): processed" in output
    assert f"Transition {Transition.objects.get().pk}: delivered." in output
    assert output.endswith(
        "Delivered 1 transition; 0 still failing. Applied 1 stored webhook delivery whose "
        "processing was lost; 0 failed.\n"
    )
    assert len(paid.calls) == 1


def test_ledgepay_deliver_fails_while_a_stored_delivery_cannot_be_applied(
    client, api, settings, monkeypatch
):
    settings.LEDGEPAY_WEBHOOK_PROCESSING = "task"
    settings.LEDGEPAY_MAX_RETRIES = 0
    monkeypatch.setattr(task_backend, "enqueue", lambda *args, **kwargs: None)  # Lost.
    body, headers = signed_webhook({"event": "payment.succeeded", "data": {"id": "pay_far"}})
    assert post(client, body, headers).status_code == 200
    monkeypatch.undo()
    api.get(f"{API}/payments/pay_far", status=503, json={"error": {"message": "down"}})
    event = WebhookEvent.objects.get()
    out = io.StringIO()
    with pytest.raises(CommandError, match="Applied 1 stored webhook delivery .*; 1 failed"):
        call_command("ledgepay_deliver", "--all", stdout=out)
    assert f"Event {event.pk} (payment.succeeded pay_far): failed" in out.getvalue()
    assert f"ledgepay_reprocess --id {event.pk} applies it again" in out.getvalue()
    event.refresh_from_db()
    assert event.status == "failed"


# Checks and the admin


def test_checks_name_an_unknown_backend_and_mode(settings):
    assert check_tasks() == []
    settings.LEDGEPAY_TASK_BACKEND = "nowhere"
    settings.LEDGEPAY_WEBHOOK_PROCESSING = "later"
    settings.LEDGEPAY_DELIVERY_MAX_ATTEMPTS = "ten"
    assert [m.id for m in check_tasks()] == [
        "django_ledgepay.E001",
        "django_ledgepay.E002",
        "django_ledgepay.W007",
    ]
    with pytest.raises(Exception, match="E001"):
        call_command("check", stdout=io.StringIO(), stderr=io.StringIO())


def test_the_payment_page_shows_its_history_and_the_action_delivers(client, connect, admin_user):
    connect(signals.payment_succeeded, Flaky(failures=1), dispatch_uid="shop.mark_paid")
    payment = make_payment(status="pending")
    with reactions.origin(Transition.Source.ADMIN, actor=admin_user):
        services.apply_payment({"id": payment.ledgepay_id, "status": "succeeded"})
    client.force_login(admin_user)
    page = client.get(reverse("admin:django_ledgepay_payment_change", args=(payment.pk,)))
    assert page.status_code == 200
    history = page.content.decode().split('id="transitions-group"', 1)[1]
    history = history.split("</fieldset>", 1)[0]
    assert "Payment Succeeded" in history and "failing (1 attempts)" in history
    assert admin_user.username in history
    transition = Transition.objects.get()
    detail = client.get(reverse("admin:django_ledgepay_transition_change", args=(transition.pk,)))
    assert "RuntimeError: boom 1" in detail.content.decode()
    response = client.post(
        reverse("admin:django_ledgepay_transition_changelist"),
        {"action": "deliver_transitions", "_selected_action": [transition.pk]},
        follow=True,
    )
    assert "Delivered 1 transition." in response.content.decode()
    transition.refresh_from_db()
    assert transition.delivered_at is not None


def test_the_action_says_when_another_deliverer_holds_a_receiver(client, connect, admin_user):
    connect(signals.payment_succeeded, Flaky(failures=1), dispatch_uid="shop.mark_paid")
    payment = make_payment(status="pending")
    services.apply_payment({"id": payment.ledgepay_id, "status": "succeeded"})
    transition = Transition.objects.get()
    # Another deliverer is running the receiver: its claim holds for a while yet.
    Reaction.objects.update_or_create(
        transition=transition,
        receiver="shop.mark_paid",
        defaults={"claimed_until": timezone.now() + datetime.timedelta(minutes=5)},
    )
    client.force_login(admin_user)
    response = client.post(
        reverse("admin:django_ledgepay_transition_changelist"),
        {"action": "deliver_transitions", "_selected_action": [transition.pk]},
        follow=True,
    )
    page = response.content.decode()
    assert "shop.mark_paid is being run by another deliverer" in page
    assert "raised again" not in page


@pytest.mark.skipif(connection.vendor != "postgresql", reason="the one-statement path")
def test_the_hot_path_stays_one_statement_without_receivers(client, django_assert_num_queries):
    payment = make_payment(status="pending")
    body, headers = succeeded_body(payment)
    with django_assert_num_queries(1):
        assert post(client, body, headers).status_code == 200
    transition = Transition.objects.get()
    assert transition.event_id == WebhookEvent.objects.get().pk
    assert transition.delivered_at is not None


def test_a_webhook_with_a_receiver_costs_its_path_and_one_delivery(
    client, connect, django_assert_num_queries
):
    # Django's default ImmediateBackend: the receiver runs in the request, after the commit.
    flaky = connect(signals.payment_succeeded, Flaky(failures=0), dispatch_uid="one")
    payment = make_payment(status="pending", description="")
    body, headers = succeeded_body(payment)
    # PostgreSQL: the look-up with the change, the read that claims the receiver, then
    # BEGIN, the receiver's UPDATE, its success with the delivered mark, COMMIT. SQLite:
    # the general path, then the same delivery with the claim apart from the read (one
    # query more than 0.2, for the claim) and the success and the mark apart.
    with django_assert_num_queries(6 if connection.vendor == "postgresql" else 15):
        assert post(client, body, headers).status_code == 200
    assert flaky.calls == 1
    payment.refresh_from_db()
    assert payment.description == "+"
    assert Transition.objects.get().delivered_at is not None


def test_a_first_delivery_costs_a_read_and_one_transaction(
    connect, held_deliveries, django_assert_num_queries
):
    flaky = connect(signals.payment_succeeded, Flaky(failures=0), dispatch_uid="one")
    payment, transition = a_payment_that_succeeded()
    # The transition with its objects and whether any receiver succeeded before, and the
    # claim on its receiver, committed before it runs (one statement on PostgreSQL, a
    # SELECT and an INSERT elsewhere: the claim costs one query there); then one
    # transaction: the receiver's write, then its success, which ends the claim, with the
    # transition marked delivered (one statement on PostgreSQL, two elsewhere).
    together = connection.vendor == "postgresql"
    read = ["WITH"] if together else ["SELECT", "INSERT"]
    expected = [*read, "BEGIN", "UPDATE", *(["WITH"] if together else ["INSERT", "UPDATE"])]
    with django_assert_num_queries(len(expected) + 1) as captured:
        outcome = reactions.deliver(transition.pk)
    verbs = [query["sql"].split()[0] for query in captured.captured_queries]
    assert verbs == [*expected, "COMMIT"]
    assert (outcome.succeeded, outcome.delivered, flaky.calls) == (["one"], True, 1)
    transition.refresh_from_db()
    assert transition.delivered_at is not None


def test_the_read_builds_what_the_orm_would(client, held_deliveries):
    # A transition with an event (the webhook's), one with a refund, one with neither.
    payment = make_payment(status="pending", metadata={"order": 7, "tags": ["a"]})
    assert post(client, *succeeded_body(payment)).status_code == 200
    services.apply_refund(refund_data(payment.ledgepay_id, amount=300))
    services.apply_payment(payment_data(status="canceled"))
    transitions = Transition.objects.order_by("pk")
    assert [(t.event_id is None, t.refund_id is None) for t in transitions] == [
        (False, True),
        (True, False),
        (True, True),
    ]
    Reaction.objects.create(transition=transitions[0], receiver="r", succeeded_at=timezone.now())
    for transition in transitions:
        found = read_for_delivery(transition.pk)
        assert found is not None
        read, succeeded_before = found.transition, found.succeeded_before
        assert succeeded_before is (transition == transitions[0])
        orm = Transition.objects.select_related("payment", "refund", "event").get(pk=transition.pk)
        for mine, theirs in ((read, orm), *((getattr(read, r), getattr(orm, r)) for r in RELATED)):
            assert type(mine) is type(theirs)
            if theirs is not None:
                assert mine.__dict__.keys() >= theirs.__dict__.keys() - {"_state"}
                assert {name: getattr(mine, name) for name in values_of(theirs)} == values_of(
                    theirs
                )
                assert (mine._state.adding, mine._state.db) == (False, "default")
    # Its objects are cached: a receiver reading them costs nothing more.
    found = read_for_delivery(transitions[1].pk)
    assert found is not None
    read = found.transition
    with CaptureQueriesContext(connection) as captured:
        refund = read.refund
        assert refund is not None
        assert (read.payment.metadata, refund.amount, read.event) == (
            {"order": 7, "tags": ["a"]},
            300,
            None,
        )
    assert captured.captured_queries == []
    assert read.payment.updated_at.tzinfo is not None
    assert read_for_delivery(10**9) is None


def read_for_delivery(transition_id: int) -> claims.Found | None:
    """What a delivery reads (and, on PostgreSQL, claims: no receiver is named here)."""
    now = timezone.now()
    return claims.read(transition_id, until=now, now=now)


RELATED = ("payment", "refund", "event")


def values_of(instance: Any) -> dict[str, Any]:
    return {
        field.attname: getattr(instance, field.attname) for field in instance._meta.concrete_fields
    }


def test_a_delivery_cut_short_after_one_success_skips_it_next_time(
    connect, held_deliveries, monkeypatch
):
    first = connect(signals.payment_succeeded, Flaky(failures=0), dispatch_uid="first")
    second = connect(signals.payment_succeeded, Flaky(failures=0), dispatch_uid="second")
    payment, transition = a_payment_that_succeeded()
    run_once = delivery._run_once

    def killed_after_the_first(transition: Transition, name: str, *args: Any, **kw: Any) -> Any:
        if name == "second":
            raise KeyboardInterrupt  # The worker dies: nothing after this runs.
        return run_once(transition, name, *args, **kw)

    monkeypatch.setattr(delivery, "_run_once", killed_after_the_first)
    with pytest.raises(KeyboardInterrupt):
        reactions.deliver(transition.pk)
    monkeypatch.undo()
    transition.refresh_from_db()
    assert (transition.attempts, transition.delivered_at) == (0, None)
    outcome = reactions.deliver(transition.pk)
    assert outcome.succeeded == ["second"] and outcome.delivered
    assert (first.calls, second.calls) == (1, 1)
    payment.refresh_from_db()
    assert payment.description == "++"


def test_a_last_receiver_another_worker_ran_first_still_ends_the_delivery(
    connect, held_deliveries, monkeypatch
):
    only = connect(signals.payment_succeeded, Flaky(failures=0), dispatch_uid="only")
    payment, transition = a_payment_that_succeeded()
    # Another worker records the receiver's success while this one runs it.
    monkeypatch.setattr(delivery, "_record_success", lambda *args, **kwargs: False)
    outcome = reactions.deliver(transition.pk)
    assert (outcome.succeeded, outcome.failed, outcome.delivered) == ([], [], True)
    assert only.calls == 1
    payment.refresh_from_db()
    assert payment.description == ""  # This run's write undone: the other's counts.
    transition.refresh_from_db()
    assert transition.delivered_at is not None


def test_tasks_queued_under_0_2_paths_still_run(receive, django_capture_on_commit_callbacks):
    # 0.3 defines each task beside what it runs; rows queued by 0.2 name
    # django_ledgepay.tasks.*, which must still import as the same tasks.
    assert import_string("django_ledgepay.tasks.deliver_transition") is delivery.deliver_transition
    assert import_string("django_ledgepay.tasks.process_event") is intake.process_event
    assert delivery.deliver_transition.module_path == "django_ledgepay.delivery.deliver_transition"
    paid = receive(signals.payment_succeeded)
    payment = make_payment(status="pending")
    with django_capture_on_commit_callbacks(execute=False):
        services.apply_payment({"id": payment.ledgepay_id, "status": "succeeded"})
    transition = Transition.objects.get()
    import_string("django_ledgepay.tasks.deliver_transition").call(transition.pk)
    assert len(paid.calls) == 1
    transition.refresh_from_db()
    assert transition.delivered_at is not None
