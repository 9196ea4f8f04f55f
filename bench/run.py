"""Benchmark the webhook view against a bare view, both served by gunicorn on PostgreSQL.

Run from the repository root::

    .venv/bin/python bench/run.py [--deliveries N] [--workers W]

For each concurrency (8 and 32) and each view (the project's ``ledgepay:webhook`` and the
bare baseline in ``bench/bare.py``), in alternating order and ``--repeat`` times: empty the
tables, seed N pending payments, sign N distinct ``payment.succeeded`` deliveries, start
gunicorn, warm it up, post the N deliveries over loopback at that concurrency, check that
every answer was 200 and that exactly the N payments succeeded, stop gunicorn. Then print
the medians (deliveries/s, p50, p99) and the ratio real/bare of deliveries/s.

Exits 1 when a correctness check fails, 0 otherwise whatever the ratio: this is a
measurement, not a test.
"""

from __future__ import annotations

import argparse
import datetime
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
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
LOG = RESULTS / "gunicorn.log"
TARGET = 0.8
VIEWS = ("real", "bare")
BENCH_PREFIX = "pay_bench_"
WARM_PREFIX = "pay_warm_"


@dataclass
class Run:
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
    statuses: dict[int, int]
    succeeded: int
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--deliveries",
        type=int,
        default=2000,
        help="per run (default 2000); a run must end within the 300 s signature tolerance",
    )
    parser.add_argument("--workers", type=int, default=4, help="gunicorn workers (default 4)")
    parser.add_argument(
        "--worker-class", default="sync", help="gunicorn worker class (default sync)"
    )
    parser.add_argument(
        "--concurrency", type=int, nargs="+", default=[8, 32], help="default: 8 32"
    )
    parser.add_argument(
        "--repeat", type=int, default=5, help="runs per view and concurrency (default 5)"
    )
    parser.add_argument(
        "--warmup", type=int, default=200, help="untimed deliveries before each run"
    )
    args = parser.parse_args(argv)
    # Stop gunicorn on SIGTERM too, through the finally clauses.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))

    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    # Not setdefault: a shell that exports the test suite's settings must not seed SQLite.
    os.environ["DJANGO_SETTINGS_MODULE"] = "bench.settings"
    RESULTS.mkdir(exist_ok=True)
    create_database()

    import django
    from django.core.management import call_command
    from django.urls import reverse

    django.setup()
    call_command("migrate", verbosity=0)
    paths = {"real": reverse("ledgepay:webhook"), "bare": reverse("bench-bare")}

    environment = describe_environment(args)
    for key, value in environment.items():
        print(f"{key:>12}: {value}")
    print()

    runs: list[Run] = []
    total = len(args.concurrency) * args.repeat * len(VIEWS)
    for concurrency in args.concurrency:
        for repeat in range(args.repeat):
            # Alternate which view goes first, so a drift in the machine favours neither.
            order = VIEWS if repeat % 2 == 0 else VIEWS[::-1]
            for view in order:
                run = measure(
                    view,
                    paths[view],
                    concurrency=concurrency,
                    repeat=repeat,
                    deliveries=args.deliveries,
                    warmup=args.warmup,
                    workers=args.workers,
                    worker_class=args.worker_class,
                )
                runs.append(run)
                done = len(runs)
                verdict = "ok" if run.ok else "FAILED: " + "; ".join(run.errors)
                print(
                    f"run {done:>2}/{total}  {view:<4} c={concurrency:<3}"
                    f" {run.rate:6.1f}/s  p50 {run.p50_ms:5.1f} ms  p99 {run.p99_ms:5.1f} ms"
                    f"  client {run.client_cpu:4.0%} CPU  commit {run.commit_ms:.2f} ms"
                    f"  {verdict}",
                    flush=True,
                )

    summary = summarize(runs, args.concurrency)
    print()
    print(format_table(summary, args.concurrency))
    save(environment, runs, summary)

    failed = [run for run in runs if not run.ok]
    if failed:
        print()
        print("!" * 72)
        print(f"CORRECTNESS FAILED in {len(failed)} of {total} runs:")
        for run in failed:
            number = run.repeat + 1
            errors = "; ".join(run.errors)
            print(f"  {run.view} c={run.concurrency} #{number}: {errors}")
        print(f"gunicorn's log: {LOG}")
        print("!" * 72)
        return 1
    return 0


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


