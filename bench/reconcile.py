"""Benchmark ``ledgepay_reconcile`` against the sync, on the same data, against the sandbox.

Run from the repository root::

    .venv/bin/python bench/reconcile.py [--payments 10000] [--repeat 3]

The sandbox runs in a child process on loopback (so that its memory is not counted with
the app's), holding ``--payments`` payments created over the last 29 days, one every few
minutes, with mixed statuses. The database comes from ``DATABASE_URL`` (default
``postgres://postgres@127.0.0.1:5432/``); on PostgreSQL it is always the database
``ledgepay_reconcile_bench`` on that server, dropped and created again at every run. A
``sqlite:///path`` URL works too.

Measured, each ``--repeat`` times (medians printed), then once more under ``tracemalloc``
for the peak of memory the app's process allocated:

1. ``sync``: ``sync_payments()`` over the window into an empty mirror (the baseline);
2. ``sync again``: the same with the mirror in step (nothing to write);
3. ``reconcile``: a dry run of :func:`django_ledgepay.reconcile.reconcile` over the window,
   with the mirror in step;
4. ``reconcile, drift``: after LedgePay settled 2% of the pending payments and a second
   received 150 pending payments that the mirror holds but the list cannot show beyond 100:
   the list calls, plus one call by id for each of the 50 it could not show.

Each line gives the time, the list calls, the calls by id, the queries, and the peak of
memory. The reconcile at a quarter of ``--payments`` is measured as well, to show that its
memory does not grow with the number of payments. Exits 1 when a result is wrong (a count
that does not match), else 0.
"""

from __future__ import annotations

import argparse
import datetime
import multiprocessing
import os
import platform
import random
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DATABASE = "ledgepay_reconcile_bench"
SPREAD_DAYS = 29
STATUSES = ("succeeded",) * 14 + ("pending",) * 4 + ("failed", "canceled")
URLS = {"success_url": "https://shop.test/ok", "cancel_url": "https://shop.test/no"}


# The sandbox, in a process of its own


def sandbox_process(commands: Connection) -> None:
    """Serve a sandbox and do what the benchmark asks of its state until told to stop."""
    import django
    from django.conf import settings

    # The sandbox signs webhooks with the app's helpers, which need Django set up.
    settings.configure(
        INSTALLED_APPS=["django.contrib.auth", "django.contrib.contenttypes", "django_ledgepay"],
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
        USE_TZ=True,
    )
    django.setup()
    from django_ledgepay.sandbox import Sandbox

    with Sandbox(refund_delay=0.05) as sandbox:
        state = sandbox.state
        commands.send(sandbox.api_base)
        while True:
            command, *args = commands.recv()
            if command == "stop":
                return
            if command == "seed":
                count, newest, seed = args
                rng = random.Random(seed)
                spacing = SPREAD_DAYS * 86400 / count
                for number in range(count):
                    state.clock = fixed(newest - number * spacing)
                    payment = state.create_payment(
                        {"amount": rng.randint(100, 99_999), "currency": "EUR", **URLS}
                    )
                    status = rng.choice(STATUSES)
                    if status != "pending":
                        state.settle(payment["id"], status)
                state.clock = time.time
                commands.send(count)
            elif command == "crowd":
                count, crowded_second = args
                state.clock = fixed(crowded_second)
                made = [
                    state.create_payment({"amount": 500, "currency": "EUR", **URLS})
                    for _ in range(count)
                ]
                state.clock = time.time
                commands.send(made)
            elif command == "settle":
                share, seed = args
                rng = random.Random(seed)
                with state.lock:
                    pending = [
                        p for p, data in state.payments.items() if data["status"] == "pending"
                    ]
                chosen = rng.sample(pending, int(len(pending) * share))
                for payment_id in chosen:
                    state.settle(payment_id, "succeeded")
                commands.send(chosen)


def fixed(moment: float) -> Callable[[], float]:
    """A clock stopped at ``moment``."""
    return lambda: moment


