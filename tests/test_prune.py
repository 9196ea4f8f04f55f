from __future__ import annotations

import datetime
import itertools
import re
from io import StringIO

import pytest

from django.core.management import CommandError, call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from django_ledgepay.models import Reaction, Transition, WebhookEvent
from tests.factories import make_payment

pytestmark = pytest.mark.django_db

_bodies = itertools.count()


def event(status, *, days_ago, event_type="payment.succeeded"):
    created = WebhookEvent.objects.create(
        event_type=event_type,
        payload={"event": event_type, "data": {"id": "pay_1"}},
        body_sha256=f"{next(_bodies):064x}",
        status=status,
    )
    received = timezone.now() - datetime.timedelta(days=days_ago)
    WebhookEvent.objects.filter(pk=created.pk).update(received_at=received)
    return created


def transition(webhook_event, *, delivered):
    return Transition.objects.create(
        signal="payment_succeeded",
        payment=make_payment(),
        source="webhook",
        event=webhook_event,
        delivered_at=timezone.now() if delivered else None,
    )


def prune(*args):
    out = StringIO()
    call_command("ledgepay_prune", *args, stdout=out)
    return out.getvalue()


def test_prune_deletes_only_old_processed_and_ignored_events():
    old_processed = event("processed", days_ago=31)
    old_ignored = event("ignored", days_ago=40, event_type="customer.created")
    kept = {
        event("failed", days_ago=60).pk,
        event("received", days_ago=60).pk,
        event("processed", days_ago=29).pk,
        event("ignored", days_ago=1).pk,
    }
    waiting = event("processed", days_ago=90)
    transition(waiting, delivered=False)
    kept.add(waiting.pk)
    done = event("processed", days_ago=90)
    delivered = transition(done, delivered=True)

    output = prune("--days", "30")

    assert "Deleted 3 webhook events received before " in output
    assert set(WebhookEvent.objects.values_list("pk", flat=True)) == kept
    assert not WebhookEvent.objects.filter(pk__in=[old_processed.pk, old_ignored.pk]).exists()
    delivered.refresh_from_db()
    assert delivered.event is None  # The audit trail stays, without the event.
    assert Transition.objects.count() == 2


def test_prune_with_nothing_to_delete_says_so():
    event("processed", days_ago=2)
    assert "Deleted 0 webhook events" in prune("--days=7")
    assert WebhookEvent.objects.count() == 1


def test_prune_dry_run_counts_and_deletes_nothing():
    for _ in range(3):
        event("processed", days_ago=10)
    assert "Would delete 3 webhook events received before" in prune("--days=7", "--dry-run")
    assert WebhookEvent.objects.count() == 3


def queries_to_prune(count, batch_size):
    WebhookEvent.objects.all().delete()
    for _ in range(count):
        event("processed", days_ago=100)
    with CaptureQueriesContext(connection) as captured:
        output = prune("--days=30", f"--batch-size={batch_size}")
    assert f"Deleted {count} webhook event" in output
    assert not WebhookEvent.objects.exists()
    return len(captured)


def test_prune_deletes_in_batches_of_constant_queries():
    one_batch = queries_to_prune(4, batch_size=4)
    three_batches = queries_to_prune(12, batch_size=4)
    # Each batch costs the same; the whole run a few more, once: the events' last,
    # empty batch, and the receivers' records' one (there are none here).
    per_batch = (three_batches - one_batch) // 2
    assert three_batches - one_batch == 2 * per_batch
    assert one_batch == per_batch + 2
    assert per_batch <= 8


# The receivers' records


def delivered_days_ago(days, *receivers, delivered=True):
    """A transition delivered ``days`` ago (or not delivered) with a record per receiver."""
    moment = timezone.now() - datetime.timedelta(days=days)
    made = Transition.objects.create(
        signal="payment_succeeded",
        payment=make_payment(),
        source="api",
        created_at=moment,
        delivered_at=moment if delivered else None,
    )
    for name in receivers:
        Reaction.objects.create(
            transition=made, receiver=name, attempts=1, succeeded_at=moment if delivered else None
        )
    return made