def reset_and_seed(deliveries: int, warmup: int) -> None:
    """Empty the tables, then seed the pending payments the deliveries will announce."""
    from django.db import connection
    from django.utils import timezone

    from django_ledgepay.models import Payment, Refund, WebhookEvent

    tables = ", ".join(model._meta.db_table for model in (WebhookEvent, Refund, Payment))
    with connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE {tables} RESTART IDENTITY")
    now = timezone.now()
    ids = [payment_id(BENCH_PREFIX, i) for i in range(deliveries)]
    ids += [payment_id(WARM_PREFIX, i) for i in range(warmup)]
    Payment.objects.bulk_create(
        [
            Payment(ledgepay_id=ledgepay_id, amount=5000, currency="EUR", created_at=now)
            for ledgepay_id in ids
        ],
        batch_size=1000,
    )
    with connection.cursor() as cursor:
        for table in (WebhookEvent._meta.db_table, Payment._meta.db_table):
            cursor.execute(f"VACUUM ANALYZE {table}")
    connection.close()


def count_succeeded() -> tuple[int, int]:
    """How many benchmark payments succeeded, and how many other non-warm-up payments exist."""
    from django.db import connection

    from django_ledgepay.models import Payment

    payments = Payment.objects.filter(ledgepay_id__startswith=BENCH_PREFIX)
    succeeded = payments.filter(status=Payment.Status.SUCCEEDED).count()
    strangers = (
        Payment.objects.exclude(ledgepay_id__startswith=BENCH_PREFIX)
        .exclude(ledgepay_id__startswith=WARM_PREFIX)
        .count()
    )
    connection.close()
    return succeeded, strangers


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


def payment_id(prefix: str, index: int) -> str:
    return f"{prefix}{index:07d}"


# The deliveries


def signed_deliveries(prefix: str, count: int) -> list[tuple[bytes, dict[str, str]]]:
    """One signed ``payment.succeeded`` body per payment, with its headers."""
    from django_ledgepay.conf import conf
    from django_ledgepay.webhooks import SIGNATURE_HEADER, signature_header

    secrets = conf.webhook_secrets
    now = int(time.time())
    stamp = datetime.datetime.fromtimestamp(now, datetime.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%SZ"
    )
    deliveries = []
    for index in range(count):
        ledgepay_id = payment_id(prefix, index)
        payload = {
            "event": "payment.succeeded",
            "timestamp": stamp,
            "data": {
                "id": ledgepay_id,
                "amount": 5000,
                "currency": "EUR",
                "metadata": {"order_id": str(index)},
            },
        }
        body = json.dumps(payload).encode()
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: signature_header(body, secrets, timestamp=now),
        }
        deliveries.append((body, headers))
    return deliveries


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


# gunicorn


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_gunicorn(port: int, workers: int, worker_class: str) -> subprocess.Popen[bytes]:
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
    with log:
        return subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=log)


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


def stop_gunicorn(server: subprocess.Popen[bytes]) -> None:
    server.terminate()
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


# One run


def measure(
    view: str,
    path: str,
    *,
    concurrency: int,
    repeat: int,
    deliveries: int,
    warmup: int,
    workers: int,
    worker_class: str,
) -> Run:
    reset_and_seed(deliveries, warmup)
    warm = signed_deliveries(WARM_PREFIX, warmup)
    port = free_port()
    server = start_gunicorn(port, workers, worker_class)
    errors: list[str] = []
    try:
        wait_until_ready(server, port)
        _, _, _, warm_statuses = post_all(port, path, warm, concurrency)
        commit_ms = commit_latency()
        timed = signed_deliveries(BENCH_PREFIX, deliveries)
        seconds, client_cpu, latencies, statuses = post_all(port, path, timed, concurrency)
    finally:
        stop_gunicorn(server)
    if set(warm_statuses) - {200}:
        answers = dict(sorted(warm_statuses.items()))
        errors.append(f"warm-up answers {answers}")
    if set(statuses) - {200}:
        answers = dict(sorted(statuses.items()))
        errors.append(f"answers {answers}, expected only 200")
    succeeded, strangers = count_succeeded()
    if succeeded != deliveries:
        errors.append(f"{succeeded} payments succeeded, expected {deliveries}")
    if strangers:
        errors.append(f"{strangers} payments that were never seeded")
    return Run(
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
        statuses=dict(statuses),
        succeeded=succeeded,
        errors=errors,
    )


