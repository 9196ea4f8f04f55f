"""Benchmark the admin at scale: its lists at 1,000 and at 100,000 payments, and the dashboard.

Run from the repository root, with PostgreSQL reachable::

    .venv/bin/python bench/admin_scale.py [--repeat 7] [--payments 100000] [--refunds 150000]

The server comes from ``DATABASE_URL`` (default ``postgres://postgres@127.0.0.1:5432/``); the
database is always ``ledgepay_admin_bench`` on that server, whatever ``DATABASE_URL`` names,
so the tests' database is never touched. It is dropped and created again, then migrated, at
the start of every run.

What a run does:

1. Fill 1,000 payments with 1,500 refunds (and webhook events, transitions and a
   reconciliation for the dashboard) with ``COPY``; ``VACUUM ANALYZE``.
2. Request each page with Django's test client as a logged-in superuser: twice untimed
   (warm-up), then ``--repeat`` times timed; one more request, untimed, counts its queries.
3. Fill up to 100,000 payments with 150,000 refunds, ``VACUUM ANALYZE``, and measure again.
4. Print, per page, the median at both sizes, their ratio and the query counts; the lists
   must stay within 2x of their time at 1,000 with the same number of queries, and the
   dashboard under 200 ms at 100,000.

Exits 1 when a target is missed or a page does not answer 200, else 0.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DATABASE = "ledgepay_admin_bench"
#: The lists' time at 100,000 payments against 1,000.
LIST_RATIO_TARGET = 2.0
#: The dashboard's median at 100,000 payments, in milliseconds.
DASHBOARD_TARGET_MS = 200.0
CURRENCIES = ("EUR", "EUR", "EUR", "USD", "USD", "GBP", "JPY", "KWD")
#: The window the generated payments are spread over, ending now.
SPREAD_DAYS = 90

#: (label, path, whether it is held to the 2x ratio). Paths are under /admin/django_ledgepay/.
LISTS = (
    ("payments", "payment/", True),
    ("payments, EUR only", "payment/?currency=EUR", True),
    ("payments, succeeded", "payment/?status__exact=succeeded", True),
    ("payments, page 5", "payment/?p=5", True),
    ("refunds", "refund/", True),
    ("refunds, succeeded", "refund/?status__exact=succeeded", True),
    ("payments by refunded (sorts the whole table)", "payment/?o=3", False),
)
DASHBOARDS = (
    ("dashboard, 30 days", "payment/dashboard/"),
    ("dashboard, 90 days", "payment/dashboard/?days=90"),
)


def configure(server_url: str) -> None:
    import environ

    from django.conf import settings

    database = environ.Env.db_url_config(server_url)
    if database["ENGINE"] != "django.db.backends.postgresql":
        sys.exit(f"DATABASE_URL must name a PostgreSQL server, not {database['ENGINE']}.")
    database["NAME"] = DATABASE
    settings.configure(
        DEBUG=False,
        SECRET_KEY="bench-only-not-secret",
        ALLOWED_HOSTS=["testserver"],
        USE_TZ=True,
        TIME_ZONE="UTC",
        ROOT_URLCONF=__name__,
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
        DATABASES={"default": {**database, "CONN_MAX_AGE": 60}},
        INSTALLED_APPS=[
            "django.contrib.admin",
            "django.contrib.auth",
            "django.contrib.contenttypes",
            "django.contrib.sessions",
            "django.contrib.messages",
            "django.contrib.staticfiles",
            "django_ledgepay",
        ],
        MIDDLEWARE=[
            "django.middleware.security.SecurityMiddleware",
            "django.contrib.sessions.middleware.SessionMiddleware",
            "django.middleware.common.CommonMiddleware",
            "django.middleware.csrf.CsrfViewMiddleware",
            "django.contrib.auth.middleware.AuthenticationMiddleware",
            "django.contrib.messages.middleware.MessageMiddleware",
        ],
        TEMPLATES=[
            {
                "BACKEND": "django.template.backends.django.DjangoTemplates",
                "APP_DIRS": True,
                "OPTIONS": {
                    "context_processors": [
                        "django.template.context_processors.request",
                        "django.contrib.auth.context_processors.auth",
                        "django.contrib.messages.context_processors.messages",
                    ]
                },
            }
        ],
        STATIC_URL="/static/",
        PASSWORD_HASHERS=["django.contrib.auth.hashers.MD5PasswordHasher"],
        LEDGEPAY_API_KEY="sk_test_bench_not_secret",
        LEDGEPAY_API_BASE="http://127.0.0.1:9/v1",
        LEDGEPAY_WEBHOOK_SECRET="whsec_bench",
    )


def urlpatterns_() -> list[Any]:
    from django.contrib import admin
    from django.urls import path

    return [path("admin/", admin.site.urls)]


def create_database(server_url: str) -> None:
    import psycopg

    from django.db import connection

    params = connection.get_connection_params()
    params["dbname"] = "postgres"
    with psycopg.connect(**params, autocommit=True) as admin_connection:
        # A new database each run: migrated from scratch, with today's indexes.
        admin_connection.execute(f'DROP DATABASE IF EXISTS "{DATABASE}"')
        admin_connection.execute(f'CREATE DATABASE "{DATABASE}"')


# Filling the tables


def payment_rows(start: int, stop: int, now: datetime.datetime) -> Iterator[tuple[Any, ...]]:
    rng = random.Random(start)
    for pk in range(start, stop):
        created = now - datetime.timedelta(seconds=rng.uniform(0, SPREAD_DAYS * 86400))
        roll = rng.random()
        status = (
            "succeeded"
            if roll < 0.85
            else "failed"
            if roll < 0.92
            else "canceled"
            if roll < 0.97
            else "pending"
        )
        completed = None if status == "pending" else created + datetime.timedelta(seconds=40)
        currency = CURRENCIES[pk % len(CURRENCIES)]
        amount = rng.randint(500, 50000) * (10 if currency == "KWD" else 1)
        yield (
            pk,
            f"pay_bench_{pk:08d}",
            status,
            amount,
            currency,
            f"Order #{pk}",
            f"customer{pk}@example.com",
            f"Customer {pk}",
            "{}",
            "",
            "",
            "",
            created,
            completed,
            now,
        )


def fill(payments: int, refunds: int, now: datetime.datetime) -> None:
    """Add payments and refunds up to these totals; refunds go to succeeded payments, one or
    two each, each refund a part of its payment."""
    from django.db import connection

    from django_ledgepay.models import Payment, Refund

    have_payments = Payment.objects.count()
    have_refunds = Refund.objects.count()
    raw = connection.connection
    with raw.cursor() as cursor:
        with cursor.copy(
            "COPY django_ledgepay_payment (id, ledgepay_id, status, amount, currency, "
            "description, customer_email, customer_name, metadata, checkout_url, success_url, "
            "cancel_url, created_at, completed_at, updated_at) FROM STDIN"
        ) as copy:
            for row in payment_rows(have_payments + 1, payments + 1, now):
                copy.write_row(row)
        cursor.execute(
            "SELECT id, amount, currency, created_at FROM django_ledgepay_payment "
            "WHERE status = 'succeeded' AND id > %s ORDER BY id",
            [have_payments],
        )
        succeeded = cursor.fetchall()
        wanted = refunds - have_refunds
        with cursor.copy(
            "COPY django_ledgepay_refund (id, ledgepay_id, payment_id, amount, currency, "
            "reason, status, created_at, updated_at) FROM STDIN"
        ) as copy:
            pk = have_refunds + 1
            index = 0
            while wanted > 0 and succeeded:
                payment_id, amount, currency, created = succeeded[index % len(succeeded)]
                # Two passes over the succeeded payments at most: a third of each at a time.
                status = ("succeeded", "succeeded", "succeeded", "pending", "failed")[pk % 5]
                copy.write_row(
                    (
                        pk,
                        f"re_bench_{pk:08d}",
                        payment_id,
                        max(1, amount // 3),
                        currency,
                        "customer_request",
                        status,
                        created + datetime.timedelta(hours=1 + index // len(succeeded)),
                        now,
                    )
                )
                pk += 1
                index += 1
                wanted -= 1
        for table in ("django_ledgepay_payment", "django_ledgepay_refund"):
            cursor.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                f"(SELECT max(id) FROM {table}))"
            )
    raw.commit()


def fill_dashboard_extras(payments: int, now: datetime.datetime) -> None:
    """Webhook events (a few failed and unprocessed), transitions (a few undelivered) and one
    reconciliation with drift, in proportion to the payments."""
    from django.db import connection

    from django_ledgepay.models import Reconciliation, Transition, WebhookEvent

    have_events = WebhookEvent.objects.count()
    have_transitions = Transition.objects.count()
    raw = connection.connection
    with raw.cursor() as cursor:
        with cursor.copy(
            "COPY django_ledgepay_webhookevent (event_type, object_id, payload, body_sha256, "
            "status, error, note, attempts, received_at, processed_at) FROM STDIN"
        ) as copy:
            for pk in range(have_events + 1, payments + 1):
                status = (
                    "failed" if pk % 997 == 0 else "received" if pk % 4999 == 0 else "processed"
                )
                received = now - datetime.timedelta(seconds=(payments - pk) * 70)
                copy.write_row(
                    (
                        "payment.succeeded",
                        f"pay_bench_{pk:08d}",
                        "{}",
                        f"{pk:064d}",
                        status,
                        "LedgePay could not be reached" if status == "failed" else "",
                        "",
                        1,
                        received,
                        None if status == "received" else received,
                    )
                )
        with cursor.copy(
            "COPY django_ledgepay_transition (signal, payment_id, source, created_at, "
            "delivered_at, attempts, next_attempt_at, error) FROM STDIN"
        ) as copy:
            for pk in range(have_transitions + 1, payments + 1):
                delivered = pk % 1999 != 0
                created = now - datetime.timedelta(seconds=(payments - pk) * 70)
                copy.write_row(
                    (
                        "payment_succeeded",
                        pk,
                        "webhook",
                        created,
                        created if delivered else None,
                        1,
                        None if delivered else now,
                        "" if delivered else "receiver failed",
                    )
                )
    raw.commit()
    Reconciliation.objects.all().delete()
    Reconciliation.objects.create(
        started_at=now,
        finished_at=now,
        since=now - datetime.timedelta(days=30),
        until=now,
        outcome=Reconciliation.Outcome.DRIFT,
        checked=payments,
        drift=[
            {"kind": "status", "payment": f"pay_bench_{pk:08d}"}
            for pk in range(1, payments, max(1, payments // 40))
        ],
    )


def analyze() -> None:
    from django.db import connection

    raw = connection.connection
    previous = raw.autocommit
    raw.autocommit = True
    try:
        with raw.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE")
    finally:
        raw.autocommit = previous


# Measuring


def measure(client: Any, path: str, repeat: int) -> tuple[float, int, float]:
    """The median time of ``path`` in ms, its query count and the SQL time of one request."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    for _ in range(2):
        check(client.get(path), path)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        response = client.get(path)
        times.append((time.perf_counter() - start) * 1000)
        check(response, path)
    with CaptureQueriesContext(connection) as queries:
        check(client.get(path), path)
    sql_ms = sum(float(query["time"]) for query in queries.captured_queries) * 1000
    return statistics.median(times), len(queries), sql_ms


