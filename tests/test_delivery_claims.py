"""Claims: no receiver of a transition is run by two deliverers at once. A deliverer claims
the receivers it is to run for ``LEDGEPAY_DELIVERY_LEASE`` seconds; another skips them while
the claim holds; a claim ends with the receiver's success or failure, and a crashed
deliverer's with its lease."""

from __future__ import annotations

import datetime
import io
import logging
import threading
import time
import types
from collections.abc import Callable
from typing import Any

import pytest

from django.core.management import call_command
from django.db import connection
from django.utils import timezone

from django_ledgepay import claims, delivery, services, signals
from django_ledgepay.checks import check_tasks
from django_ledgepay.conf import conf
from django_ledgepay.models import Reaction, Transition
from tests.factories import make_payment

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("without_shop_receivers", "held_deliveries"),
]


class Outside:
    """A receiver that calls another system: each run counts, whatever becomes of its
    transaction. ``during(transition)`` runs inside it, on its first run only unless
    ``every_run``."""

    def __init__(
        self, during: Callable[[Transition], Any] | None = None, *, every_run: bool = False
    ) -> None:
        self.runs = 0
        self.during = during
        self.every_run = every_run
        self.lock = threading.Lock()

    def __call__(self, sender: Any, transition: Transition, **kwargs: Any) -> None:
        with self.lock:
            self.runs += 1
            first = self.runs == 1
        if self.during is not None and (first or self.every_run):
            self.during(transition)


@pytest.fixture
def connect():
    connected: list[tuple[signals.Signal, Any, str]] = []

    def do(receiver: Any, dispatch_uid: str) -> Any:
        signals.payment_succeeded.connect(receiver, weak=False, dispatch_uid=dispatch_uid)
        connected.append((signals.payment_succeeded, receiver, dispatch_uid))
        return receiver

    yield do
    for signal, receiver, uid in connected:
        signal.disconnect(receiver, dispatch_uid=uid)


@pytest.fixture
def clock(monkeypatch):
    """The deliverers' clock, moved on by ``clock.advance(seconds)``."""
    ahead = [datetime.timedelta(0)]
    real = timezone.now

    def advance(seconds: float) -> None:
        ahead[0] += datetime.timedelta(seconds=seconds)

    monkeypatch.setattr(delivery, "timezone", types.SimpleNamespace(now=lambda: real() + ahead[0]))
    return types.SimpleNamespace(advance=advance, now=lambda: real() + ahead[0])


def a_transition() -> Transition:
    """An undelivered transition of payment_succeeded (its task held, not run)."""
    payment = make_payment(status="pending")
    services.apply_payment({"id": payment.ledgepay_id, "status": "succeeded"})
    return Transition.objects.get()


def deliver_command(*args: str) -> str:
    out = io.StringIO()
    call_command("ledgepay_deliver", *args, stdout=out)
    return out.getvalue()


# One deliverer at a time


def test_a_second_deliverer_skips_a_receiver_the_first_is_running(connect):
    seen = []
    # While the receiver runs, a second deliverer (ledgepay_deliver, another worker) comes.
    outside = connect(Outside(lambda t: seen.append(delivery.deliver(t.pk))), "shop.ship")
    transition = a_transition()

    outcome = delivery.deliver(transition.pk)

    assert outside.runs == 1
    (second,) = seen
    assert (second.succeeded, second.failed, second.skipped) == ([], [], ["shop.ship"])
    assert not second.delivered
    assert (outcome.succeeded, outcome.skipped, outcome.delivered) == (["shop.ship"], [], True)
    reaction = Reaction.objects.get()
    assert reaction.succeeded_at is not None and reaction.claimed_until is None
    assert reaction.attempts == 1


