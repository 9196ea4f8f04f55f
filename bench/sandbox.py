"""Benchmark the LedgePay sandbox: round trips, list pages, a sync of 10,000 payments.

Run from the repository root::

    .venv/bin/python bench/sandbox.py [--requests N] [--profile]

In one run, on this machine (its cores, CPU and Python are printed first):

1. **Round trip.** Keep-alive ``GET /v1/payments/{id}`` against the sandbox, next to a bare
   ``http.server`` answering a body of the same size, one request to each in turn on one
   keep-alive ``http.client`` connection each: median and range in microseconds, and the
   ratio of the medians (target: at most 2) with the range of the ratios of ten blocks.
   Three times: with both servers in a Python process of their own, as an app reaches
   ``manage.py ledgepay_sandbox`` (the target is judged there); in the client's process with
   every thread on one core, where no thread waits for another core to wake it and the
   difference is the sandbox's own work per request; and in the client's process on every
   core, as the tests' fixture runs the sandbox, with a control beside it: a bare server
   that first spends as long in Python as the sandbox's own work, holding the GIL as it
   does (what any server doing that much more costs a client that shares its GIL).
   For reference, the same bare server as ``http.server`` answers by default (headers and
   body in two sends, no ``TCP_NODELAY``), which is how the sandbox answered before: the
   body waits for the client's delayed ACK.
2. **List pages** at 1,000, 10,000 and 100,000 payments: the newest page, a page deep in
   the past (``created_before``) and a page of one status, 100 payments each, served by the
   state in-process and over HTTP; next to the former way (sort and copy every payment).
   And what ``--state`` costs: a save of the file (the first, then one with nothing
   changed), a load on restart, and 1,000 payments created one after another with and
   without it, 10,000 held.
3. **Sync.** ``django_ledgepay.services.sync_payments()`` (what ``manage.py ledgepay_sync``
   runs) of 10,000 payments from the sandbox into a fresh SQLite database, and into a fresh
   PostgreSQL database when ``DATABASE_URL`` is set (its test database,
   ``ledgepay_bench_sync``, created and dropped). Then the same sync again, with nothing
   changed. Target: under 10 s. ``--profile`` prints where the first sync's time goes.

A measurement, not a test: it exits 1 only when a sync did not mirror every payment.
"""

from __future__ import annotations

import argparse
import cProfile
import http.client
import io
import json
import os
import platform
import pstats
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, NamedTuple

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

AUTH = {"Authorization": "Bearer sk_test_bench"}
NEW = {
    "amount": 2500,
    "currency": "EUR",
    "description": "Order #12345",
    "customer": {"email": "customer@example.com", "name": "Jane Doe"},
    "metadata": {"order_id": "12345"},
    "success_url": "https://shop.example/orders/12345/return",
    "cancel_url": "https://shop.example/orders/12345/cancel",
}
SIZES = (1_000, 10_000, 100_000)
SYNC_PAYMENTS = 10_000
SYNC_TARGET = 10.0
ROUND_TRIP_TARGET = 2.0
#: Thirty days before this moment: the seeded payments' times.
EPOCH = 1_764_547_200  # 2025-12-01T00:00:00Z
SPAN = 30 * 24 * 3600


def configure_django(database_url: str | None = None, *, directory: str | None = None) -> None:
    """Settings for the app, with ``database_url`` or, in ``directory``, a SQLite file."""
    import environ

    from django.conf import settings

    database: dict[str, Any]
    if database_url is not None:
        database = dict(environ.Env.db_url_config(database_url))
        database["TEST"] = {"NAME": "ledgepay_bench_sync"}
    elif directory is not None:
        # A file, as a project has it (a commit waits for the disk), in IMMEDIATE mode as
        # the README advises.
        name = os.path.join(directory, "sync.sqlite3")
        database = {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": name,
            "TEST": {"NAME": name},
            "OPTIONS": {"transaction_mode": "IMMEDIATE"},
        }
    else:
        database = {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}
    settings.configure(
        SECRET_KEY="bench-only-not-secret",
        USE_TZ=True,
        TIME_ZONE="UTC",
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
        DATABASES={"default": database},
        INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth", "django_ledgepay"],
        LEDGEPAY_API_KEY="sk_test_bench",
        LEDGEPAY_WEBHOOK_SECRET="whsec_bench",
        LOGGING_CONFIG=None,
    )
    import django

    django.setup()