# Reporting


def summarize(runs: Sequence[Run], concurrencies: Sequence[int]) -> dict[str, Any]:
    """Medians per view and concurrency, and the ratio real/bare of deliveries/s."""
    rows: dict[str, dict[str, float]] = {}
    ratios: dict[str, float] = {}
    spreads: dict[str, list[float]] = {}
    for concurrency in concurrencies:
        for view in VIEWS:
            mine = [r for r in runs if r.view == view and r.concurrency == concurrency]
            rows[f"{view}/{concurrency}"] = {
                "rate": statistics.median(r.rate for r in mine),
                "p50_ms": statistics.median(r.p50_ms for r in mine),
                "p99_ms": statistics.median(r.p99_ms for r in mine),
            }
        bare = rows[f"bare/{concurrency}"]["rate"]
        ratios[str(concurrency)] = rows[f"real/{concurrency}"]["rate"] / bare if bare else 0.0
        # Each repeat's real and bare ran back to back: the spread of their ratios is the noise.
        rates = {(r.view, r.repeat): r.rate for r in runs if r.concurrency == concurrency}
        pairs = [
            rates["real", repeat] / rates["bare", repeat]
            for view, repeat in rates
            if view == "real" and rates.get(("bare", repeat))
        ]
        spreads[str(concurrency)] = [min(pairs, default=0.0), max(pairs, default=0.0)]
    return {
        "rows": rows,
        "ratios": ratios,
        "spreads": spreads,
        "met": all(r >= TARGET for r in ratios.values()),
    }


def format_table(summary: dict[str, Any], concurrencies: Sequence[int]) -> str:
    lines = [
        "Medians over the runs:",
        "",
        f"{'view':<6}{'concurrency':>12}{'deliveries/s':>14}{'p50 ms':>9}{'p99 ms':>9}",
    ]
    for concurrency in concurrencies:
        for view in VIEWS:
            row = summary["rows"][f"{view}/{concurrency}"]
            lines.append(
                f"{view:<6}{concurrency:>12}{row['rate']:>14.1f}"
                f"{row['p50_ms']:>9.1f}{row['p99_ms']:>9.1f}"
            )
    lines.append("")
    for concurrency in concurrencies:
        ratio = summary["ratios"][str(concurrency)]
        low, high = summary["spreads"][str(concurrency)]
        lines.append(
            f"real/bare deliveries/s at concurrency {concurrency}: {ratio:.2f}"
            f"  (back-to-back pairs: {low:.2f} to {high:.2f})"
        )
    met = "met" if summary["met"] else "not met"
    lines.append(f"target >= {TARGET:.2f}: {met}")
    return "\n".join(lines)


def describe_environment(args: argparse.Namespace) -> dict[str, str]:
    import django
    from django.db import connection

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
    busy = " (the machine is busy: expect noise)" if load > 1 else ""
    cpus = os.cpu_count()
    machine, system = platform.machine(), platform.system()
    python, django_version = platform.python_version(), django.get_version()
    gunicorn_version = metadata.version("gunicorn")
    concurrencies = ", ".join(map(str, args.concurrency))
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{machine}, {cpus} CPUs, {system}",
        "busy": f"load average {load:.2f} at the start{busy}",
        "code": git_revision(),
        "software": (
            f"Python {python}, Django {django_version}, gunicorn {gunicorn_version},"
            f" PostgreSQL {server_version} ({pg_settings})"
        ),
        "server": f"gunicorn, {args.workers} {args.worker_class} workers, CONN_MAX_AGE=60",
        "load": (
            f"{args.deliveries} deliveries per run after {args.warmup} untimed,"
            f" concurrency {concurrencies}, {args.repeat} runs each, alternating real/bare"
        ),
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
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    result = {
        "environment": environment,
        "runs": [asdict(run) for run in runs],
        "summary": summary,
    }
    path = RESULTS / f"{stamp}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    relative = path.relative_to(ROOT)
    print(f"\nSaved to {relative}")


if __name__ == "__main__":
    sys.exit(main())
