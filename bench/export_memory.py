"""Benchmark ``ledgepay_export``'s memory: its peak at 10,000 and at 1,000,000 payments.

Run from the repository root::

    .venv/bin/python bench/export_memory.py [--sizes 10000,1000000] [--format csv]
    .venv/bin/python bench/export_memory.py --database-url postgres://postgres@127.0.0.1:5432/

For each size, a database of its own is filled with that many payments (one in four with a
refund, so that each row's ``amount_refunded`` is read), then ``manage.py ledgepay_export
--kind payments --output FILE`` runs in a fresh process, whose peak resident memory
(``ru_maxrss``, from ``wait4``) is measured. Peaks must be within ``--target`` (1.2) of each
other: an export that held its rows would grow with them.

The database is SQLite, a file under ``--workdir`` (default: a temporary directory), unless
``--database-url`` names a PostgreSQL server: then the database ``ledgepay_export_bench`` on
it, dropped and created again for each size and dropped at the end (never point it at a
database you care about).
Exits 1 when the target is missed, else 0; ``--no-target`` only reports (the test suite's
smoke run, at small sizes).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.machine import cpu_model  # noqa: E402

TARGET = 1.2
DATABASE = "ledgepay_export_bench"
BATCH = 10_000
CURRENCIES = ("EUR", "EUR", "USD", "JPY", "KWD")
STATUSES = ("succeeded", "succeeded", "succeeded", "pending", "failed", "canceled")


def database_settings(url: str | None, workdir: Path, size: int) -> dict[str, Any]:
    import environ

    if url is None:
        return {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": str(workdir / f"export-{size}.sqlite3"),
        }
    server = environ.Env.db_url_config(url)
    if server["ENGINE"] != "django.db.backends.postgresql":
        sys.exit(f"--database-url must name a PostgreSQL server, not {server['ENGINE']}.")
    return {**server, "NAME": DATABASE}


def configure(database: dict[str, Any]) -> None:
    from django.conf import settings

    settings.configure(
        DEBUG=False,
        SECRET_KEY="bench-only-not-secret",
        USE_TZ=True,
        TIME_ZONE="UTC",
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
        DATABASES={"default": database},
        INSTALLED_APPS=["django.contrib.auth", "django.contrib.contenttypes", "django_ledgepay"],
        # Never called: an export reads the mirror only.
        LEDGEPAY_API_KEY="sk_test_bench_not_secret",
        LEDGEPAY_API_BASE="http://127.0.0.1:9/v1",
    )
    import django

    django.setup()


def server_params(database: dict[str, Any]) -> dict[str, Any]:
    """How to reach the server's ``postgres`` database."""
    params = {
        "dbname": "postgres",
        "user": database.get("USER") or "postgres",
        "host": database.get("HOST") or "127.0.0.1",
        "port": database.get("PORT") or 5432,
    }
    if database.get("PASSWORD"):
        params["password"] = database["PASSWORD"]
    return params


def fresh_database(database: dict[str, Any]) -> None:
    if database["ENGINE"] == "django.db.backends.sqlite3":
        Path(database["NAME"]).unlink(missing_ok=True)
        return
    import psycopg

    with psycopg.connect(**server_params(database), autocommit=True) as server:
        server.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
        server.execute(f'CREATE DATABASE "{DATABASE}"')


def drop_database(database: dict[str, Any]) -> None:
    if database["ENGINE"] == "django.db.backends.sqlite3":
        Path(database["NAME"]).unlink(missing_ok=True)
        return
    import psycopg

    with psycopg.connect(**server_params(database), autocommit=True) as server:
        server.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')