# The machine


def machine() -> str:
    from bench.machine import cpu_model

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{os.cpu_count()} cores, {cpu_model()}; Python {platform.python_version()} "
        f"({platform.python_implementation()}), {platform.system()} {platform.release()}; "
        f"load average {load:.2f} at the start"
    )


# 1. Round trip


def bare_server(body: bytes, *, one_send: bool, work: float = 0.0) -> ThreadingHTTPServer:
    """``http.server`` answering every GET with ``body``: with TCP_NODELAY and headers and
    body in one send (``one_send``), or as it does by default; after ``work`` seconds of
    busy Python per request (holding the GIL, as the sandbox's own work does)."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        if one_send:
            wbufsize = 64 * 1024

        def setup(self) -> None:
            super().setup()
            if one_send:
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            if work:
                until = time.perf_counter() + work
                while time.perf_counter() < until:
                    pass
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            self.wfile.flush()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def timed_gets(connection: http.client.HTTPConnection, path: str, count: int) -> list[float]:
    """Seconds of each of ``count`` GETs on one kept-alive connection."""
    times = []
    for _ in range(count):
        start = time.perf_counter()
        connection.request("GET", path, headers=AUTH)
        response = connection.getresponse()
        response.read()
        times.append(time.perf_counter() - start)
        if response.status != 200:
            raise RuntimeError(f"GET {path} answered {response.status}")
    return times


def describe(times: list[float]) -> str:
    ordered = sorted(times)
    p10, p90 = ordered[len(ordered) // 10], ordered[len(ordered) * 9 // 10]
    return (
        f"median {statistics.median(ordered) * 1e6:8.0f} µs, p10-p90 {p10 * 1e6:.0f}-"
        f"{p90 * 1e6:.0f} µs, min-max {ordered[0] * 1e6:.0f}-{ordered[-1] * 1e6:.0f} µs"
    )


@contextmanager
def round_trip_servers(work: float = 0.0) -> Iterator[dict[str, Any]]:
    """A sandbox holding one payment and the bare servers, answering with its body; yields
    their ports, the payment's path and the body's length. With ``work`` (seconds), also a
    bare server that spends that long in Python on each request before it answers."""
    from django_ledgepay.sandbox import Sandbox

    with Sandbox() as sandbox:
        payment = sandbox.state.create_payment(NEW)
        body = json.dumps(payment).encode()
        bare = {
            "bare": bare_server(body, one_send=True),
            "default": bare_server(body, one_send=False),
        }
        if work:
            bare["busy"] = bare_server(body, one_send=True, work=work)
        try:
            yield {
                "ports": {
                    "sandbox": sandbox.port,
                    **{name: server.server_address[1] for name, server in bare.items()},
                },
                "path": f"/v1/payments/{payment['id']}",
                "size": len(body),
            }
        finally:
            for server in bare.values():
                server.shutdown()


def serve_round_trips() -> None:
    """``--serve``: the servers of :func:`round_trip_servers`, until stdin closes; their
    ports, path and size first, as one line of JSON."""
    with round_trip_servers() as servers:
        print(json.dumps(servers), flush=True)
        sys.stdin.read()


@contextmanager
def servers_in_a_process() -> Iterator[dict[str, Any]]:
    """:func:`round_trip_servers` in a Python process of their own (``--serve``)."""
    child = subprocess.Popen(
        [sys.executable, __file__, "--serve"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        yield json.loads(child.stdout.readline())
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(timeout=30)


def interleaved(servers: dict[str, Any], requests: int, blocks: int) -> dict[str, Any]:
    """``requests`` GETs to the sandbox and to the bare server (and to the busy one, when
    there is one), one to each in turn (so that all see the machine as it is), each on a
    kept-alive connection; then 25 to the bare server as it answers by default."""
    ports = servers["ports"]
    paths = {"sandbox": servers["path"], "bare": "/"}
    if "busy" in ports:
        paths["busy"] = "/"
    connections = {name: http.client.HTTPConnection("127.0.0.1", ports[name]) for name in paths}
    for name, connection in connections.items():
        timed_gets(connection, paths[name], 100)  # Warm-up.
    times: dict[str, list[float]] = {name: [] for name in connections}
    names = list(connections)
    for number in range(requests):
        for name in names if number % 2 == 0 else names[::-1]:
            times[name].extend(timed_gets(connections[name], paths[name], 1))
    for connection in connections.values():
        connection.close()
    per_block = max(1, requests // blocks)
    ratios = [
        statistics.median(times["sandbox"][start : start + per_block])
        / statistics.median(times["bare"][start : start + per_block])
        for start in range(0, requests, per_block)
    ]
    stalled = http.client.HTTPConnection("127.0.0.1", ports["default"])
    timed_gets(stalled, "/", 3)
    times["default"] = timed_gets(stalled, "/", 25)
    stalled.close()
    return {
        "times": times,
        "ratio": statistics.median(times["sandbox"]) / statistics.median(times["bare"]),
        "blocks": (min(ratios), max(ratios)),
    }


@contextmanager
def servers_on_one_core() -> Iterator[dict[str, Any]]:
    """:func:`round_trip_servers` in the client's process, every thread on one core."""
    cores = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(cores)})  # This thread, and the threads it starts.
    try:
        with round_trip_servers() as servers:
            yield servers
    finally:
        os.sched_setaffinity(0, cores)