def check(response: Any, path: str) -> None:
    if response.status_code != 200:
        raise SystemExit(f"{path} answered {response.status_code}.")


def describe_machine() -> str:
    from django.db import connection

    from bench.machine import cpu_model

    with connection.cursor() as cursor:
        cursor.execute("SHOW server_version")
        server = cursor.fetchone()[0]
    return (
        f"{platform.node()}: {cpu_model()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, PostgreSQL {server} on the same machine"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=7, help="timed requests per page")
    parser.add_argument("--small", type=int, default=1000, help="payments at the first size")
    parser.add_argument("--payments", type=int, default=100_000, help="at the second size")
    parser.add_argument("--refunds", type=int, default=150_000, help="at the second size")
    parser.add_argument("--no-dashboard", action="store_true", help="time the lists only")
    args = parser.parse_args(argv)

    server_url = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")
    configure(server_url)
    global urlpatterns
    import django

    django.setup()
    urlpatterns = urlpatterns_()

    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.test import Client

    create_database(server_url)
    call_command("migrate", verbosity=0)
    user = get_user_model().objects.create_superuser("bench", password="bench")
    client = Client()
    client.force_login(user)
    now = datetime.datetime.now(datetime.timezone.utc)

    print(describe_machine())
    sizes = (
        (args.small, args.small * args.refunds // args.payments),
        (args.payments, args.refunds),
    )
    results: dict[str, dict[int, tuple[float, int, float]]] = {}
    for payments, refunds in sizes:
        started = time.perf_counter()
        fill(payments, refunds, now)
        fill_dashboard_extras(payments, now)
        analyze()
        print(
            f"\nfilled {payments:,} payments, {refunds:,} refunds "
            f"in {time.perf_counter() - started:.1f} s"
        )
        pages = [(label, path) for label, path, _ in LISTS]
        if payments == args.payments and not args.no_dashboard:
            pages += list(DASHBOARDS)
        for label, path in pages:
            median, queries, sql_ms = measure(
                client, f"/admin/django_ledgepay/{path}", args.repeat
            )
            results.setdefault(label, {})[payments] = (median, queries, sql_ms)
            print(f"  {label:<46} {median:7.1f} ms  {queries:2d} queries  (SQL {sql_ms:.1f} ms)")

    small, large = args.small, args.payments
    print(f"\n{'page':<46} {small:>9,} {large:>9,}  ratio  queries")
    failures = []
    for label, _, held in LISTS:
        (t_small, q_small, _), (t_large, q_large, _) = results[label][small], results[label][large]
        ratio = t_large / t_small
        verdict = ""
        if held:
            ok = ratio <= LIST_RATIO_TARGET and q_small == q_large
            verdict = "ok" if ok else f"MISSED (target {LIST_RATIO_TARGET}x, same queries)"
            if not ok:
                failures.append(label)
        else:
            verdict = "(not held to the target)"
        print(
            f"{label:<46} {t_small:6.1f} ms {t_large:6.1f} ms  {ratio:4.2f}x  "
            f"{q_small} / {q_large}  {verdict}"
        )
    for label, _ in () if args.no_dashboard else DASHBOARDS:
        t_large, queries, _ = results[label][large]
        ok = t_large < DASHBOARD_TARGET_MS
        if not ok:
            failures.append(label)
        print(
            f"{label:<46} {'':>9} {t_large:6.1f} ms         {queries}  "
            f"{'ok' if ok else f'MISSED (target {DASHBOARD_TARGET_MS:.0f} ms)'}"
        )
    if failures:
        print(f"\nMissed: {', '.join(failures)}")
        return 1
    return 0


urlpatterns: list[Any] = []

if __name__ == "__main__":
    sys.exit(main())
