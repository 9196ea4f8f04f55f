"""Benchmark every webhook path against a bare view doing the same work, under gunicorn on
PostgreSQL.

Run from the repository root::

    .venv/bin/python bench/run.py [--paths P,...] [--concurrency 8,32] [--quick]

The paths (``--paths``, by name or number; default all):

1. ``succeeded``: a new ``payment.succeeded`` for a known pending payment;
2. ``redelivery``: an exact redelivery of (1), what LedgePay's retries send, signed five
   minutes after its event (the app looks a retry up first:
   ``django_ledgepay.mirror.sql.LATE_AFTER``);
3. ``final``: a new body for a payment already final;
4. ``unseen``: a payment never seen, the event carrying amount and currency;
5. ``refund-created``: ``refund.created`` for a known succeeded payment;
6. ``refund-succeeded``: ``refund.succeeded`` for a known pending refund;
7. ``refund-unseen``: ``refund.created`` for a payment never seen, fetched from a sandbox
   (``django_ledgepay.sandbox.Sandbox``, in a process of its own);
8. ``receiver``: (1) with a trivial database receiver connected to ``payment_succeeded``,
   delivered by Django's default ``ImmediateBackend``;
9. ``redelivery-soon``: (2) signed as its event happened, as a duplicate sent at once or the
   sandbox's first retries (0.5 s on) are: the look-up in the move's statement.

(8) and (9) are reported apart from the target (``APART``).

For each path, one gunicorn (``bench.wsgi``, sync workers) serves the real view
(``ledgepay:webhook``) and the path's baseline (``bench/bare.py``, ``/bare/<path>/``). For each
concurrency and ``--repeat`` times, real and bare run back to back (bare first on every other
repeat): empty the tables, seed the state the path starts from, post the warm-up deliveries,
then, timed, the N deliveries from as many threads as the concurrency; then check the answers
(all 200) and the rows left (exactly what N deliveries of the path leave). Before that, one
delivery of each path goes through Django's test client under ``CaptureQueriesContext``, real
and bare, to count its statements.

Exits 1 when a correctness check fails, 0 otherwise whatever the ratio: this is a
measurement, not a test.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import http.client
import json
import math
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
LOG = RESULTS / "gunicorn.log"
TARGET = 0.9
VIEWS = ("real", "bare")
AMOUNT, CURRENCY, REFUND_AMOUNT = 5000, "EUR", 2500
#: Receipts written by the receiver path's receiver (bench/bare.py's RECEIPTS).
RECEIPTS = "bench_receipt"
QUICK = {"deliveries": 50, "warmup": 10, "repeat": 1, "sequential": 10}
DEFAULTS = {"deliveries": 2000, "warmup": 200, "repeat": 5, "sequential": 300}


# The paths


@dataclass(frozen=True)
class Objects:
    """The LedgePay ids one run's deliveries name: payments and refunds, one each per
    delivery (the warm-up's first)."""

    payments: list[str]
    refunds: list[str]


@dataclass(frozen=True)
class BenchPath:
    number: str
    name: str
    title: str
    #: Write the state the deliveries find, for these objects and their bodies.
    seed: Callable[[Objects, list[bytes]], None]
    #: One body per object.
    bodies: Callable[[Objects, str], list[bytes]]
    #: What the tables hold after a run over ``count`` objects (see tally()).
    expected: Callable[[int], dict[str, int]]
    receiver: bool = False
    sandbox: bool = False
    #: Seconds from the event's ``timestamp`` to the delivery's signature: LedgePay signs
    #: each attempt as it sends it, the first at once, a retry after a failed attempt and a
    #: back-off (and the app looks a late one up first: django_ledgepay.mirror.sql.LATE_AFTER).
    signed_after: int = 0


def stamp(moment: float) -> str:
    return datetime.datetime.fromtimestamp(moment, datetime.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%SZ"
    )


def payment_bodies(event: str) -> Callable[[Objects, str], list[bytes]]:
    def bodies(objects: Objects, when: str) -> list[bytes]:
        return [
            encode(
                {
                    "event": event,
                    "timestamp": when,
                    "data": {
                        "id": ledgepay_id,
                        "amount": AMOUNT,
                        "currency": CURRENCY,
                        "metadata": {"order_id": str(index)},
                    },
                }
            )
            for index, ledgepay_id in enumerate(objects.payments)
        ]

    return bodies


def refund_bodies(event: str, status: str) -> Callable[[Objects, str], list[bytes]]:
    def bodies(objects: Objects, when: str) -> list[bytes]:
        return [
            encode(
                {
                    "event": event,
                    "timestamp": when,
                    "data": {
                        "id": refund_id,
                        "payment_id": payment_id,
                        "amount": REFUND_AMOUNT,
                        "currency": CURRENCY,
                        "reason": "customer_request",
                        "status": status,
                        "created_at": when,
                    },
                }
            )
            for payment_id, refund_id in zip(objects.payments, objects.refunds, strict=True)
        ]

    return bodies


def encode(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload).encode()


def seed_payments(objects: Objects, status: str) -> list[Any]:
    from django.utils import timezone

    from django_ledgepay.models import Payment

    now = timezone.now()
    completed = None if status == Payment.Status.PENDING else now
    return Payment.objects.bulk_create(
        [
            Payment(
                ledgepay_id=ledgepay_id,
                amount=AMOUNT,
                currency=CURRENCY,
                status=status,
                created_at=now,
                completed_at=completed,
                metadata={"order_id": str(index)},
            )
            for index, ledgepay_id in enumerate(objects.payments)
        ],
        batch_size=1000,
    )


def seed_pending(objects: Objects, bodies: list[bytes]) -> None:
    seed_payments(objects, "pending")


def seed_applied(objects: Objects, bodies: list[bytes]) -> None:
    """Payments that succeeded through ``bodies``: each stored as processed, with its
    transition, as path 1 leaves them."""
    from django.utils import timezone

    from django_ledgepay.models import Transition, WebhookEvent

    payments = seed_payments(objects, "succeeded")
    now = timezone.now()
    events = WebhookEvent.objects.bulk_create(
        [
            WebhookEvent(
                event_type="payment.succeeded",
                object_id=payment.ledgepay_id,
                payload=json.loads(body),
                body_sha256=hashlib.sha256(body).hexdigest(),
                status=WebhookEvent.Status.PROCESSED,
                attempts=1,
                processed_at=now,
            )
            for payment, body in zip(payments, bodies, strict=True)
        ],
        batch_size=1000,
    )
    Transition.objects.bulk_create(
        [
            Transition(
                signal=Transition.Signal.PAYMENT_SUCCEEDED,
                payment=payment,
                event=event,
                source=Transition.Source.WEBHOOK,
                created_at=now,
                delivered_at=now,
            )
            for payment, event in zip(payments, events, strict=True)
        ],
        batch_size=1000,
    )


def seed_final(objects: Objects, bodies: list[bytes]) -> None:
    """As :func:`seed_applied`, through earlier bodies than those the run posts."""
    earlier = payment_bodies("payment.succeeded")(objects, stamp(time.time() - 60))
    seed_applied(objects, earlier)


def seed_succeeded(objects: Objects, bodies: list[bytes]) -> None:
    seed_payments(objects, "succeeded")


def seed_pending_refunds(objects: Objects, bodies: list[bytes]) -> None:
    from django.utils import timezone

    from django_ledgepay.models import Refund

    payments = seed_payments(objects, "succeeded")
    now = timezone.now()
    Refund.objects.bulk_create(
        [
            Refund(
                ledgepay_id=refund_id,
                payment=payment,
                amount=REFUND_AMOUNT,
                currency=CURRENCY,
                created_at=now,
            )
            for payment, refund_id in zip(payments, objects.refunds, strict=True)
        ],
        batch_size=1000,
    )


def seed_nothing(objects: Objects, bodies: list[bytes]) -> None:
    pass


def expect(**counts: int) -> Callable[[int], dict[str, int]]:
    """``counts`` per object, e.g. ``expect(events=1)``: ``events`` is one per object."""

    def expected(count: int) -> dict[str, int]:
        return {key.replace("__", "."): value * count for key, value in counts.items()}

    return expected


PATHS = [
    BenchPath(
        "1",
        "succeeded",
        "payment.succeeded, known pending payment",
        seed_pending,
        payment_bodies("payment.succeeded"),
        expect(events=1, payments__succeeded=1, transitions__payment_succeeded=1),
    ),
    BenchPath(
        "2",
        "redelivery",
        "exact redelivery of (1), a retry 5 minutes on",
        seed_applied,
        payment_bodies("payment.succeeded"),
        expect(events=1, payments__succeeded=1, transitions__payment_succeeded=1),
        signed_after=300,
    ),
    BenchPath(
        "3",
        "final",
        "new body, payment already final",
        seed_final,
        payment_bodies("payment.succeeded"),
        expect(events=2, payments__succeeded=1, transitions__payment_succeeded=1),
    ),
    BenchPath(
        "4",
        "unseen",
        "payment never seen, amount and currency",
        seed_nothing,
        payment_bodies("payment.succeeded"),
        expect(events=1, payments__succeeded=1, transitions__payment_succeeded=1),
    ),
    BenchPath(
        "5",
        "refund-created",
        "refund.created, known succeeded payment",
        seed_succeeded,
        refund_bodies("refund.created", "pending"),
        expect(events=1, payments__succeeded=1, refunds__pending=1, transitions__refund_created=1),
    ),
    BenchPath(
        "6",
        "refund-succeeded",
        "refund.succeeded, known pending refund",
        seed_pending_refunds,
        refund_bodies("refund.succeeded", "succeeded"),
        expect(
            events=1,
            payments__succeeded=1,
            refunds__succeeded=1,
            transitions__refund_succeeded=1,
        ),
    ),
    BenchPath(
        "7",
        "refund-unseen",
        "refund.created, payment never seen (fetched)",
        seed_nothing,
        refund_bodies("refund.created", "pending"),
        expect(
            events=1,
            payments__succeeded=1,
            refunds__pending=1,
            transitions__payment_succeeded=1,
            transitions__refund_created=1,
        ),
        sandbox=True,
    ),
    BenchPath(
        "1r",
        "receiver",
        "(1) with a database receiver",
        seed_pending,
        payment_bodies("payment.succeeded"),
        expect(events=1, payments__succeeded=1, transitions__payment_succeeded=1, receipts=1),
        receiver=True,
    ),
    BenchPath(
        "2s",
        "redelivery-soon",
        "exact redelivery of (1), signed as the event happened",
        seed_applied,
        payment_bodies("payment.succeeded"),
        expect(events=1, payments__succeeded=1, transitions__payment_succeeded=1),
    ),
]
#: Reported apart from the target: not a path of issue 12's table, or not the common case.
APART = frozenset({"receiver", "redelivery-soon"})
BY_KEY = {key: p for p in PATHS for key in (p.number, p.name)}


def choose_paths(text: str) -> list[BenchPath]:
    chosen = []
    for key in filter(None, (item.strip() for item in text.split(","))):
        if key not in BY_KEY:
            names = ", ".join(f"{p.number}/{p.name}" for p in PATHS)
            raise argparse.ArgumentTypeError(f"unknown path {key!r} (choose from {names})")
        if BY_KEY[key] not in chosen:
            chosen.append(BY_KEY[key])
    if not chosen:
        raise argparse.ArgumentTypeError("no path chosen")
    return chosen


def concurrencies(text: str) -> list[int]:
    try:
        values = [int(item) for item in text.split(",") if item.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"not a list of integers: {text!r}") from err
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("concurrency must be at least 1")
    return values


# One run


@dataclass
class Run:
    path: str
    view: str
    concurrency: int
    repeat: int
    deliveries: int
    seconds: float
    client_cpu: float
    rate: float
    p50_ms: float
    p99_ms: float
    commit_ms: float
    #: CPU per timed delivery, in ms: gunicorn's workers, and PostgreSQL's backends.
    server_cpu_ms: float
    db_cpu_ms: float
    statuses: dict[int, int]
    tally: dict[str, int]
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--paths",
        type=choose_paths,
        default=PATHS,
        help="comma-separated names or numbers (default: all; see the module's docstring)",
    )
    parser.add_argument(
        "--concurrency",
        type=concurrencies,
        nargs="+",
        default=[[8, 32]],
        help="client threads, e.g. 8,32 (default)",
    )
    parser.add_argument(
        "--deliveries",
        type=int,
        help="timed deliveries per run (default 2000); a run must end within the 300 s"
        " signature tolerance",
    )
    parser.add_argument("--warmup", type=int, help="untimed deliveries before each run (200)")
    parser.add_argument("--repeat", type=int, help="back-to-back pairs per path and concurrency")
    parser.add_argument("--workers", type=int, default=4, help="gunicorn workers (default 4)")
    parser.add_argument(
        "--worker-class", default="sync", help="gunicorn worker class (default sync)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a short run: 50 deliveries after 10, one pair (for the smoke test)",
    )
    parser.add_argument(
        "--prepared",
        action="store_true",
        help="bind parameters on the server and let psycopg prepare a statement run five"
        " times (OPTIONS server_side_binding and prepare_threshold); off by default, as in"
        " Django",
    )
    parser.add_argument(
        "--sequential",
        type=int,
        help="deliveries sent one after another through the test client per view, for the"
        " CPU per delivery (default 300; 0: none)",
    )
    parser.add_argument(
        "--markdown", action="store_true", help="print the results as a Markdown table too"
    )
    parser.add_argument("--sandbox-process", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.sandbox_process is not None:
        return serve_sandbox(args.sandbox_process)
    for name, default in (QUICK if args.quick else DEFAULTS).items():
        if getattr(args, name) is None:
            setattr(args, name, default)
    args.concurrency = [c for group in args.concurrency for c in group]
    if args.deliveries < 1 or args.warmup < 0 or args.repeat < 1 or args.sequential < 0:
        parser.error(
            "--deliveries and --repeat must be at least 1, --warmup and --sequential at least 0"
        )
    if args.sequential > args.deliveries:
        parser.error("--sequential must be at most --deliveries")
    # Stop gunicorn and the sandbox on SIGTERM too, through the finally clauses.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))

    setup_path()
    # Before the settings are imported, here and in gunicorn's processes.
    os.environ["BENCH_PREPARED"] = "1" if args.prepared else "0"
    # Not setdefault: a shell that exports the test suite's settings must not seed SQLite.
    os.environ["DJANGO_SETTINGS_MODULE"] = "bench.settings"
    RESULTS.mkdir(exist_ok=True)
    objects = args.deliveries + args.warmup
    # The sandbox first: the settings read BENCH_API_BASE when first imported.
    with sandbox_process(objects + 1, any(p.sandbox for p in args.paths)) as remote_ids:
        create_database()
        import django
        from django.core.management import call_command

        django.setup()
        call_command("migrate", verbosity=0)
        create_receipts()

        environment = describe_environment(args)
        for key, value in environment.items():
            print(f"{key:>12}: {value}")
        print(flush=True)

        probes = {p.name: probe(p, remote_ids, args.sequential) for p in args.paths}
        statements = {name: found["statements"] for name, found in probes.items()}
        sequential = {name: found["sequential"] for name, found in probes.items()}
        print(format_statements(args.paths, statements, sequential), flush=True)
        print()

        runs: list[Run] = []
        total = len(args.paths) * len(args.concurrency) * args.repeat * len(VIEWS)
        # One gunicorn for every path without a receiver, another for the receiver's.
        servers = Servers(args.workers, args.worker_class)
        try:
            for bench_path in args.paths:
                port, server_pid = servers.port_for(bench_path)
                for concurrency in args.concurrency:
                    for repeat in range(args.repeat):
                        # Alternate which view goes first, so a drift favours neither.
                        order = VIEWS if repeat % 2 == 0 else VIEWS[::-1]
                        for view in order:
                            run = measure(
                                bench_path,
                                view,
                                port=port,
                                server_pid=server_pid,
                                concurrency=concurrency,
                                repeat=repeat,
                                deliveries=args.deliveries,
                                warmup=args.warmup,
                                remote_ids=remote_ids,
                            )
                            runs.append(run)
                            print(format_run(run, len(runs), total), flush=True)
        finally:
            servers.stop()

    summary = summarize(runs, args.paths, args.concurrency, statements, sequential)
    print()
    print(format_table(summary, args.paths, args.concurrency))
    if args.markdown:
        print()
        print(format_markdown(summary, args.paths))
    save(environment, runs, summary)

    failed = [run for run in runs if not run.ok]
    if failed:
        print()
        print("!" * 72)
        print(f"CORRECTNESS FAILED in {len(failed)} of {total} runs:")
        for run in failed:
            errors = "; ".join(run.errors)
            print(f"  {run.path} {run.view} c={run.concurrency} #{run.repeat + 1}: {errors}")
        print(f"gunicorn's log: {LOG}")
        print("!" * 72)
        return 1
    return 0


def setup_path() -> None:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))