@pytest.mark.skipif(connection.vendor != "postgresql", reason="a race on PostgreSQL")
def test_two_deliverers_at_once_run_the_receiver_once(connect):
    finished = threading.Event()
    # Each run waits (3 s at most) for a deliverer to finish: two runs would overlap.
    outside = connect(Outside(lambda t: finished.wait(3), every_run=True), "shop.ship")
    transition = a_transition()
    start = threading.Barrier(2)
    outcomes: list[delivery.Delivery] = []

    def deliverer() -> None:
        try:
            start.wait(10)
            outcomes.append(delivery.deliver(transition.pk))
        finally:
            finished.set()
            connection.close()

    threads = [threading.Thread(target=deliverer) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert outside.runs == 1
    assert sorted((o.succeeded, o.skipped) for o in outcomes) == [
        ([], ["shop.ship"]),
        (["shop.ship"], []),
    ]
    transition.refresh_from_db()
    assert transition.delivered_at is not None


def test_a_crashed_deliverers_claim_lapses_with_its_lease(connect, clock, monkeypatch, settings):
    settings.LEDGEPAY_DELIVERY_LEASE = 60

    def killed(transition: Transition) -> None:
        raise KeyboardInterrupt  # Killed mid-run: its transaction is rolled back.

    outside = connect(Outside(killed), "shop.ship")
    transition = a_transition()
    # A process killed with SIGKILL runs no cleanup: its claim stays.
    release = claims.release
    monkeypatch.setattr(claims, "release", lambda *args, **kwargs: None)
    with pytest.raises(KeyboardInterrupt):
        delivery.deliver(transition.pk)
    monkeypatch.setattr(claims, "release", release)
    reaction = Reaction.objects.get()
    assert reaction.succeeded_at is None and reaction.attempts == 0
    assert reaction.claimed_until is not None
    assert reaction.claimed_until > timezone.now() + datetime.timedelta(seconds=55)

    # While its lease holds, the others leave the receiver alone, and say so.
    clock.advance(59)
    assert delivery.deliver(transition.pk).skipped == ["shop.ship"]
    output = deliver_command("--all", "-v", "2")
    assert f"Transition {transition.pk}: shop.ship claimed by another deliverer" in output
    assert "Delivered 0 transitions; 0 still failing. 1 being delivered by another" in output
    assert outside.runs == 1
    transition.refresh_from_db()
    assert (transition.delivered_at, transition.attempts) == (None, 0)

    # Once it has passed, the next deliverer runs the receiver.
    clock.advance(2)
    outcome = delivery.deliver(transition.pk)
    assert (outcome.succeeded, outcome.skipped, outcome.delivered) == (["shop.ship"], [], True)
    assert outside.runs == 2


def test_a_receiver_that_raises_ends_its_claim_so_its_retry_need_not_wait(connect):
    def fails(transition: Transition) -> None:
        raise RuntimeError("the warehouse is down")

    outside = connect(Outside(fails), "shop.ship")
    transition = a_transition()
    assert delivery.deliver(transition.pk).failed == ["shop.ship"]
    reaction = Reaction.objects.get()
    assert (reaction.attempts, reaction.claimed_until) == (1, None)
    assert "the warehouse is down" in reaction.error
    # ledgepay_deliver --all (or the admin's action) tries it again at once.
    assert "Delivered 1 transition; 0 still failing." in deliver_command("--all")
    assert outside.runs == 2
    reaction.refresh_from_db()
    assert (reaction.attempts, reaction.claimed_until) == (2, None)
    assert reaction.succeeded_at is not None


def test_a_failure_ends_only_the_deliverers_own_claim():
    transition = a_transition()
    mine = timezone.now() + datetime.timedelta(minutes=5)
    theirs = mine + datetime.timedelta(minutes=1)
    # This deliverer's receiver outran its lease; another deliverer claimed it meanwhile.
    Reaction.objects.create(transition=transition, receiver="shop.ship", claimed_until=theirs)
    delivery._record_failure(transition, "shop.ship", "Traceback ...", mine)
    reaction = Reaction.objects.get()
    assert (reaction.attempts, reaction.error, reaction.claimed_until) == (
        1,
        "Traceback ...",
        theirs,
    )
    delivery._record_failure(transition, "shop.ship", "Traceback ...", theirs)
    reaction.refresh_from_db()
    assert (reaction.attempts, reaction.claimed_until) == (2, None)


# Long deliveries


def test_a_long_delivery_renews_the_claims_of_the_receivers_still_to_run(connect, clock, settings):
    settings.LEDGEPAY_DELIVERY_LEASE = 60
    seen: list[datetime.datetime | None] = []
    connect(Outside(lambda t: clock.advance(45)), "first")  # Runs 45 s of its 60.
    connect(
        Outside(lambda t: seen.append(Reaction.objects.get(receiver="second").claimed_until)),
        "second",
    )
    transition = a_transition()
    started = timezone.now()
    outcome = delivery.deliver(transition.pk)
    assert outcome.succeeded == ["first", "second"] and outcome.delivered
    # Renewed for a whole lease from when its turn came, 45 s on.
    (until,) = seen
    assert until is not None
    assert until >= started + datetime.timedelta(seconds=45 + 60)


def test_a_claim_that_lapsed_and_was_taken_is_left_to_its_new_holder(connect, clock, settings):
    settings.LEDGEPAY_DELIVERY_LEASE = 60
    others_claim = timezone.now() + datetime.timedelta(hours=1)

    def slow(transition: Transition) -> None:
        clock.advance(70)  # Past the lease: another deliverer claims "second".
        Reaction.objects.filter(receiver="second").update(claimed_until=others_claim)

    first = connect(Outside(slow), "first")
    second = connect(Outside(), "second")
    transition = a_transition()
    outcome = delivery.deliver(transition.pk)
    assert (outcome.succeeded, outcome.skipped, outcome.delivered) == (
        ["first"],
        ["second"],
        False,
    )
    assert (first.runs, second.runs) == (1, 0)
    transition.refresh_from_db()
    assert (transition.delivered_at, transition.attempts) == (None, 0)


def test_a_receiver_that_outruns_its_lease_is_logged(connect, settings, caplog):
    settings.LEDGEPAY_DELIVERY_LEASE = 0.01
    connect(Outside(lambda t: time.sleep(0.05)), "shop.slow_report")
    transition = a_transition()
    with caplog.at_level(logging.WARNING, logger="django_ledgepay.delivery"):
        assert delivery.deliver(transition.pk).delivered
    (record,) = [r for r in caplog.records if "lease" in r.getMessage()]
    assert "shop.slow_report" in record.getMessage()
    assert "LEDGEPAY_DELIVERY_LEASE" in record.getMessage()


# Receivers claimed apart


def test_the_deliverer_that_runs_the_last_receiver_marks_the_transition_delivered(connect):
    first = connect(Outside(), "first")
    transition = a_transition()
    # Another deliverer holds "first"; it finishes while this one runs "second".
    hour = timezone.now() + datetime.timedelta(hours=1)
    Reaction.objects.create(transition=transition, receiver="first", claimed_until=hour)

    def the_other_finishes(t: Transition) -> None:
        Reaction.objects.filter(receiver="first").update(
            succeeded_at=timezone.now(), claimed_until=None
        )

    second = connect(Outside(the_other_finishes), "second")
    outcome = delivery.deliver(transition.pk)
    assert (outcome.succeeded, outcome.skipped, outcome.delivered) == (["second"], ["first"], True)
    assert (first.runs, second.runs) == (0, 1)


def test_a_receiver_held_elsewhere_leaves_the_transition_to_its_holder(connect):
    connect(Outside(), "first")
    second = connect(Outside(), "second")
    transition = a_transition()
    hour = timezone.now() + datetime.timedelta(hours=1)
    Reaction.objects.create(transition=transition, receiver="first", claimed_until=hour)
    outcome = delivery.deliver(transition.pk)
    assert (outcome.succeeded, outcome.skipped, outcome.delivered) == (
        ["second"],
        ["first"],
        False,
    )
    transition.refresh_from_db()
    assert (transition.delivered_at, transition.attempts, transition.error) == (None, 0, "")
    # Its holder, once done, finds nothing else to run and marks it delivered.
    Reaction.objects.filter(receiver="first").update(succeeded_at=timezone.now())
    outcome = delivery.deliver(transition.pk)
    assert (outcome.succeeded, outcome.skipped, outcome.delivered) == ([], [], True)
    assert second.runs == 1


# The lease


def test_the_lease_is_a_setting_of_positive_seconds(settings):
    assert conf.LEDGEPAY_DELIVERY_LEASE == 300
    settings.LEDGEPAY_DELIVERY_LEASE = "30"
    assert conf.LEDGEPAY_DELIVERY_LEASE == 30
    assert check_tasks() == []
    for wrong in ("soon", 0, -5, float("nan")):
        settings.LEDGEPAY_DELIVERY_LEASE = wrong
        (warning,) = check_tasks()
        assert warning.id == "django_ledgepay.W007"
        assert "LEDGEPAY_DELIVERY_LEASE" in warning.msg


# Databases without upserts


def test_claims_without_upserts_are_taken_row_by_row(connect, monkeypatch):
    # What a database other than PostgreSQL and SQLite does: the ORM, a row at a time.
    monkeypatch.setattr(connection, "vendor", "other")
    seen = []
    outside = connect(Outside(lambda t: seen.append(delivery.deliver(t.pk))), "shop.ship")
    flaky = connect(Outside(lambda t: 1 / 0, every_run=True), "shop.flaky")
    transition = a_transition()
    outcome = delivery.deliver(transition.pk)
    assert (outcome.succeeded, outcome.failed) == (["shop.ship"], ["shop.flaky"])
    (second,) = seen
    assert second.skipped == ["shop.ship", "shop.flaky"]
    assert (outside.runs, flaky.runs) == (1, 1)
    # The failure ended its claim: its retry claims the row again, and runs it.
    outcome = delivery.deliver(transition.pk)
    assert (outcome.succeeded, outcome.failed) == ([], ["shop.flaky"])
    assert (outside.runs, flaky.runs) == (1, 2)
    assert list(
        Reaction.objects.order_by("receiver").values_list("receiver", "claimed_until")
    ) == [
        ("shop.flaky", None),
        ("shop.ship", None),
    ]
