"""Benchmark the admin at scale: every page at 1,000 payments beside the same page at
1,000,000, on PostgreSQL.

Run from the repository root, with PostgreSQL reachable::

    .venv/bin/python bench/admin_scale.py [--repeat 7] [--payments 1000000] [--keep] [--reuse]

The server comes from ``DATABASE_URL`` (default ``postgres://postgres@127.0.0.1:5432/``); the
databases are always ``--database`` (default ``ledgepay_admin_bench``) for the large size and
the same name with ``_1k`` for the small one, whatever ``DATABASE_URL`` names, so the tests'
database is never touched. Both are dropped at the end unless ``--keep``.

What a run does:

1. Create, migrate and fill the small database: 1,000 payments spread over 90 days (each
   with an order id in its metadata), 1,500 refunds, a webhook event and a transition per
   payment (a few failed or undelivered, and the last 120 of each), a reconciliation with
   drift; ``COPY``, then ``VACUUM ANALYZE``.
2. The same for the large one, 1,000,000 payments (1,500,000 refunds), unless ``--reuse``
   finds it already filled to that size: then it is only migrated, and the migration timed.
3. Request each page with Django's test client as a logged-in superuser: twice untimed
   at each size (warm-up), then ``--repeat`` times at each size in turn, small then large,
   so that a busy machine slows both alike; one more request per size counts its queries.
4. Print, per page, the median at both sizes, their ratio and the query counts. A page
   held to the target must stay within 2x of its time at the small size with the same
   number of queries.

Exits 1 when a target is missed or a page does not answer 200, else 0.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
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
#: Each held page's time at the large size against the small.
RATIO_TARGET = 2.0
CURRENCIES = ("EUR", "EUR", "EUR", "USD", "USD", "GBP", "JPY", "KWD")
#: The window the generated payments are spread over, in days, ending an hour before the
#: run: the pages are timed between sales (right after one, the dashboard computes its day
#: again; the page "just after a sale" times that).
SPREAD_DAYS = 90
#: The last webhook events failed and the last transitions not delivered, at every size: the
#: pages of failed events and undelivered transitions are full at both sizes.
INCIDENT = 120
#: The payment, refund, event and transition the pages about one object show: it exists at
#: both sizes, with the same values (the rows are generated from their id).
ONE = 500


@dataclasses.dataclass(frozen=True)
class Page:
    label: str
    #: Under /admin/django_ledgepay/.
    path: str
    #: Whether it is held to the 2x target.
    held: bool = True
    #: Whether a payment is stamped as changed (as a webhook would) before each request.
    after_a_sale: bool = False


PAYMENT = f"pay_bench_{ONE:08d}"
REFUND = f"re_bench_{ONE:08d}"
EMAIL = f"customer{ONE}@example.com"
PAGES = (
    Page("payments", "payment/"),
    Page("payments, EUR only", "payment/?currency=EUR"),
    Page("payments, succeeded", "payment/?status__exact=succeeded"),
    Page("payments, refund requests unresolved", "payment/?refund_request=unknown"),
    Page("payments, page 5", "payment/?p=5"),
    Page("payments, search an id", f"payment/?q={PAYMENT}"),
    # pay_bench_0000050: ten payments.
    Page("payments, search an id's start", f"payment/?q={PAYMENT[:-1]}"),
    Page("payments, search an e-mail", f"payment/?q={EMAIL}"),
    Page("payments, search an e-mail's start", f"payment/?q=Customer{ONE}%40"),
    Page("payments, search an order id", f"payment/?q={ONE}"),
    Page("payments, search a name (reads every row)", f"payment/?q=Customer+{ONE}", False),
    Page("payments by refunded (sorts the whole table)", "payment/?o=3", False),
    Page("a payment's page", f"payment/{ONE}/change/"),
    Page("the refund page", "payment/{refundable}/refund/"),
    Page("dashboard, 30 days", "payment/dashboard/"),
    Page("dashboard, 90 days", "payment/dashboard/?days=90"),
    # Its day (a day of payment 500) computed again: a day's payments and refunds.
    Page("dashboard, 90 days, just after a sale", "payment/dashboard/?days=90", False, True),
    Page("refunds", "refund/"),
    Page("refunds, succeeded", "refund/?status__exact=succeeded"),
    Page("refunds, search a refund's id", f"refund/?q={REFUND}"),
    Page("refunds, search a payment's id", f"refund/?q={PAYMENT}"),
    Page("a refund's page", f"refund/{ONE}/change/"),
    Page("webhook events", "webhookevent/"),
    Page("webhook events, failed", "webhookevent/?status__exact=failed"),
    Page("webhook events, search an object's id", f"webhookevent/?q={PAYMENT}"),
    Page("an event's page", f"webhookevent/{ONE}/change/"),
    Page("transitions", "transition/"),
    Page("transitions, not delivered", "transition/?delivery=undelivered"),
    Page("transitions, search a payment's id", f"transition/?q={PAYMENT}"),
    Page("a transition's page", f"transition/{ONE}/change/"),
)


def configure(server_url: str, database: str) -> None:
    import environ

    from django.conf import settings

    server = environ.Env.db_url_config(server_url)
    if server["ENGINE"] != "django.db.backends.postgresql":
        engine = server["ENGINE"]
        sys.exit(f"DATABASE_URL must name a PostgreSQL server, not {engine}.")
    settings.configure(
        DEBUG=False,
        SECRET_KEY="bench-only-not-secret",
        ALLOWED_HOSTS=["testserver"],
        USE_TZ=True,
        TIME_ZONE="UTC",
        ROOT_URLCONF=__name__,
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
        DATABASES={
            "default": {**server, "NAME": f"{database}_1k", "CONN_MAX_AGE": 600},
            "large": {**server, "NAME": database, "CONN_MAX_AGE": 600},
        },
        # No session table: the same login is good at both sizes.
        SESSION_ENGINE="django.contrib.sessions.backends.signed_cookies",
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


def server_connection() -> Any:
    """An autocommit connection to the server's ``postgres`` database."""
    import psycopg

    from django.db import connections

    params = connections["default"].get_connection_params()
    params["dbname"] = "postgres"
    return psycopg.connect(**params, autocommit=True)