def objects_for(bench_path: BenchPath, prefix: str, count: int, remote_ids: list[str]) -> Objects:
    """``count`` objects named with ``prefix``; for a sandbox path, payments the sandbox holds
    (the first for the warm-up, the next for the timed run, the last for counting)."""
    if bench_path.sandbox:
        # It holds the warm-up's payments, then the timed run's, then the count's one.
        if prefix == "count":
            payments = remote_ids[-1:]
        else:
            offset = 0 if prefix == "warm" else len(remote_ids) - 1 - count
            payments = remote_ids[offset : offset + count]
    else:
        payments = [f"pay_{prefix}_{index:07d}" for index in range(count)]
    refunds = [f"re_{prefix}_{index:07d}" for index in range(count)]
    return Objects(payments, refunds)


def measure(
    bench_path: BenchPath,
    view: str,
    *,
    port: int,
    server_pid: int,
    concurrency: int,
    repeat: int,
    deliveries: int,
    warmup: int,
    remote_ids: list[str],
) -> Run:
    warm_objects = objects_for(bench_path, "warm", warmup, remote_ids)
    timed_objects = objects_for(bench_path, "bench", deliveries, remote_ids)
    when = stamp(time.time() - bench_path.signed_after)
    warm_bodies = bench_path.bodies(warm_objects, when)
    timed_bodies = bench_path.bodies(timed_objects, when)
    reset()
    bench_path.seed(warm_objects, warm_bodies)
    bench_path.seed(timed_objects, timed_bodies)
    analyze()
    url = url_of(bench_path, view)
    _, _, _, warm_statuses = post_all(port, url, sign(warm_bodies), concurrency)
    commit_ms = commit_latency()
    signed = sign(timed_bodies)
    before = cpu_snapshot(server_pid)
    seconds, client_cpu, latencies, statuses = post_all(port, url, signed, concurrency)
    server_cpu, db_cpu = cpu_used(before, cpu_snapshot(server_pid))
    errors: list[str] = []
    if set(warm_statuses) - {200}:
        errors.append(f"warm-up answers {dict(sorted(warm_statuses.items()))}")
    if set(statuses) - {200}:
        errors.append(f"answers {dict(sorted(statuses.items()))}, expected only 200")
    found = tally()
    wanted = bench_path.expected(deliveries + warmup)
    if found != wanted:
        errors.append(f"the tables hold {found}, expected {wanted}")
    return Run(
        path=bench_path.name,
        view=view,
        concurrency=concurrency,
        repeat=repeat,
        deliveries=deliveries,
        seconds=seconds,
        client_cpu=client_cpu,
        rate=len(latencies) / seconds if seconds else 0.0,
        p50_ms=percentile(latencies, 0.50) * 1000,
        p99_ms=percentile(latencies, 0.99) * 1000,
        commit_ms=commit_ms,
        server_cpu_ms=server_cpu / deliveries * 1000,
        db_cpu_ms=db_cpu / deliveries * 1000,
        statuses=dict(statuses),
        tally=found,
        errors=errors,
    )


