"""Upgrading a database with data from 0.1 keeps every row."""

from __future__ import annotations

import io

import pytest

from django.core.management import call_command
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.db.migrations.loader import MigrationLoader

APP = "django_ledgepay"


def test_each_release_adds_one_migration():
    loader = MigrationLoader(None, ignore_no_migrations=True)
    names = sorted(name for app, name in loader.disk_migrations if app == APP)
    # 0.1, 0.2, and the next release's (the receivers' claims; erasure).
    assert len(names) == 4
    assert names[0] == "0001_initial" and names[1].startswith("0002_")
    assert names[2] == "0003_reaction_claimed_until"
    assert names[3] == "0004_erasure_payment_erased_at"


@pytest.mark.django_db(transaction=True)
def test_the_claims_migration_adds_one_nullable_column_and_rewrites_nothing():
    out = io.StringIO()
    call_command("sqlmigrate", APP, "0003", stdout=out)
    statements = [
        line for line in out.getvalue().splitlines() if line and not line.startswith("--")
    ]
    # Safe on a large table: no default to write into every row, no index to build, no
    # data migration.
    assert statements == [
        *(["BEGIN;"] if connection.features.can_rollback_ddl else []),
        'ALTER TABLE "django_ledgepay_reaction" ADD COLUMN "claimed_until" '
        f"{'timestamp with time zone' if connection.vendor == 'postgresql' else 'datetime'} "
        "NULL;",
        *(["COMMIT;"] if connection.features.can_rollback_ddl else []),
    ]


@pytest.mark.django_db(transaction=True)
def test_the_erasure_migration_adds_a_table_and_one_nullable_column():
    out = io.StringIO()
    call_command("sqlmigrate", APP, "0004", stdout=out)
    statements = [
        line for line in out.getvalue().splitlines() if line and not line.startswith("--")
    ]
    body = [s for s in statements if s not in ("BEGIN;", "COMMIT;")]
    # A new, empty table, and a column without a default on payments: no row rewritten.
    assert body[0].startswith('CREATE TABLE "django_ledgepay_erasure" (')
    assert body[1:] == [
        'ALTER TABLE "django_ledgepay_payment" ADD COLUMN "erased_at" '
        f"{'timestamp with time zone' if connection.vendor == 'postgresql' else 'datetime'} "
        "NULL;"
    ]


@pytest.mark.django_db(transaction=True)
def test_upgrading_from_0_1_keeps_every_row():
    executor = MigrationExecutor(connection)
    latest = executor.loader.graph.leaf_nodes(APP)
    executor.migrate([(APP, "0001_initial")])
    old = MigrationExecutor(connection).loader.project_state([(APP, "0001_initial")]).apps
    Payment = old.get_model(APP, "Payment")
    Refund = old.get_model(APP, "Refund")
    WebhookEvent = old.get_model(APP, "WebhookEvent")
    payment = Payment.objects.create(
        ledgepay_id="pay_old", status="succeeded", amount=5000, currency="EUR"
    )
    Refund.objects.create(
        ledgepay_id="re_old", payment=payment, amount=2000, currency="EUR", status="succeeded"
    )
    WebhookEvent.objects.create(
        event_type="payment.succeeded",
        object_id="pay_old",
        payload={"event": "payment.succeeded", "data": {"id": "pay_old"}},
        body_sha256="0" * 64,
        status="processed",
    )

    executor = MigrationExecutor(connection)
    executor.migrate(latest)

    new = executor.loader.project_state(latest).apps
    payment = new.get_model(APP, "Payment").objects.get()
    assert (payment.ledgepay_id, payment.status, payment.amount) == ("pay_old", "succeeded", 5000)
    refund = new.get_model(APP, "Refund").objects.get()
    assert (refund.ledgepay_id, refund.payment_id, refund.amount) == ("re_old", payment.pk, 2000)
    event = new.get_model(APP, "WebhookEvent").objects.get()
    assert (event.status, event.note) == ("processed", "")
    # The new tables start empty: the past is not rewritten into transitions or requests.
    assert new.get_model(APP, "Transition").objects.count() == 0
    assert new.get_model(APP, "RefundRequest").objects.count() == 0