class Layout(NamedTuple):
    """Where the servers run."""

    label: str
    #: The servers, given the sandbox's own work per request (seconds) measured so far.
    servers: Callable[[float], AbstractContextManager[dict[str, Any]]]
    #: Whether the target is judged here.
    judged: bool = False
    #: One thread at a time: the difference from the bare server is the sandbox's own work,
    #: which the busy bare server of the layouts after it spends.
    alone: bool = False


LAYOUTS = (
    Layout(
        "in a process of their own, as `manage.py ledgepay_sandbox` runs",
        lambda work: servers_in_a_process(),
        judged=True,
    ),
    Layout(
        "in the client's process, all on one core",
        lambda work: servers_on_one_core(),
        alone=True,
    ),
    Layout("in the client's process, as the tests' fixture runs it", round_trip_servers),
)


def round_trips(requests: int, blocks: int = 10) -> dict[str, Any]:
    results: dict[str, Any] = {}
    work = 0.0
    for number, (layout, servers, judged, alone) in enumerate(LAYOUTS):
        with servers(work) as found:
            run = interleaved(found, requests, blocks)
        times = run["times"]
        medians = {name: statistics.median(values) for name, values in times.items()}
        if number == 0:
            print(
                f"\n1. Keep-alive GET round trip, a {found['size']}-byte body, {requests}"
                " requests each"
            )
        print(f"   servers {layout}")
        print(f"   sandbox                            {describe(times['sandbox'])}")
        print(f"   bare http.server (one send)        {describe(times['bare'])}")
        if "busy" in times:
            label = f"bare, {work * 1e6:.0f} µs of Python first"
            print(f"   {label:35}{describe(times['busy'])}  (control)")
        print(f"   bare http.server, default sends    {describe(times['default'])}  (reference)")
        low, high = run["blocks"]
        verdict = ""
        if judged:
            met = "met" if run["ratio"] <= ROUND_TRIP_TARGET else "NOT met"
            verdict = f"; target at most {ROUND_TRIP_TARGET:.0f}: {met}"
        print(f"   sandbox / bare: {run['ratio']:.2f} (blocks {low:.2f}-{high:.2f}){verdict}")
        if alone:
            work = max(0.0, medians["sandbox"] - medians["bare"])
            print(f"   the sandbox's own work: {work * 1e6:.0f} µs a request")
        if "busy" in times:
            print(
                f"   busy bare / bare: {medians['busy'] / medians['bare']:.2f}: what that much"
                " more work per request costs any server sharing the client's GIL"
            )
        results[layout] = {
            "sandbox_us": medians["sandbox"] * 1e6,
            "bare_us": medians["bare"] * 1e6,
            "default_us": medians["default"] * 1e6,
            "ratio": run["ratio"],
            **({"busy_us": medians["busy"] * 1e6} if "busy" in times else {}),
        }
    return results


# 2. List pages


def seed(state: Any, count: int, generator: random.Random) -> None:
    """``count`` payments spread over thirty days, a mix of statuses as a shop has them."""
    moments = sorted(EPOCH - SPAN + generator.random() * SPAN for _ in range(count))
    clock = iter(moments)
    state.clock = lambda: next(clock)
    for number in range(count):
        payment = state.create_payment({**NEW, "amount": 100 + number % 9000})
        draw = generator.random()
        if draw < 0.85:
            status = "succeeded" if draw < 0.70 else "failed" if draw < 0.80 else "canceled"
            state.clock = lambda: EPOCH
            state.settle(payment["id"], status)
            state.clock = lambda: next(clock)
    state.clock = time.time