def url_of(bench_path: BenchPath, view: str) -> str:
    from django.urls import reverse

    if view == "real":
        return reverse("ledgepay:webhook")
    return reverse("bench-bare", args=[bench_path.name])


# The database


def create_database() -> None:
    """Create the benchmark's database unless it exists."""
    import psycopg
    from psycopg import sql

    from bench.settings import DATABASES

    db: dict[str, Any] = DATABASES["default"]
    with psycopg.connect(
        host=db["HOST"] or None,
        port=db["PORT"] or None,
        user=db["USER"] or None,
        password=db["PASSWORD"] or None,
        dbname="postgres",
        autocommit=True,
    ) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [db["NAME"]])
        if exists.fetchone() is None:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db["NAME"])))


def create_receipts() -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            f"CREATE TABLE IF NOT EXISTS {RECEIPTS}"
            " (id bigserial PRIMARY KEY, payment_id bigint NOT NULL)"
        )


def reset() -> None:
    """Empty every table a delivery writes to."""
    from django.db import connection

    from django_ledgepay.models import Payment, Reaction, Refund, Transition, WebhookEvent

    models = (Reaction, Transition, WebhookEvent, Refund, Payment)
    tables = ", ".join([*(model._meta.db_table for model in models), RECEIPTS])
    with connection.cursor() as cursor:
        # CASCADE: the other helpers' tables (refund requests, say) that refer to these.
        cursor.execute(f"TRUNCATE {tables} RESTART IDENTITY CASCADE")