class RemoteSandbox:
    def __init__(self) -> None:
        context = multiprocessing.get_context("spawn")
        self.commands, child = context.Pipe()
        self.process = context.Process(target=sandbox_process, args=(child,), daemon=True)
        self.process.start()
        self.api_base: str = self.commands.recv()

    def ask(self, *command: Any) -> Any:
        self.commands.send(command)
        return self.commands.recv()

    def stop(self) -> None:
        self.commands.send(("stop",))
        self.process.join(timeout=10)


# Django


def configure(database_url: str, api_base: str) -> None:
    import environ

    from django.conf import settings

    database = environ.Env.db_url_config(database_url)
    if database["ENGINE"] == "django.db.backends.postgresql":
        database["NAME"] = DATABASE
    settings.configure(
        DEBUG=False,
        SECRET_KEY="bench-only-not-secret",
        USE_TZ=True,
        TIME_ZONE="UTC",
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
        DATABASES={"default": database},
        INSTALLED_APPS=["django.contrib.auth", "django.contrib.contenttypes", "django_ledgepay"],
        LEDGEPAY_API_KEY="sk_test_bench_not_secret",
        LEDGEPAY_API_BASE=api_base,
        LOGGING_CONFIG=None,
    )


def create_database() -> None:
    from django.db import connection

    if connection.vendor == "sqlite":
        name = connection.settings_dict["NAME"]
        if name and name != ":memory:" and os.path.exists(name):
            os.remove(name)
        return
    import psycopg

    params = connection.get_connection_params()
    params["dbname"] = "postgres"
    with psycopg.connect(**params, autocommit=True) as admin_connection:
        admin_connection.execute(f'DROP DATABASE IF EXISTS "{DATABASE}"')
        admin_connection.execute(f'CREATE DATABASE "{DATABASE}"')


def empty_mirror() -> None:
    from django_ledgepay.models import (
        Payment,
        Reaction,
        Reconciliation,
        Refund,
        RefundRequest,
        Transition,
    )

    for model in (Reaction, Transition, RefundRequest, Refund, Payment, Reconciliation):
        model.objects.all().delete()


# Measuring


@dataclass
class Measure:
    label: str
    seconds: float
    list_calls: int
    by_id_calls: int
    queries: int
    peak_mib: float = 0.0
    check: str = ""