def create_database(name: str) -> None:
    with server_connection() as server:
        server.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        server.execute(f'CREATE DATABASE "{name}"')


def drop_databases(*names: str) -> None:
    from django.db import connections

    connections.close_all()
    with server_connection() as server:
        for name in names:
            server.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def filled_to(alias: str, payments: int) -> bool:
    """Whether the database ``alias`` exists and holds ``payments`` payments."""
    from django.db import OperationalError, ProgrammingError, connections

    try:
        with connections[alias].cursor() as cursor:
            cursor.execute("SELECT max(id) FROM django_ledgepay_payment")
            return bool(cursor.fetchone()[0] == payments)
    except (OperationalError, ProgrammingError):
        connections[alias].close()
        return False


# Filling the tables


def payment_rows(stop: int, now: datetime.datetime) -> Iterator[tuple[Any, ...]]:
    """Payments 1 to ``stop - 1``: the first thousand the same at every size."""
    rng = random.Random(1)
    for pk in range(1, stop):
        created = now - datetime.timedelta(seconds=3600 + rng.uniform(0, SPREAD_DAYS * 86400))
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
            json.dumps({"order_id": str(pk)}),
            "",
            "",
            "",
            created,
            completed,
            completed or created,
        )


def fill(alias: str, payments: int, refunds: int, now: datetime.datetime) -> None:
    """Payments, refunds (one or two of each succeeded payment, each a part of it),
    webhook events (a few failed, a few unprocessed) and transitions (a few undelivered),
    and one reconciliation with drift."""
    from django.db import connections

    from django_ledgepay.models import Reconciliation

    connection = connections[alias]
    connection.ensure_connection()
    raw = connection.connection
    with raw.cursor() as cursor:
        with cursor.copy(
            "COPY django_ledgepay_payment (id, ledgepay_id, status, amount, currency, "
            "description, customer_email, customer_name, metadata, checkout_url, success_url, "
            "cancel_url, created_at, completed_at, updated_at) FROM STDIN"
        ) as copy:
            for row in payment_rows(payments + 1, now):
                copy.write_row(row)
        cursor.execute(
            "SELECT id, amount, currency, created_at FROM django_ledgepay_payment "
            "WHERE status = 'succeeded' ORDER BY id"
        )
        succeeded = cursor.fetchall()
        with cursor.copy(
            "COPY django_ledgepay_refund (id, ledgepay_id, payment_id, amount, currency, "
            "reason, status, created_at, updated_at) FROM STDIN"
        ) as copy:
            for index in range(min(refunds, 2 * len(succeeded))):
                pk = index + 1
                payment_id, amount, currency, created = succeeded[index % len(succeeded)]
                status = ("succeeded", "succeeded", "succeeded", "pending", "failed")[pk % 5]
                refunded = created + datetime.timedelta(minutes=10 + index // len(succeeded))
                copy.write_row(
                    (
                        pk,
                        f"re_bench_{pk:08d}",
                        payment_id,
                        max(1, amount // 3),
                        currency,
                        "customer_request",
                        status,
                        refunded,
                        refunded,
                    )
                )
        with cursor.copy(
            "COPY django_ledgepay_webhookevent (id, event_type, object_id, payload, "
            "body_sha256, status, error, note, attempts, received_at, processed_at) FROM STDIN"
        ) as copy:
            for pk in range(1, payments + 1):
                # A few failed all along, and the last INCIDENT (LedgePay out of reach).
                failed = pk % 997 == 0 or pk > payments - INCIDENT
                status = "failed" if failed else "received" if pk % 4999 == 0 else "processed"
                received = now - datetime.timedelta(seconds=(payments - pk) * 7)
                copy.write_row(
                    (
                        pk,
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
            "COPY django_ledgepay_transition (id, signal, payment_id, source, created_at, "
            "delivered_at, attempts, next_attempt_at, error) FROM STDIN"
        ) as copy:
            for pk in range(1, payments + 1):
                # A few given up on all along, and the last INCIDENT (a receiver failing).
                delivered = pk % 1999 != 0 and pk <= payments - INCIDENT
                created = now - datetime.timedelta(seconds=(payments - pk) * 7)
                copy.write_row(
                    (
                        pk,
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
        for table in ("payment", "refund", "webhookevent", "transition"):
            cursor.execute(
                f"SELECT setval(pg_get_serial_sequence('django_ledgepay_{table}', 'id'), "
                f"(SELECT max(id) FROM django_ledgepay_{table}))"
            )
    raw.commit()
    Reconciliation.objects.using(alias).create(
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


def analyze(alias: str, vacuum: bool = True) -> None:
    from django.db import connections

    raw = connections[alias].connection
    previous = raw.autocommit
    raw.autocommit = True
    try:
        with raw.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE" if vacuum else "ANALYZE")
    finally:
        raw.autocommit = previous


def prepare(alias: str, payments: int, refunds: int, reuse: bool, now: datetime.datetime) -> str:
    """Create, migrate and fill the database ``alias`` (or only migrate it, if ``reuse``
    and it holds ``payments`` already); what was done, in words."""
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.contrib.auth.hashers import make_password
    from django.core.management import call_command
    from django.db import connections

    started = time.perf_counter()
    if reuse and filled_to(alias, payments):
        call_command("migrate", database=alias, verbosity=0)
        migrated = time.perf_counter() - started
        analyze(alias, vacuum=False)
        return f"{payments:,} payments kept, migrated in {migrated:.1f} s"
    connections[alias].close()
    create_database(settings.DATABASES[alias]["NAME"])
    call_command("migrate", database=alias, verbosity=0)
    # The same password hash at both sizes: a login's session is valid at both.
    get_user_model()(
        username="bench",
        password=make_password("bench", salt="bench"),
        is_staff=True,
        is_superuser=True,
    ).save(using=alias)
    fill(alias, payments, refunds, now)
    analyze(alias)
    took = time.perf_counter() - started
    return f"{payments:,} payments, {refunds:,} refunds filled in {took:.0f} s"


# Measuring


class Sizes:
    """The two databases, one of them Django's default at a time: the pages read
    ``default``, and each size keeps its connection open."""

    def __init__(self) -> None:
        from django.db import connections

        self.small = connections["default"]
        self.large = connections["large"]

    def use(self, wrapper: Any) -> None:
        from django.db import connections

        connections["default"] = wrapper


def timed(client: Any, page: Page) -> float:
    sell(page)
    start = time.perf_counter()
    response = client.get(page.path)
    elapsed = (time.perf_counter() - start) * 1000
    check(response, page.path)
    return elapsed


def count_queries(client: Any, page: Page) -> tuple[int, float]:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    sell(page)
    with CaptureQueriesContext(connection) as queries:
        check(client.get(page.path), page.path)
    return len(queries), sum(float(query["time"]) for query in queries.captured_queries) * 1000


def sell(page: Page) -> None:
    """For a page timed just after a sale: payment 500 stamped as a webhook stamps it."""
    from django.utils import timezone

    from django_ledgepay.models import Payment

    if page.after_a_sale:
        Payment.objects.filter(pk=ONE).update(updated_at=timezone.now())


def check(response: Any, path: str) -> None:
    if response.status_code != 200:
        raise SystemExit(f"{path} answered {response.status_code}.")


@dataclasses.dataclass
class Result:
    median: float
    queries: int
    sql_ms: float


def measure(client: Any, sizes: Sizes, page: Page, repeat: int) -> tuple[Result, Result]:
    """The page at both sizes: warmed up, then timed in turn, small then large."""
    from django_ledgepay.models import Payment

    wrappers = (sizes.small, sizes.large)
    stamps = [Payment.objects.using(wrapper.alias).get(pk=ONE).updated_at for wrapper in wrappers]
    try:
        return measure_sizes(client, sizes, page, repeat)
    finally:
        # Payment 500 as it was: a later run, with --reuse, finds no sale of its own.
        sizes.use(sizes.small)
        for wrapper, stamp in zip(wrappers, stamps, strict=True):
            Payment.objects.using(wrapper.alias).filter(pk=ONE).update(updated_at=stamp)


def measure_sizes(client: Any, sizes: Sizes, page: Page, repeat: int) -> tuple[Result, Result]:
    wrappers = (sizes.small, sizes.large)
    times: tuple[list[float], list[float]] = ([], [])
    for wrapper in wrappers:
        sizes.use(wrapper)
        for _ in range(2):
            timed(client, page)
    for _ in range(repeat):
        for wrapper, found in zip(wrappers, times, strict=True):
            sizes.use(wrapper)
            found.append(timed(client, page))
    results = []
    for wrapper, found in zip(wrappers, times, strict=True):
        sizes.use(wrapper)
        queries, sql_ms = count_queries(client, page)
        results.append(Result(statistics.median(found), queries, sql_ms))
    sizes.use(sizes.small)
    return results[0], results[1]


def refundable_payment() -> int:
    """A succeeded payment of the first thousand with something left to refund."""
    from django_ledgepay.models import Payment

    for payment in Payment.objects.filter(status="succeeded", pk__lte=1000).order_by("pk"):
        if payment.refundable_amount > 0:
            return payment.pk
    raise SystemExit("No refundable payment among the first 1,000.")


def describe_machine() -> str:
    from bench.machine import cpu_model

    with server_connection() as server_db:
        server = server_db.execute("SHOW server_version").fetchone()[0]
    node, cpu, cpus, python = (
        platform.node(),
        cpu_model(),
        os.cpu_count(),
        platform.python_version(),
    )
    load = os.getloadavg()[0]
    return (
        f"{node}: {cpu}, {cpus} CPUs, load average {load:.1f}, Python {python}, "
        f"PostgreSQL {server} on the same machine"
    )


def times(label: str, at_small: Result, at_large: Result) -> str:
    """A page's label and its median time at each size, on one line."""
    small, large = at_small.median, at_large.median
    return f"{label:<46} {small:6.1f} ms {large:8.1f} ms"


def report(
    pages: Sequence[Page], results: dict[str, tuple[Result, Result]], small: int, large: int
) -> list[str]:
    """Print the table; the labels of the held pages that missed the target."""
    print(f"\n{'page':<46} {small:>9,} {large:>11,}   ratio  queries")
    failures = []
    for page in pages:
        at_small, at_large = results[page.label]
        ratio = at_large.median / at_small.median
        queries = (at_small.queries, at_large.queries)
        if page.held:
            ok = ratio <= RATIO_TARGET and queries[0] == queries[1]
            verdict = "ok" if ok else f"MISSED (target {RATIO_TARGET}x, same queries)"
            if not ok:
                failures.append(page.label)
        else:
            verdict = "(not held to the target)"
        line = times(page.label, at_small, at_large)
        small_queries, large_queries = queries
        print(f"{line}  {ratio:5.2f}x  {small_queries:2d} / {large_queries:2d}  {verdict}")
    return failures


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=7, help="timed requests per page and size")
    parser.add_argument("--small", type=int, default=1000, help="payments at the first size")
    parser.add_argument("--payments", type=int, default=1_000_000, help="at the second size")
    parser.add_argument("--refunds", type=int, default=1_500_000, help="at the second size")
    parser.add_argument("--database", default=DATABASE, help="the large size's database")
    parser.add_argument("--reuse", action="store_true", help="keep a large database filled")
    parser.add_argument("--keep", action="store_true", help="leave both databases at the end")
    parser.add_argument("--pages", default="", help="only the pages whose label has this")
    args = parser.parse_args(argv)
    if args.small > 1000 or args.payments < args.small:
        parser.error("--small is at most 1000 (the pages show payment 500), --payments more")

    server_url = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")
    configure(server_url, args.database)
    global urlpatterns
    import django

    django.setup()
    urlpatterns = urlpatterns_()

    from django.contrib.auth import get_user_model
    from django.test import Client

    now = datetime.datetime.now(datetime.timezone.utc)
    print(describe_machine())
    small_refunds = args.small * args.refunds // args.payments
    print(prepare("default", args.small, small_refunds, False, now))
    print(prepare("large", args.payments, args.refunds, args.reuse, now))
    sizes = Sizes()
    client = Client()
    client.force_login(get_user_model().objects.get(username="bench"))
    refundable = refundable_payment()
    pages = [
        dataclasses.replace(
            page, path=f"/admin/django_ledgepay/{page.path}".format(refundable=refundable)
        )
        for page in PAGES
        if args.pages in page.label
    ]
    results: dict[str, tuple[Result, Result]] = {}
    try:
        for page in pages:
            at_small, at_large = measure(client, sizes, page, args.repeat)
            results[page.label] = (at_small, at_large)
            line = times(page.label, at_small, at_large)
            small_sql, large_sql = at_small.sql_ms, at_large.sql_ms
            print(f"  {line}  (SQL {small_sql:.1f} / {large_sql:.1f} ms)", flush=True)
        failures = report(pages, results, args.small, args.payments)
    finally:
        if not args.keep:
            drop_databases(f"{args.database}_1k", args.database)
    if failures:
        print(f"\nMissed: {', '.join(failures)}")
        return 1
    return 0


urlpatterns: list[Any] = []

if __name__ == "__main__":
    sys.exit(main())