def former_page(state: Any, query: dict[str, str]) -> dict[str, Any]:
    """A page as the sandbox made it before its index: sort and copy every payment."""
    limit = int(query.get("limit", 10))
    status = query.get("status")
    before = query.get("created_before")
    with state.lock:
        items = sorted(
            state.payments.values(),
            key=lambda p: (p["created_at"], state._sequence[p["id"]]),
            reverse=True,
        )
        items = [
            dict(p)
            for p in items
            if (status is None or p["status"] == status)
            and (before is None or p["created_at"] < before)
        ]
    return {"data": items[:limit], "has_more": len(items) > limit}


def median_time(action: Callable[[], Any], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def page_times(sandbox: Any, size: int) -> dict[str, float]:
    """Seconds of each kind of page, and of --state's work, with ``size`` payments seeded."""
    from django_ledgepay.sandbox import Sandbox, storage

    state = sandbox.state
    seed(state, size, random.Random(size))
    stamps = sorted(p["created_at"] for p in state.payments.values())
    queries = {
        "newest": {"limit": "100"},
        "deep": {"limit": "100", "created_before": stamps[len(stamps) // 2]},
        "status": {"limit": "100", "status": "succeeded"},
    }
    for query in queries.values():  # The index answers as the former way did.
        assert state.list_payments(query) == former_page(state, query), query
    row = {}
    for name, query in queries.items():
        row[name] = median_time(partial(state.list_payments, query), 200)
    connection = http.client.HTTPConnection("127.0.0.1", sandbox.port)
    timed_gets(connection, "/v1/payments?limit=100", 10)
    row["http"] = statistics.median(timed_gets(connection, "/v1/payments?limit=100", 100))
    connection.close()
    newest = queries["newest"]
    row["former"] = median_time(lambda: former_page(state, newest), 3 if size >= 100_000 else 20)
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "state.json"

        def save() -> None:
            storage.write_atomically(path, storage.dump(state.snapshot(), []))

        row["first_save"] = median_time(save, 1)  # Every payment encoded.
        row["save"] = median_time(save, 5)  # Only what changed (nothing) encoded.
        row["load"] = median_time(lambda: Sandbox(state_file=path), 1)
        row["bytes"] = path.stat().st_size
    return row


def list_pages() -> dict[int, dict[str, float]]:
    from django_ledgepay.sandbox import Sandbox

    results = {}
    for size in SIZES:
        with Sandbox() as sandbox:
            results[size] = page_times(sandbox, size)
    print("\n2. List pages of 100, median ms (former: sort and copy every payment, as before)")
    print(
        f"   {'payments':>9} | {'newest':>7} {'deep':>7} {'status':>7} {'HTTP':>7} | {'former':>8}"
    )
    for size, row in results.items():
        ms = {name: value * 1000 for name, value in row.items()}
        print(
            f"   {size:>9,} | {ms['newest']:7.3f} {ms['deep']:7.3f} {ms['status']:7.3f} "
            f"{ms['http']:7.3f} | {ms['former']:8.1f}"
        )
    print("\n   --state: ms to save the file (first, then with nothing changed), to load it")
    print(f"   {'payments':>9} | {'file':>8} | {'first':>7} {'next':>7} | {'load':>7}")
    for size, row in results.items():
        ms = {name: value * 1000 for name, value in row.items()}
        print(
            f"   {size:>9,} | {row['bytes'] / 1e6:6.1f}MB | {ms['first_save']:7.1f} "
            f"{ms['save']:7.1f} | {ms['load']:7.1f}"
        )
    return results


def timed_posts(port: int, count: int) -> list[float]:
    connection = http.client.HTTPConnection("127.0.0.1", port)
    body = json.dumps(NEW)
    headers = {**AUTH, "Content-Type": "application/json"}
    times = []
    for _ in range(count):
        start = time.perf_counter()
        connection.request("POST", "/v1/payments", body=body, headers=headers)
        response = connection.getresponse()
        response.read()
        times.append(time.perf_counter() - start)
        if response.status != 201:
            raise RuntimeError(f"POST /v1/payments answered {response.status}")
    connection.close()
    return times


def state_file_cost(held: int = 10_000, posts: int = 1000) -> None:
    """POST /payments one after another, with and without --state, ``held`` payments in."""
    from django_ledgepay.sandbox import Sandbox, storage

    print(f"\n   Creating {posts} payments one after another, {held:,} held before")
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "state.json"
        for label, state_file in (("in memory", None), ("--state", path)):
            with Sandbox(state_file=state_file) as sandbox:
                seed(sandbox.state, held, random.Random(held))
                sandbox.save()
                start = time.perf_counter()
                times = timed_posts(sandbox.port, posts)
                seconds = time.perf_counter() - start
            print(f"   {label:<10} {posts / seconds:6.0f}/s, {describe(times)}")
        document = storage.load(path)
        saved = 0 if document is None else len(document["state"]["payments"])
        print(f"   {'':<10} the file holds {saved:,} payments after stop()")


# 3. Sync


@contextmanager
def fresh_database() -> Iterator[None]:
    from django.db import connection

    name = connection.creation.create_test_db(verbosity=0, autoclobber=True)
    try:
        yield
    finally:
        connection.creation.destroy_test_db(name, verbosity=0)


def sync_run(profile: bool) -> dict[str, Any]:
    """In a process configured for one database: seed, sync twice, count."""
    from django.conf import settings
    from django.db import connection

    from django_ledgepay import services
    from django_ledgepay.models import Payment
    from django_ledgepay.sandbox import Sandbox

    result: dict[str, Any] = {"vendor": connection.vendor}
    with Sandbox() as sandbox, fresh_database():
        seed(sandbox.state, SYNC_PAYMENTS, random.Random(7))
        settings.LEDGEPAY_API_BASE = sandbox.api_base
        profiler = cProfile.Profile() if profile else None
        start = time.perf_counter()
        if profiler is not None:
            profiler.enable()
        first = services.sync_payments()
        if profiler is not None:
            profiler.disable()
        result["first_s"] = time.perf_counter() - start
        result["first"] = str(first)
        result["pages"] = first.pages
        start = time.perf_counter()
        again = services.sync_payments()
        result["again_s"] = time.perf_counter() - start
        result["again"] = str(again)
        mirrored = dict(Payment.objects.values_list("ledgepay_id", "status"))
        expected = {key: value["status"] for key, value in sandbox.state.payments.items()}
        result["complete"] = mirrored == expected
        if profiler is not None:
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(30)
            result["profile"] = out.getvalue()
    return result


def sync_in_child(database_url: str | None, profile: bool) -> dict[str, Any]:
    command = [sys.executable, __file__, "--sync-only"]
    if database_url:
        command += ["--database", database_url]
    if profile:
        command.append("--profile")
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"The sync run failed:\n{done.stdout}\n{done.stderr}")
    return dict(json.loads(done.stdout.splitlines()[-1]))


def syncs(profile: bool) -> bool:
    print(f"\n3. sync_payments() of {SYNC_PAYMENTS:,} payments from the sandbox, fresh database")
    databases: list[str | None] = [None]
    if os.environ.get("DATABASE_URL", "").startswith("postgres"):
        databases.append(os.environ["DATABASE_URL"])
    complete = True
    for database_url in databases:
        result = sync_in_child(database_url, profile)
        met = "met" if result["first_s"] < SYNC_TARGET else "NOT met"
        print(
            f"   {result['vendor']:<10} first sync {result['first_s']:6.2f} s ({result['pages']} "
            f"pages; {result['first']}); target under {SYNC_TARGET:.0f} s: {met}"
        )
        print(f"   {'':<10} again      {result['again_s']:6.2f} s ({result['again']})")
        if not result["complete"]:
            print("   THE MIRROR DOES NOT MATCH THE SANDBOX")
            complete = False
        if profile:
            print(result["profile"])
    return complete


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=5000, help="round trips per server")
    parser.add_argument("--profile", action="store_true", help="profile the first sync")
    parser.add_argument("--sync-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--database", help=argparse.SUPPRESS)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        configure_django()
        serve_round_trips()
        return 0
    if args.sync_only:
        with tempfile.TemporaryDirectory(prefix="ledgepay-bench-") as directory:
            configure_django(args.database, directory=directory)
            print(json.dumps(sync_run(args.profile)))
        return 0
    configure_django()
    print(f"Machine: {machine()}")
    round_trips(args.requests)
    list_pages()
    state_file_cost()
    return 0 if syncs(args.profile) else 1


if __name__ == "__main__":
    sys.exit(main())