def analyze() -> None:
    from django.db import connection

    from django_ledgepay.models import Payment, Refund, Transition, WebhookEvent

    with connection.cursor() as cursor:
        for model in (WebhookEvent, Payment, Refund, Transition):
            cursor.execute(f"VACUUM ANALYZE {model._meta.db_table}")
    connection.close()


def tally() -> dict[str, int]:
    """What the tables hold: events, payments and refunds by status, transitions by signal,
    undelivered transitions, receipts. Zero counts are left out."""
    from django.db import connection
    from django.db.models import Count

    from django_ledgepay.models import Payment, Refund, Transition, WebhookEvent

    found: dict[str, int] = {"events": WebhookEvent.objects.count()}
    groups = (("payments", Payment, "status"), ("refunds", Refund, "status"))
    for name, model, column in (*groups, ("transitions", Transition, "signal")):
        rows = model.objects.order_by().values_list(column).annotate(n=Count("pk"))
        for value, number in rows:
            found[f"{name}.{value}"] = number
    found["undelivered"] = Transition.objects.filter(delivered_at__isnull=True).count()
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT count(*) FROM {RECEIPTS}")
        found["receipts"] = cursor.fetchone()[0]
    connection.close()
    return {key: value for key, value in found.items() if value}


def commit_latency(count: int = 50) -> float:
    """The median time of a one-row INSERT committed on its own, in ms: mostly the WAL's fsync.

    The runs share the disk with everything else on the machine; when this jumps, a run is
    slow for a reason that is not the code.
    """
    from django.db import connection

    times = []
    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE IF NOT EXISTS bench_commit_probe (id bigserial PRIMARY KEY)")
        for _ in range(count):
            began = time.perf_counter()
            cursor.execute("INSERT INTO bench_commit_probe DEFAULT VALUES")
            times.append(time.perf_counter() - began)
        cursor.execute("TRUNCATE bench_commit_probe")
    connection.close()
    return statistics.median(times) * 1000