class Counter:
    """Counts the client's list and by-id calls, and the queries."""

    def __init__(self) -> None:
        from django_ledgepay.client import LedgePayClient

        self.lists = self.by_id = self.queries = 0
        list_payments, retrieve_payment = (
            LedgePayClient.list_payments,
            LedgePayClient.retrieve_payment,
        )

        def counted_list(client: Any, **kwargs: Any) -> Any:
            self.lists += 1
            return list_payments(client, **kwargs)

        def counted_retrieve(client: Any, ledgepay_id: str) -> Any:
            self.by_id += 1
            return retrieve_payment(client, ledgepay_id)

        setattr(LedgePayClient, "list_payments", counted_list)  # noqa: B010
        setattr(LedgePayClient, "retrieve_payment", counted_retrieve)  # noqa: B010

    def reset(self) -> None:
        self.lists = self.by_id = self.queries = 0

    def count_query(self, execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        self.queries += 1
        return execute(sql, params, many, context)


def measure(
    label: str,
    counter: Counter,
    prepare: Callable[[], None],
    work: Callable[[], str],
    repeat: int,
) -> Measure:
    from django.db import connection

    times = []
    for _ in range(repeat):
        prepare()
        counter.reset()
        with connection.execute_wrapper(counter.count_query):
            start = time.perf_counter()
            check = work()
            times.append(time.perf_counter() - start)
    result = Measure(
        label, statistics.median(times), counter.lists, counter.by_id, counter.queries, check=check
    )
    prepare()
    tracemalloc.start()
    try:
        work()
        result.peak_mib = tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--payments", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    options = parser.parse_args(argv)

    sandbox = RemoteSandbox()
    try:
        configure(
            os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/"), sandbox.api_base
        )
        import django

        django.setup()
        return run(sandbox, options.payments, options.repeat)
    finally:
        sandbox.stop()


def run(sandbox: RemoteSandbox, payments: int, repeat: int) -> int:
    from django.core.management import call_command
    from django.db import connection

    from django_ledgepay import reconcile, services
    from django_ledgepay.models import Payment

    create_database()
    connection.close()
    call_command("migrate", verbosity=0)
    counter = Counter()
    now = time.time()
    until = datetime.datetime.fromtimestamp(int(now) + 1, datetime.timezone.utc)
    since = until - datetime.timedelta(days=30)
    after = since - datetime.timedelta(seconds=1)
    failures: list[str] = []
    results: list[Measure] = []

    def sync() -> str:
        result = services.sync_payments(created_after=after, created_before=until)
        return f"{result.total} listed, {result.created} created"

    def reconcile_dry() -> str:
        report = reconcile.reconcile(since=since, until=until)
        return f"{report.checked} checked, {len(report.drift)} drift"

    def nothing() -> None:
        pass

    def expect(measured: Measure, text: str) -> None:
        if text not in measured.check:
            failures.append(f"{measured.label}: {measured.check!r}, expected {text!r}")

    # A quarter of the payments first, to compare the reconcile's memory with the full run.
    quarter = payments // 4
    sandbox.ask("seed", quarter, now, 1)
    # Mirror it, then reconcile it.
    services.sync_payments(created_after=after, created_before=until)
    small = measure(f"reconcile, {quarter:,}", counter, nothing, reconcile_dry, repeat)
    expect(small, f"{quarter} checked, 0 drift")

    sandbox.ask("seed", payments - quarter, now - 7, 2)
    first = measure(
        f"sync, {payments:,} into an empty mirror", counter, empty_mirror, sync, repeat
    )
    expect(first, f"{payments} listed, {payments} created")
    results.append(first)
    again = measure(f"sync, {payments:,}, mirror in step", counter, nothing, sync, repeat)
    expect(again, f"{payments} listed, 0 created")
    results.append(again)
    full = measure(
        f"reconcile, {payments:,}, mirror in step", counter, nothing, reconcile_dry, repeat
    )
    expect(full, f"{payments} checked, 0 drift")
    results.append(full)
    results.append(small)

    # Drift: LedgePay settles some pending payments; a crowded second the list cannot show.
    settled = sandbox.ask("settle", 0.02, 3)
    crowded = sandbox.ask("crowd", 150, int(now) - 3600)
    for data in crowded:
        services.apply_payment(data)
    drift = measure(
        f"reconcile, {payments + 150:,}, with drift", counter, nothing, reconcile_dry, repeat
    )
    expect(drift, f"{payments + 150} checked, {len(settled) + 1} drift")
    if drift.by_id_calls != 50:
        failures.append(f"{drift.label}: {drift.by_id_calls} calls by id, expected 50")
    results.append(drift)
    pending = Payment.objects.filter(status="pending").count()

    print_report(results, payments, len(settled), pending)
    for failure in failures:
        print(f"FAILED: {failure}")
    return 1 if failures else 0


def database_version() -> str:
    from django.db import connection

    if connection.vendor == "postgresql":
        version = connection.pg_version  # type: ignore[attr-defined]
        return f"PostgreSQL {version // 10000}.{version % 10000}"
    import sqlite3

    return f"SQLite {sqlite3.sqlite_version}"


def print_report(results: list[Measure], payments: int, settled: int, pending: int) -> None:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"{platform.system()} {platform.release()}; Python {platform.python_version()}, "
        f"Django {metadata.version('django')}, {database_version()}; "
        f"load average {load:.2f} at the end"
    )
    print(
        f"{payments:,} payments over {SPREAD_DAYS} days in the sandbox (a child process on "
        f"loopback); the drift run adds 150 pending in one second and {settled} settled at "
        f"LedgePay ({pending} pending in the mirror)."
    )
    header = f"{'run':<42} {'seconds':>8} {'lists':>6} {'by id':>6} {'queries':>8} {'peak MiB':>9}"
    print(header)
    print("-" * len(header))
    for result in results:
        print(
            f"{result.label:<42} {result.seconds:>8.2f} {result.list_calls:>6} "
            f"{result.by_id_calls:>6} {result.queries:>8} {result.peak_mib:>9.1f}  "
            f"{result.check}"
        )


if __name__ == "__main__":
    sys.exit(main())