def test_prune_deletes_the_receivers_records_of_transitions_delivered_before_the_cutoff():
    old = delivered_days_ago(40, "shop.mark_paid", "shop.send_receipt")
    older = delivered_days_ago(400, "shop.mark_paid")
    recent = delivered_days_ago(29, "shop.mark_paid")
    # Not delivered, however old: its records are what keeps a receiver from running twice.
    failing = delivered_days_ago(90, "shop.mark_paid", "shop.send_receipt", delivered=False)

    output = prune("--days=30")

    assert re.search(
        r"^Deleted 3 receivers' records of transitions delivered before ", output, re.M
    )
    left = set(Reaction.objects.values_list("transition_id", flat=True))
    assert left == {recent.pk, failing.pk}
    assert Reaction.objects.filter(transition=failing).count() == 2
    # The transitions stay: they are the payments' audit trail.
    assert set(Transition.objects.values_list("pk", flat=True)) == {
        old.pk,
        older.pk,
        recent.pk,
        failing.pk,
    }
    assert "Deleted 0 receivers' records" in prune("--days=30")


def test_prune_dry_run_counts_the_receivers_records_too():
    delivered_days_ago(40, "a", "b")
    output = prune("--days=30", "--dry-run")
    assert "Would delete 2 receivers' records of transitions delivered before " in output
    assert Reaction.objects.count() == 2


def test_prune_deletes_the_receivers_records_in_batches_reading_each_row_once():
    for _ in range(5):
        delivered_days_ago(40, "a")
    kept = delivered_days_ago(40, "a", delivered=False)
    selects = []

    def record(execute, sql, params, many, context):
        if sql.lstrip().upper().startswith("SELECT") and "ledgepay_reaction" in sql:
            selects.append(sql)
        return execute(sql, params, many, context)

    with connection.execute_wrapper(record):
        output = prune("--days=30", "--batch-size=2")
    assert "Deleted 5 receivers' records" in output
    assert list(Reaction.objects.values_list("transition_id", flat=True)) == [kept.pk]
    # Three batches of at most 2 and the last, empty one: each from where the last ended.
    assert len(selects) == 4
    assert all("LIMIT 2" in sql for sql in selects)


def test_prune_never_loads_more_than_a_batch():
    for _ in range(5):
        event("ignored", days_ago=100)
    selects = []

    def record(execute, sql, params, many, context):
        if sql.lstrip().upper().startswith("SELECT") and "ledgepay_webhookevent" in sql:
            selects.append(sql)
        return execute(sql, params, many, context)

    with connection.execute_wrapper(record):
        prune("--days=30", "--batch-size=2")
    assert WebhookEvent.objects.count() == 0
    assert selects and all("LIMIT 2" in sql or "IN (" in sql for sql in selects)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "the following arguments are required: --days"),
        (("--days=0",), "--days must be a whole number, at least 1."),
        (("--days=-3",), "--days must be a whole number, at least 1."),
        (("--days=week",), "invalid int value"),
        (("--days=3", "--batch-size=0"), "--batch-size must be a whole number from 1 to 10000."),
        (("--days=3", "--batch-size=10001"), "--batch-size must be a whole number from 1 to"),
        (("--days=3", "--batch-size=9223372036854775808"), "--batch-size must be a whole"),
        (("--days=800000",), "reaches before the calendar's start"),
        (("--days=1000000000",), "reaches before the calendar's start"),
    ],
)
def test_prune_refuses_bad_days(args, message):
    event("processed", days_ago=100)
    with pytest.raises(CommandError, match=message) as excinfo:
        call_command("ledgepay_prune", *args, stdout=StringIO())
    assert excinfo.value.returncode == 2
    assert WebhookEvent.objects.count() == 1


def test_prune_refuses_a_batch_size_no_database_holds_before_any_query(
    django_assert_num_queries,
):
    event("processed", days_ago=100)
    with django_assert_num_queries(0), pytest.raises(CommandError) as excinfo:
        call_command("ledgepay_prune", days=30, batch_size=2**63, stdout=StringIO())
    assert str(excinfo.value) == "--batch-size must be a whole number from 1 to 10000."
    assert excinfo.value.returncode == 2


def test_prune_names_its_cutoff_as_the_reports_do():
    output = prune("--days=7", "--dry-run")
    found = re.findall(r"(?:received|delivered) before (\S+)\.$", output.strip(), re.M)
    assert len(found) == 2, output
    for cutoff in found:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", cutoff), output