# CPU


def cpu_snapshot(server_pid: int) -> dict[str, dict[int, float]]:
    """CPU seconds used so far by each gunicorn worker (the master's children) and each
    PostgreSQL backend connected to the benchmark's database but this process's own."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        backends = [row[0] for row in cursor.fetchall()]
    return {
        "server": {pid: process_cpu(pid) for pid in children_of(server_pid)},
        "db": {pid: process_cpu(pid) for pid in backends},
    }


def cpu_used(
    before: dict[str, dict[int, float]], after: dict[str, dict[int, float]]
) -> tuple[float, float]:
    """CPU seconds used between two snapshots by the server's and the database's processes
    (a process that started meanwhile counts whole; one that ended meanwhile is missed)."""
    used = [
        sum(max(0.0, cpu - before[kind].get(pid, 0.0)) for pid, cpu in after[kind].items())
        for kind in ("server", "db")
    ]
    return used[0], used[1]


def process_cpu(pid: int) -> float:
    """User and system CPU seconds of a process, 0 when it is gone or unreadable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    # After the command: state, ppid, ... utime and stime are fields 14 and 15 of stat.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_of(parent: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == parent:
            found.append(int(entry.name))
    return found


# Statements


def probe(bench_path: BenchPath, remote_ids: list[str], sequential: int) -> dict[str, Any]:
    """One delivery of the path, real and bare, through Django's test client: its SQL (as
    ``CaptureQueriesContext`` records it) and a check of the rows it leaves. Then
    ``sequential`` deliveries one after another, real, bare, bare, real: the CPU per
    delivery of this process (Django, the app, psycopg; the test client's share is the same
    for both) and of its PostgreSQL backend, the lower of the two runs of each view."""
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    from bench import bare
    from bench.urls import RECEIVER_UID
    from django_ledgepay.models import Payment
    from django_ledgepay.signals import payment_succeeded

    client = Client(HTTP_HOST="127.0.0.1")

    def post(view: str, objects: Objects, *, capture: bool) -> list[str]:
        bodies = bench_path.bodies(objects, stamp(time.time() - bench_path.signed_after))
        reset()
        bench_path.seed(objects, bodies)
        analyze()
        connection.ensure_connection()
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            backend = cursor.fetchone()[0]
        signed = sign(bodies)
        # The log of queries holds 9,000 at most: emptied, so that the capture sees them all.
        connection.queries_log.clear()
        queries = CaptureQueriesContext(connection)
        began, db_began = time.process_time(), process_cpu(backend)
        with queries if capture else nullcontext():
            for body, headers in signed:
                headers.pop("Content-Type")
                response = client.post(
                    url_of(bench_path, view),
                    body,
                    content_type="application/json",
                    headers=headers,
                )
                if response.status_code != 200:
                    raise RuntimeError(
                        f"{bench_path.name}: the {view} view answered"
                        f" {response.status_code}: {response.content[:300]!r}"
                    )
        count = len(objects.payments)
        cpu[view].append(
            ((time.process_time() - began) / count, (process_cpu(backend) - db_began) / count)
        )
        wanted = bench_path.expected(count)
        if tally() != wanted:
            raise RuntimeError(
                f"{bench_path.name}: {count} deliveries to the {view} view left {tally()},"
                f" expected {wanted}"
            )
        return [query["sql"] for query in queries.captured_queries] if capture else []

    statements: dict[str, list[str]] = {}
    cpu: dict[str, list[tuple[float, float]]] = {view: [] for view in VIEWS}
    if bench_path.receiver:
        payment_succeeded.connect(bare.receipt_receiver, sender=Payment, dispatch_uid=RECEIVER_UID)
    try:
        for view in VIEWS:
            counted = post(view, objects_for(bench_path, "count", 1, remote_ids), capture=True)
            if not counted:
                raise RuntimeError(f"{bench_path.name}: no statement captured for {view}")
            statements[view] = counted
        cpu = {view: [] for view in VIEWS}
        if sequential:
            for view in (*VIEWS, *VIEWS[::-1]):
                post(view, objects_for(bench_path, "bench", sequential, remote_ids), capture=False)
    finally:
        if bench_path.receiver:
            payment_succeeded.disconnect(sender=Payment, dispatch_uid=RECEIVER_UID)
    return {
        "statements": statements,
        "sequential": {
            view: {
                "python_ms": min(python for python, _ in runs) * 1000,
                "db_ms": min(db for _, db in runs) * 1000,
            }
            for view, runs in cpu.items()
            if runs
        },
    }