def fill(size: int) -> None:
    """Migrate, then insert ``size`` payments and a refund for one in four, in batches."""
    from django.core.management import call_command
    from django.db import connection, transaction

    from django_ledgepay.models import Payment, Refund

    call_command("migrate", verbosity=0)
    start = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
    step = datetime.timedelta(days=28) / max(size, 1)
    payments, refunds = Payment._meta.db_table, Refund._meta.db_table
    payment_sql = (
        f"INSERT INTO {payments} (id, ledgepay_id, status, amount, currency, description, "
        "customer_email, customer_name, metadata, checkout_url, success_url, cancel_url, "
        "created_at, completed_at, updated_at) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, '', '', '', %s, %s, %s)"
    )
    refund_sql = (
        f"INSERT INTO {refunds} (id, ledgepay_id, payment_id, amount, currency, reason, status, "
        "created_at, updated_at) VALUES (%s, %s, %s, %s, %s, 'customer_request', 'succeeded', "
        "%s, %s)"
    )
    adapt = connection.ops.adapt_datetimefield_value
    for first in range(1, size + 1, BATCH):
        rows, refund_rows = [], []
        for n in range(first, min(first + BATCH, size + 1)):
            created = adapt(start + step * n)
            currency = CURRENCIES[n % len(CURRENCIES)]
            status = STATUSES[n % len(STATUSES)]
            amount = 1000 + n % 50_000
            completed = created if status != "pending" else None
            rows.append(
                (
                    n,
                    f"pay_bench_{n:09d}",
                    status,
                    amount,
                    currency,
                    f"Order #{n}",
                    f"customer{n}@example.com",
                    f"Customer {n}",
                    json.dumps({"order_id": n}),
                    created,
                    completed,
                    created,
                )
            )
            if n % 4 == 0 and status == "succeeded":
                refund_rows.append(
                    (n, f"re_bench_{n:09d}", n, amount // 2, currency, created, created)
                )
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.executemany(payment_sql, rows)
            if refund_rows:
                cursor.executemany(refund_sql, refund_rows)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")


def child(args: argparse.Namespace) -> None:
    """The measured process: Django set up, then the export, as ``manage.py`` runs it."""
    configure(json.loads(args.child))
    from django.core.management import call_command

    # The high-water mark once Django is set up: what the export adds shows above it.
    ready = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    call_command(
        "ledgepay_export", kind="payments", format=args.format, output=args.output, verbosity=0
    )
    elapsed = time.perf_counter() - started
    print(json.dumps({"ready_kib": ready, "seconds": elapsed}))


def measure(database: dict[str, Any], output: Path, fmt: str) -> dict[str, Any]:
    """Run the export in a fresh process; its peak RSS (KiB) from ``wait4``."""
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    process = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--child",
            json.dumps(database),
            "--output",
            str(output),
            "--format",
            fmt,
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    stdout, stderr = process.stdout.read(), process.stderr.read()  # type: ignore[union-attr]
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        sys.exit(f"The export failed ({process.returncode}):\n{stdout}\n{stderr}")
    result: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
    result["peak_kib"] = usage.ru_maxrss
    result["bytes"] = output.stat().st_size
    output.unlink()
    return result


def versions(database: dict[str, Any]) -> str:
    import django
    from django.db import connection

    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SHOW server_version")
            engine = f"PostgreSQL {cursor.fetchone()[0].split()[0]}"
        else:
            cursor.execute("SELECT sqlite_version()")
            engine = f"SQLite {cursor.fetchone()[0]}"
    return f"Python {platform.python_version()}, Django {django.get_version()}, {engine}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--sizes", default="10000,1000000", help="Payments, comma-separated.")
    parser.add_argument("--format", choices=("csv", "jsonl"), default="csv")
    parser.add_argument("--database-url", help="A PostgreSQL server (default: SQLite files).")
    parser.add_argument("--workdir", type=Path, help="Where the SQLite files and exports go.")
    parser.add_argument("--target", type=float, default=TARGET)
    parser.add_argument("--no-target", action="store_true", help="Report; never fail.")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return 0
    sizes = [int(size) for size in args.sizes.split(",")]
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="ledgepay-export-bench-"))
    owned = args.workdir is None
    results = []
    for number, size in enumerate(sizes):
        database = database_settings(args.database_url, workdir, size)
        if number == 0:
            configure(database)
        from django.db import connections

        connections.close_all()
        connections["default"].settings_dict.update(database)
        fresh_database(database)
        started = time.perf_counter()
        fill(size)
        filled = time.perf_counter() - started
        if number == 0:
            print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {cpu_model()}")
            print(f"software: {versions(database)}; load average {os.getloadavg()[0]:.1f}")
        connections.close_all()
        result = measure(database, workdir / f"export-{size}.{args.format}", args.format)
        results.append((size, result))
        print(
            f"payments {size:>9,}: peak RSS {result['peak_kib'] / 1024:7.1f} MiB "
            f"(before the export {result['ready_kib'] / 1024:.1f} MiB), export "
            f"{result['seconds']:.1f} s, {result['bytes'] / 1e6:.1f} MB written "
            f"(filled in {filled:.0f} s)",
            flush=True,
        )
        drop_database(database)
    if owned:
        workdir.rmdir()
    peaks = [result["peak_kib"] for _, result in results]
    ratio = max(peaks) / min(peaks)
    verdict = "met" if ratio <= args.target else "MISSED"
    print(f"peak ratio, largest / smallest: {ratio:.3f} (target {args.target}: {verdict})")
    return 0 if args.no_target or ratio <= args.target else 1


if __name__ == "__main__":
    sys.exit(main())