def verbs(statements: Sequence[str]) -> str:
    """``SELECT, INSERT, UPDATE`` for a list of statements; ``WITH`` for a CTE."""
    return ", ".join(sql.split(None, 1)[0].upper() if sql.strip() else "?" for sql in statements)


def format_statements(
    paths: Sequence[BenchPath],
    statements: dict[str, Any],
    sequential: dict[str, dict[str, dict[str, float]]],
) -> str:
    lines = [
        "Per delivery, through Django's test client: the statements (CaptureQueriesContext)",
        "and, one delivery after another, the CPU in ms of Django and the app (Python) and of",
        "PostgreSQL:",
    ]
    for bench_path in paths:
        for view in VIEWS:
            mine = statements[bench_path.name][view]
            label = f"{bench_path.number:>2} {bench_path.name}"
            cpu = sequential[bench_path.name].get(view)
            spent = (
                f"  CPU {cpu['python_ms'] + cpu['db_ms']:5.2f} (Python {cpu['python_ms']:.2f},"
                f" PostgreSQL {cpu['db_ms']:.2f})"
                if cpu
                else ""
            )
            lines.append(f"  {label:<20} {view}  {len(mine):>2}{spent}  {verbs(mine)}")
    return "\n".join(lines)


# The deliveries


def sign(bodies: Sequence[bytes]) -> list[tuple[bytes, dict[str, str]]]:
    """Each body with its headers, signed now (redeliveries are signed again, too)."""
    from django_ledgepay.conf import conf
    from django_ledgepay.webhooks import SIGNATURE_HEADER, signature_header

    secrets = conf.webhook_secrets
    now = int(time.time())
    return [
        (
            body,
            {
                "Content-Type": "application/json",
                SIGNATURE_HEADER: signature_header(body, secrets, timestamp=now),
            },
        )
        for body in bodies
    ]


def post_all(
    port: int, path: str, deliveries: Sequence[tuple[bytes, dict[str, str]]], concurrency: int
) -> tuple[float, float, list[float], Counter[int]]:
    """Post every delivery from ``concurrency`` threads, each on its own connection.

    Returns the wall time, the share of a CPU the client used meanwhile, each delivery's
    latency in seconds, and the count of each answer's status (0: no answer). A connection
    is kept alive while the server allows it; gunicorn's sync workers close it after each
    answer, and the thread opens a new one.
    """
    pending = iter(deliveries)
    lock = threading.Lock()
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    start = threading.Barrier(concurrency + 1)

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        mine: list[float] = []
        seen: Counter[int] = Counter()
        start.wait()
        while True:
            with lock:
                item = next(pending, None)
            if item is None:
                break
            body, headers = item
            began = time.perf_counter()
            try:
                conn.request("POST", path, body=body, headers=headers)
                response = conn.getresponse()
                response.read()
            except (OSError, http.client.HTTPException):
                conn.close()
                seen[0] += 1
                continue
            mine.append(time.perf_counter() - began)
            seen[response.status] += 1
        conn.close()
        with lock:
            latencies.extend(mine)
            statuses.update(seen)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    start.wait()
    began, cpu = time.perf_counter(), time.process_time()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - began
    return seconds, (time.process_time() - cpu) / seconds, latencies, statuses


def percentile(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile of ``values``."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


# gunicorn and the sandbox


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_gunicorn(
    port: int, workers: int, worker_class: str, receiver: bool
) -> subprocess.Popen[bytes]:
    log = LOG.open("ab")
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        "bench.wsgi:application",
        "--chdir",
        str(ROOT),
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        str(workers),
        "--worker-class",
        worker_class,
        "--log-level",
        "warning",
        "--graceful-timeout",
        "10",
    ]
    env = {**os.environ, "BENCH_RECEIVER": "1" if receiver else "0"}
    with log:
        return subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=log, env=env)


def wait_until_ready(server: subprocess.Popen[bytes], port: int, timeout: float = 30) -> None:
    """Return once gunicorn answers HTTP on ``port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"gunicorn exited with {server.returncode}; see {LOG}")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            conn.request("GET", "/")
            conn.getresponse().read()
        except OSError:
            time.sleep(0.1)
        else:
            return
        finally:
            conn.close()
    raise RuntimeError(f"gunicorn did not answer within {timeout} s; see {LOG}")


class Servers:
    """The gunicorn serving the paths, started when first needed: one without the
    receiver, one with it."""

    def __init__(self, workers: int, worker_class: str) -> None:
        self.workers, self.worker_class = workers, worker_class
        self.current: tuple[bool, int, subprocess.Popen[bytes]] | None = None

    def port_for(self, bench_path: BenchPath) -> tuple[int, int]:
        """The port of the gunicorn for the path, and its master's pid."""
        if self.current is not None and self.current[0] == bench_path.receiver:
            return self.current[1], self.current[2].pid
        self.stop()
        port = free_port()
        server = start_gunicorn(port, self.workers, self.worker_class, bench_path.receiver)
        self.current = (bench_path.receiver, port, server)
        wait_until_ready(server, port)
        return port, server.pid

    def stop(self) -> None:
        if self.current is not None:
            stop_gunicorn(self.current[2])
            self.current = None


def stop_gunicorn(server: subprocess.Popen[bytes]) -> None:
    server.terminate()
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


@contextmanager
def sandbox_process(count: int, needed: bool) -> Iterator[list[str]]:
    """A sandbox holding ``count`` succeeded payments, in a process of its own (so that it
    does not share the client's interpreter); yields their ids, with ``BENCH_API_BASE``
    pointing at it (the settings read it, in this process and gunicorn's)."""
    if not needed:
        yield []
        return
    process = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--sandbox-process", str(count)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line:
            raise RuntimeError(f"the sandbox exited with {process.wait()}")
        ready = json.loads(line)
        os.environ["BENCH_API_BASE"] = ready["api_base"]
        yield ready["ids"]
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def serve_sandbox(count: int) -> int:
    """The sandbox process: ``count`` succeeded payments, then serve until terminated."""
    setup_path()
    os.environ["DJANGO_SETTINGS_MODULE"] = "bench.settings"
    import django

    django.setup()
    from django_ledgepay.sandbox import Sandbox, server

    # The sandbox enforces no limit but shows one in its rate-limit headers (10,000 a
    # minute), and the app's client, as it must, waits for the window to reset when the
    # headers say none is left: a run of path 7 reaches that in about 40 s, and its real
    # view then stalled for up to 19 s where the bare view (which reads no headers) went on.
    # Neither is then measuring the same work; with a limit no run reaches, both are.
    server.UNENFORCED_LIMIT = 10**9
    sandbox = Sandbox()
    ids = []
    for index in range(count):
        payment = sandbox.state.create_payment(
            {
                "amount": AMOUNT,
                "currency": CURRENCY,
                "success_url": "http://127.0.0.1/ok",
                "cancel_url": "http://127.0.0.1/cancel",
                "metadata": {"order_id": str(index)},
            }
        )
        sandbox.state.settle(payment["id"], "succeeded")
        ids.append(payment["id"])
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stopped.set())
    with sandbox:
        print(json.dumps({"api_base": sandbox.api_base, "ids": ids}), flush=True)
        stopped.wait()
    return 0


# Reporting


def format_run(run: Run, done: int, total: int) -> str:
    verdict = "ok" if run.ok else "FAILED: " + "; ".join(run.errors)
    return (
        f"run {done:>3}/{total}  {run.path:<16} {run.view:<4} c={run.concurrency:<3}"
        f" {run.rate:7.1f}/s  p50 {run.p50_ms:5.1f} ms  p99 {run.p99_ms:6.1f} ms"
        f"  cpu/delivery server {run.server_cpu_ms:.2f} db {run.db_cpu_ms:.2f} ms"
        f"  client {run.client_cpu:4.0%}  commit {run.commit_ms:.2f} ms  {verdict}"
    )


def summarize(
    runs: Sequence[Run],
    paths: Sequence[BenchPath],
    concurrencies: Sequence[int],
    statements: dict[str, dict[str, list[str]]],
    sequential: dict[str, dict[str, dict[str, float]]],
) -> dict[str, Any]:
    """Per path and concurrency: the medians of each view, the ratio real/bare of the
    median deliveries/s, and the range of the ratios of the back-to-back pairs."""
    rows: list[dict[str, Any]] = []
    for bench_path in paths:
        for concurrency in concurrencies:
            mine = [r for r in runs if r.path == bench_path.name and r.concurrency == concurrency]
            row: dict[str, Any] = {"path": bench_path.name, "concurrency": concurrency}
            for view in VIEWS:
                theirs = [r for r in mine if r.view == view]
                row[view] = {
                    "rate": statistics.median(r.rate for r in theirs),
                    "p50_ms": statistics.median(r.p50_ms for r in theirs),
                    "p99_ms": statistics.median(r.p99_ms for r in theirs),
                    "server_cpu_ms": statistics.median(r.server_cpu_ms for r in theirs),
                    "db_cpu_ms": statistics.median(r.db_cpu_ms for r in theirs),
                    "statements": len(statements[bench_path.name][view]),
                    "sequential": sequential[bench_path.name].get(view),
                }
            bare = row["bare"]["rate"]
            row["ratio"] = row["real"]["rate"] / bare if bare else 0.0
            rates = {(r.view, r.repeat): r.rate for r in mine}
            pairs = [
                rates["real", repeat] / rates["bare", repeat]
                for view, repeat in rates
                if view == "real" and rates.get(("bare", repeat))
            ]
            row["pairs"] = [min(pairs, default=0.0), max(pairs, default=0.0)]
            row["met"] = row["ratio"] >= TARGET
            rows.append(row)
    return {
        "target": TARGET,
        "rows": rows,
        "statements": statements,
        "sequential": sequential,
        "met": all(row["met"] for row in rows if row["path"] not in APART),
    }


def format_table(
    summary: dict[str, Any], paths: Sequence[BenchPath], concurrencies: Sequence[int]
) -> str:
    numbers = {p.name: p.number for p in paths}
    lines = [
        "Medians over the runs: deliveries/s, the ratio real/bare (and its range over the",
        "back-to-back pairs), statements per delivery, CPU per delivery in ms (gunicorn +",
        "PostgreSQL):",
        "",
        f"{'path':<20}{'c':>4}{'real/s':>8}{'bare/s':>8}{'ratio':>7}{'pairs':>12}"
        f"{'stmts':>7}{'cpu ms':>12}  target {TARGET:.2f}",
    ]
    for row in summary["rows"]:
        low, high = row["pairs"]
        label = f"{numbers[row['path']]:>2} {row['path']}"
        verdict = "met" if row["met"] else f"missed by {TARGET - row['ratio']:.2f}"
        real, bare = row["real"], row["bare"]
        stmts = f"{real['statements']}/{bare['statements']}"
        cpu = "/".join(f"{v['server_cpu_ms'] + v['db_cpu_ms']:.2f}" for v in (real, bare))
        lines.append(
            f"{label:<20}{row['concurrency']:>4}{real['rate']:>8.0f}{bare['rate']:>8.0f}"
            f"{row['ratio']:>7.2f}{f'{low:.2f}-{high:.2f}':>12}{stmts:>7}{cpu:>12}  {verdict}"
        )
    lines.append("")
    without = [row for row in summary["rows"] if row["path"] not in APART]
    if without:
        met = "met" if summary["met"] else "not met"
        lines.append(
            f"target real/bare >= {TARGET:.2f} on every path but {', '.join(sorted(APART))},"
            f" at concurrency {', '.join(map(str, concurrencies))}: {met}"
        )
    return "\n".join(lines)


def format_markdown(summary: dict[str, Any], paths: Sequence[BenchPath]) -> str:
    """The results as a Markdown table, for the README and the docs."""
    titles = {p.name: (p.number, p.title) for p in paths}
    lines = [
        "| # | path | c | real/s | bare/s | real/bare | pairs | statements real/bare"
        " | CPU ms real/bare | one by one | target |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in summary["rows"]:
        number, title = titles[row["path"]]
        real, bare = row["real"], row["bare"]
        low, high = row["pairs"]
        cpu = " / ".join(f"{v['server_cpu_ms'] + v['db_cpu_ms']:.2f}" for v in (real, bare))
        verdict = "met" if row["met"] else f"missed by {TARGET - row['ratio']:.2f}"
        alone = " / ".join(
            f"{v['sequential']['python_ms'] + v['sequential']['db_ms']:.2f}"
            if v["sequential"]
            else "-"
            for v in (real, bare)
        )
        lines.append(
            f"| {number} | `{row['path']}`: {title} | {row['concurrency']} | {real['rate']:.0f}"
            f" | {bare['rate']:.0f} | {row['ratio']:.2f} | {low:.2f}-{high:.2f}"
            f" | {real['statements']} / {bare['statements']} | {cpu} | {alone} | {verdict} |"
        )
    return "\n".join(lines)


def describe_environment(args: argparse.Namespace) -> dict[str, str]:
    import django
    from django.db import connection

    from bench.machine import cpu_model

    with connection.cursor() as cursor:
        cursor.execute("SHOW server_version")
        server_version = cursor.fetchone()[0]
        cursor.execute(
            "SELECT name, setting FROM pg_settings"
            " WHERE name IN ('fsync', 'synchronous_commit') ORDER BY name"
        )
        pg_settings = ", ".join(f"{name}={setting}" for name, setting in cursor.fetchall())
    connection.close()
    load = os.getloadavg()[0]
    cpus = os.cpu_count()
    busy = " (the machine is busy: expect noise)" if cpus and load > cpus / 2 else ""
    machine, system = platform.machine(), platform.system()
    python, django_version = platform.python_version(), django.get_version()
    gunicorn_version = metadata.version("gunicorn")
    concurrency = ", ".join(map(str, args.concurrency))
    paths = ", ".join(p.name for p in args.paths)
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{machine}, {cpus} cores, {cpu_model()}, {system}",
        "busy": f"load average {load:.2f} at the start{busy}",
        "code": git_revision(),
        "software": (
            f"Python {python}, Django {django_version}, gunicorn {gunicorn_version},"
            f" PostgreSQL {server_version} ({pg_settings})"
        ),
        "server": (
            f"gunicorn, {args.workers} {args.worker_class} workers, CONN_MAX_AGE=60,"
            f" prepared statements {'on' if args.prepared else 'off'}"
        ),
        "load": (
            f"{args.deliveries} deliveries per run after {args.warmup} untimed,"
            f" concurrency {concurrency}, {args.repeat} back-to-back pairs each"
        ),
        "paths": paths,
    }


def git_revision() -> str:
    def git(*args: str) -> str:
        try:
            done = subprocess.run(
                ["git", *args], cwd=ROOT, capture_output=True, text=True, check=True
            )
        except (OSError, subprocess.CalledProcessError):
            return ""
        return done.stdout.strip()

    revision = git("rev-parse", "--short", "HEAD") or "unknown"
    if git("status", "--porcelain", "--untracked-files=no", "--", "django_ledgepay"):
        revision += " with uncommitted changes to django_ledgepay/"
    return revision


def save(environment: dict[str, str], runs: Sequence[Run], summary: dict[str, Any]) -> None:
    moment = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    result = {
        "environment": environment,
        "runs": [asdict(run) for run in runs],
        "summary": summary,
    }
    path = RESULTS / f"{moment}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nSaved to {path.relative_to(ROOT)}")


if __name__ == "__main__":
    sys.exit(main())
