"""Soak the delivery of signals: gunicorn and task workers killed at random while the sandbox
delivers webhooks for a thousand payments and their refunds, and ``ledgepay_deliver`` races
the task workers; nothing may be lost or doubled, and no receiver run twice without a crash.

Run from the repository root, with PostgreSQL at 127.0.0.1:5432 and the ``bench`` and
``tasks`` extras installed::

    .venv/bin/python bench/soak_delivery.py [--payments N] [--short]

It creates a fresh database (``SOAK_DATABASE_URL``, default
``postgres://postgres@127.0.0.1:5432/ledgepay_soak_<pid>``; dropped at the end unless
``--keep-db``; never point it at a database you care about), migrates it, and starts:
the sandbox (in this process) at ``--failure-rate`` 0.3 delivering webhooks to gunicorn
(``--workers`` 4 sync workers) serving bench/soak_settings.py, whose tasks run on
django-tasks-db's database backend with ``--task-workers`` 2 ``db_worker`` processes.
The receivers of bench/soak write one row per run that took effect; one of them fails the
first attempt of every tenth transition; a third stands for a call to another system and
also appends a line per run, committed or not, to a file. Then, from ``--concurrency``
threads, each
payment is created with ``services.create_payment`` (against the sandbox's failing API,
retried with its idempotency key), paid in the sandbox, and, for half of them, once the
webhook has marked it succeeded, refunded with ``services.refund_payment`` (in full, or
in two halves). Meanwhile every 0.3-1 s one of the workers, drawn at random among the
gunicorn workers (gunicorn respawns it) and the ``db_worker`` processes (respawned here),
is killed with SIGKILL. All along, ``manage.py ledgepay_deliver --all`` runs again and
again (``--deliver-every`` 1 s after the last run ended), racing the task workers for every
new transition (and, with ``--processing task``, for every stored delivery); the killer
picks it too, now and then. Claims last ``--lease`` seconds (10; ``LEDGEPAY_DELIVERY_LEASE``),
so those of killed processes lapse within the run. Once the sandbox has delivered every
event and the workers have run the receivers' deferred retries (a minute or more later),
the killing stops, the workers drain, everything stops, the last claims lapse, and
``ledgepay_deliver --all`` catches up, run again (as cron would) while a receiver still
fails.

With ``--engine celery`` the task workers are ``celery worker`` processes (solo pool) of
django-tasks-fennel's app, on RabbitMQ in a virtual host of the run's own
(``SOAK_AMQP_URL``, default ``amqp://guest:guest@127.0.0.1:5672/ledgepay_soak_<pid>``,
made and deleted with ``rabbitmqctl``; ``SOAK_RABBITMQCTL`` to run it otherwise).

It exits 1 unless: every transition is delivered; each receiver's effect is there exactly
once for every payment (``payment_succeeded``) and every refund (``refund_created``,
``refund_succeeded``), none lost and none doubled; the receiver that calls another system
ran once for each transition, but where a process was killed during a run (each extra run
is one a killed process began and never committed: at most twice where one process died);
the mirror agrees with the sandbox; no webhook was answered 500. A soak is not a unit test:
CI runs ``--short``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import functools
import json
import os
import platform
import random
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "bench" / "results"
#: This run's logs: gunicorn's (its access log too) and the task workers'.
LOGS = RESULTS / "soak" / str(os.getpid())
SETTINGS = "bench.soak_settings"
#: A database of this run's own, so that two soaks never drop each other's.
DEFAULT_DATABASE_URL = f"postgres://postgres@127.0.0.1:5432/ledgepay_soak_{os.getpid()}"
#: With ``--engine celery``: a virtual host of this run's own on RabbitMQ, likewise.
DEFAULT_AMQP_URL = f"amqp://guest:guest@127.0.0.1:5672/ledgepay_soak_{os.getpid()}"
#: The host part of the Celery workers' node names.
CELERY_HOST = "ledgepay-soak"
SHORT_PAYMENTS = 150
#: How long any one wait may take before the soak gives up and fails.
WAIT = 300.0

T = TypeVar("T")

#: Set when the soak stops early (an error, Ctrl-C, SIGTERM): the shoppers give up.
STOPPING = threading.Event()
#: Each run of the receiver that calls another system, one line: transition, pid, time.
OUTSIDE_LOG = LOGS / "outside.log"
#: The share of kills aimed at the ``ledgepay_deliver`` running now, if one is.
DELIVERER_KILLS = 0.05


@dataclass
class Chaos:
    """What the killer did."""

    web_kills: int = 0
    task_kills: int = 0
    deliver_kills: int = 0
    respawned: int = 0
    #: Every process killed, by pid: a run of a receiver it left uncommitted is excused.
    killed: set[int] = field(default_factory=set)
    log: list[str] = field(default_factory=list)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--payments", type=int, default=1000, help="(default 1000)")
    parser.add_argument("--short", action="store_true", help=f"{SHORT_PAYMENTS} payments, for CI")
    parser.add_argument("--workers", type=int, default=4, help="gunicorn sync workers (4)")
    parser.add_argument("--task-workers", type=int, default=2, help="db_worker processes (2)")
    parser.add_argument("--failure-rate", type=float, default=0.3, help="sandbox API (0.3)")
    parser.add_argument(
        "--kill-every",
        type=float,
        nargs=2,
        default=(0.3, 1.0),
        metavar=("MIN", "MAX"),
        help="seconds between kills, drawn uniformly (0.3 1.0); 0 0 kills nothing",
    )
    parser.add_argument("--concurrency", type=int, default=8, help="shopper threads (8)")
    parser.add_argument(
        "--processing",
        choices=("inline", "task"),
        default="inline",
        help="LEDGEPAY_WEBHOOK_PROCESSING of the web workers (inline)",
    )
    parser.add_argument(
        "--deliver-every",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="pause between two runs of ledgepay_deliver --all during the soak (1.0)",
    )
    parser.add_argument(
        "--lease",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="LEDGEPAY_DELIVERY_LEASE of every process (10)",
    )
    parser.add_argument("--seed", type=int, default=None, help="for the kills and failures")
    parser.add_argument(
        "--no-wait-retries",
        action="store_true",
        help="do not wait (about a minute) for the workers to run the deferred retries",
    )
    parser.add_argument("--keep-db", action="store_true", help="do not drop the database")
    parser.add_argument(
        "--engine",
        choices=("db", "celery"),
        default="db",
        help="the task workers: django-tasks-db's db_worker, or Celery workers on RabbitMQ "
        "through django-tasks-fennel, in a virtual host of their own, SOAK_AMQP_URL (db)",
    )
    options = parser.parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    signal.signal(signal.SIGTERM, _interrupt)
    payments = SHORT_PAYMENTS if options.short else options.payments
    if payments < 1:
        parser.error("--payments must be at least 1.")
    if not 0 <= options.failure_rate <= 1:
        parser.error("--failure-rate must be between 0 and 1.")
    low, high = options.kill_every
    if low < 0 or high < low:
        parser.error("--kill-every needs 0 <= MIN <= MAX.")
    if options.lease <= 0 or options.deliver_every < 0:
        parser.error("--lease must be above 0 and --deliver-every at least 0.")
    seed = options.seed if options.seed is not None else random.randrange(1_000_000)

    database_url = os.environ.get("SOAK_DATABASE_URL", DEFAULT_DATABASE_URL)
    sandbox_port, web_port = free_port(), free_port()
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": SETTINGS,
        "SOAK_DATABASE_URL": database_url,
        "SOAK_API_BASE": f"http://127.0.0.1:{sandbox_port}/v1",
        "SOAK_PROCESSING": options.processing,
        "SOAK_LEASE": str(options.lease),
        "SOAK_OUTSIDE_LOG": str(OUTSIDE_LOG),
        "PYTHONPATH": str(ROOT),
    }
    amqp_url = os.environ.get("SOAK_AMQP_URL", DEFAULT_AMQP_URL)
    if options.engine == "celery":
        env.update(SOAK_ENGINE="celery", SOAK_AMQP_URL=amqp_url)
    os.environ.update(env)
    try:
        recreate_database(database_url)
    except Exception as err:  # psycopg's errors, or a URL that is not PostgreSQL's
        print(f"Cannot create the soak's database from SOAK_DATABASE_URL: {err}", file=sys.stderr)
        return 2
    if options.engine == "celery":
        try:
            recreate_vhost(amqp_url)
        except (OSError, subprocess.CalledProcessError) as err:
            drop_database(database_url)
            print(f"Cannot create the soak's virtual host on RabbitMQ: {err}", file=sys.stderr)
            return 2
    LOGS.mkdir(parents=True, exist_ok=True)
    for old in LOGS.glob("*.log"):
        old.unlink()
    OUTSIDE_LOG.touch()
    print(f"logs in {LOGS}")
    try:
        return soak(options, payments, seed, env, sandbox_port, web_port)
    finally:
        if not options.keep_db:
            with contextlib.suppress(Exception):
                from django.db import connections

                connections.close_all()
            drop_database(database_url)
            if options.engine == "celery":
                drop_vhost(amqp_url)


def soak(
    options: argparse.Namespace,
    payments: int,
    seed: int,
    env: dict[str, str],
    sandbox_port: int,
    web_port: int,
) -> int:
    migrated = manage(env, "migrate", "--no-input")
    if migrated.returncode != 0:
        print(migrated.stdout, migrated.stderr, file=sys.stderr)
        return 1

    import django

    django.setup()
    from django.conf import settings
    from django.db import connection

    from django_ledgepay.sandbox import Sandbox

    print(machine(connection))
    task_workers = "celery worker" if options.engine == "celery" else "db_worker"
    print(
        f"soak: {payments} payments, gunicorn x{options.workers} (sync), "
        f"{options.task_workers} {task_workers}, sandbox failure rate {options.failure_rate}, "
        f"kills every {options.kill_every[0]}-{options.kill_every[1]} s, "
        f"processing {options.processing}, ledgepay_deliver --all every "
        f"{options.deliver_every} s, lease {options.lease} s, seed {seed}"
    )

    web_url = f"http://127.0.0.1:{web_port}/ledgepay/webhook/"
    sandbox = Sandbox(
        port=sandbox_port,
        webhook_url=web_url,
        webhook_secret=settings.LEDGEPAY_WEBHOOK_SECRET,
        failure_rate=options.failure_rate,
        refund_delay=0.5,
        delivery_backoff=0.2,
        delivery_max_backoff=2.0,
        seed=seed,
    )
    rng = random.Random(seed)
    processes = Processes(env, options.workers, options.task_workers, web_port)
    chaos = Chaos()
    stop_killing = threading.Event()
    started = time.monotonic()
    deliver_runs: list[str] = []
    racing = threading.Thread(
        target=deliver_forever,
        args=(processes, deliver_runs, stop_killing, options.deliver_every),
        daemon=True,
    )
    try:
        sandbox.start()
        processes.start()
        killer = threading.Thread(
            target=kill_forever,
            args=(processes, chaos, stop_killing, rng, options.kill_every),
            daemon=True,
        )
        killer.start()
        # ledgepay_deliver --all races the workers all along (and, with task processing,
        # catches up the stored deliveries whose task died with a killed worker).
        racing.start()
        shop_errors = shop(sandbox, payments, options.concurrency)
        loaded = time.monotonic() - started
        print(f"load done in {loaded:.1f} s; waiting for the sandbox's webhooks")
        all_sent = sandbox.wait_for_deliveries(timeout=WAIT)
        settled = time.monotonic() - started
        retried_by_workers = 0.0
        if not options.no_wait_retries:
            # The receivers' retries are deferred by a minute at least: let the workers
            # run them, still under fire, so the catch-up is left what the kills lost.
            print(f"webhooks done at {settled:.1f} s; waiting for the deferred retries")
            waited = time.monotonic()
            wait_for_workers(processes, timeout=150.0, deferred=True)
            retried_by_workers = time.monotonic() - waited
        stop_killing.set()
        killer.join()
        racing.join()
        drained = wait_for_workers(processes)
    finally:
        STOPPING.set()
        stop_killing.set()
        processes.stop()
        sandbox.stop()
    running_forever = lost_tasks()
    from django_ledgepay.models import Transition

    before_catch_up = Transition.objects.filter(delivered_at__isnull=True).count()
    # The claims of the processes killed last hold until their lease ends.
    lapsed = wait_for_claims_to_lapse()
    # As cron runs it: again while some receiver still fails (the soak's flaky receiver
    # fails a first attempt, which a transition the kills left untried makes here).
    catch_ups: list[str] = []
    for _ in range(3):
        catch_up = manage(env, "ledgepay_deliver", "--all")
        summary = [
            line
            for line in (catch_up.stdout + catch_up.stderr).splitlines()
            if "Delivered" in line
        ]
        catch_ups.append(summary[-1] if summary else f"exit status {catch_up.returncode}")
        if catch_up.returncode == 0:
            break
    total = time.monotonic() - started

    report = check(sandbox, payments, shop_errors, chaos.killed)
    report.update(
        {
            "seed": seed,
            "payments_asked": payments,
            "seconds": {"load": loaded, "webhooks": settled, "total": total},
            "sandbox_all_delivered": all_sent,
            "workers_drained": drained,
            "kills": {
                "web": chaos.web_kills,
                "task": chaos.task_kills,
                "ledgepay_deliver": chaos.deliver_kills,
            },
            "task_workers_respawned": chaos.respawned,
            "tasks_lost_with_a_killed_worker": running_forever,
            "undelivered_before_catch_up": before_catch_up,
            "deliver_runs": deliver_runs,
            "seconds_waiting_for_claims_to_lapse": lapsed,
            "catch_up": catch_ups,
            "catch_up_errors": catch_up.stderr.strip()[-2000:],
            "seconds_waiting_for_deferred_retries": retried_by_workers,
            "catch_up_status": catch_up.returncode,
            "access_log": access_log_statuses(),
        }
    )
    return print_report(report)


# The processes: gunicorn and the task workers


class Processes:
    def __init__(self, env: dict[str, str], web: int, task: int, port: int) -> None:
        self.env = env
        self.web_workers = web
        self.task_count = task
        self.port = port
        self.gunicorn: subprocess.Popen[bytes] | None = None
        self.tasks: list[subprocess.Popen[bytes]] = []
        self.spawned = 0
        self.worker_ids: dict[int, str] = {}
        self.lock = threading.Lock()
        self.task_log = (LOGS / "db_worker.log").open("ab")
        self.stopped = False
        #: The ``ledgepay_deliver --all`` running now, if one is.
        self.deliverer: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self.gunicorn = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "bench.soak.wsgi:application",
                "--workers",
                str(self.web_workers),
                "--worker-class",
                "sync",
                "--bind",
                f"127.0.0.1:{self.port}",
                "--preload",
                "--timeout",
                "30",
                "--access-logfile",
                str(LOGS / "access.log"),
                "--access-logformat",
                "%(s)s %(m)s %(U)s",
                "--error-logfile",
                str(LOGS / "gunicorn.log"),
            ],
            cwd=ROOT,
            env=self.env,
            stdout=(LOGS / "gunicorn.out.log").open("ab"),
            stderr=subprocess.STDOUT,
        )
        for _ in range(self.task_count):
            self.tasks.append(self.spawn_task_worker())
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.gunicorn.poll() is not None:
                raise SystemExit(f"gunicorn exited; see {LOGS / 'gunicorn.log'}.")
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            time.sleep(0.05)
        raise SystemExit("gunicorn did not start listening within 30 s.")

    def spawn_task_worker(self) -> subprocess.Popen[bytes]:
        self.spawned += 1
        worker_id = f"soak-{self.spawned}"
        command = ["django", "db_worker", "--interval", "0.1", "--no-reload"]
        command += ["--worker-id", worker_id]
        if self.env.get("SOAK_ENGINE") == "celery":
            # One process (the solo pool), so a SIGKILL takes the task with it.
            command = ["celery", "-A", "django_tasks_fennel.app", "worker", "--pool", "solo"]
            command += ["--hostname", f"{worker_id}@{CELERY_HOST}", "--loglevel", "WARNING"]
            command += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
        process = subprocess.Popen(
            [sys.executable, "-m", *command],
            cwd=ROOT,
            env=self.env,
            stdout=self.task_log,
            stderr=subprocess.STDOUT,
        )
        self.worker_ids[process.pid] = worker_id
        return process

    def live_worker_ids(self) -> set[str]:
        with self.lock:
            return {self.worker_ids[w.pid] for w in self.tasks if w.poll() is None}

    def web_worker_pids(self) -> list[int]:
        assert self.gunicorn is not None
        path = Path(f"/proc/{self.gunicorn.pid}/task/{self.gunicorn.pid}/children")
        with contextlib.suppress(OSError):
            return [int(pid) for pid in path.read_text().split()]
        return []

    def kill_web_worker(self, rng: random.Random) -> int | None:
        """SIGKILL one gunicorn worker (gunicorn starts another); its pid."""
        pids = self.web_worker_pids()
        if not pids:
            return None
        victim = rng.choice(pids)
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGKILL)
            return victim
        return None

    def kill_task_worker(self, rng: random.Random) -> int | None:
        """SIGKILL one db_worker and start another in its place; its pid."""
        with self.lock:
            if self.stopped:
                return None
            index = rng.randrange(len(self.tasks))
            victim = self.tasks[index]
            with contextlib.suppress(ProcessLookupError):
                victim.send_signal(signal.SIGKILL)
            victim.wait()
            self.tasks[index] = self.spawn_task_worker()
        return victim.pid

    def start_deliverer(self) -> subprocess.Popen[str] | None:
        """Start ``ledgepay_deliver --all``, unless everything is stopping."""
        with self.lock:
            if self.stopped:
                return None
            self.deliverer = subprocess.Popen(
                [sys.executable, "-m", "django", "ledgepay_deliver", "--all"],
                cwd=ROOT,
                env=self.env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            return self.deliverer

    def kill_deliverer(self) -> int | None:
        """SIGKILL the ``ledgepay_deliver`` running now, if one is; its pid."""
        with self.lock:
            victim = self.deliverer
            if victim is None or victim.poll() is not None:
                return None
            with contextlib.suppress(ProcessLookupError):
                victim.send_signal(signal.SIGKILL)
                return victim.pid
        return None

    def stop(self) -> None:
        with self.lock:
            self.stopped = True
            if self.deliverer is not None and self.deliverer.poll() is None:
                self.deliverer.terminate()
            for worker in self.tasks:
                if worker.poll() is None:
                    worker.terminate()
            for worker in self.tasks:
                try:
                    worker.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    worker.kill()
                    worker.wait()
        if self.gunicorn is not None and self.gunicorn.poll() is None:
            self.gunicorn.terminate()
            try:
                self.gunicorn.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.gunicorn.kill()
                self.gunicorn.wait()


def kill_forever(
    processes: Processes,
    chaos: Chaos,
    stop: threading.Event,
    rng: random.Random,
    every: tuple[float, float],
) -> None:
    low, high = every
    if high <= 0:
        return
    while not stop.wait(rng.uniform(low, high)):
        # Now and then the ledgepay_deliver running now (rarely enough that most of its
        # runs race the workers to the end); else one of all the workers, web and task
        # alike, at random.
        if rng.random() < DELIVERER_KILLS:
            killed = processes.kill_deliverer()
            chaos.deliver_kills += killed is not None
        elif rng.randrange(processes.web_workers + processes.task_count) < processes.web_workers:
            killed = processes.kill_web_worker(rng)
            chaos.web_kills += killed is not None
        else:
            killed = processes.kill_task_worker(rng)
            if killed is not None:
                chaos.task_kills += 1
                chaos.respawned += 1
        if killed is not None:
            chaos.killed.add(killed)


def deliver_forever(
    processes: Processes, runs: list[str], stop: threading.Event, every: float
) -> None:
    """Run ``ledgepay_deliver --all`` again and again, ``every`` seconds after the last run
    ended, until ``stop``: each run's summary (or how it ended) in ``runs``."""
    while not stop.is_set():
        process = processes.start_deliverer()
        if process is None:
            return
        try:
            output, _ = process.communicate(timeout=WAIT)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
        summary = [line for line in output.splitlines() if "Delivered" in line]
        if process.returncode == -signal.SIGKILL:
            runs.append("killed")
        else:
            runs.append(summary[-1] if summary else f"exit status {process.returncode}")
        if stop.wait(every):
            return


def wait_for_claims_to_lapse() -> float:
    """Wait until no claim on a receiver that has not succeeded holds (those the killed
    processes left end with their lease); the seconds waited."""
    from django.db.models import Max
    from django.utils import timezone

    from django_ledgepay.models import Reaction

    started = time.monotonic()
    last = Reaction.objects.filter(succeeded_at=None).aggregate(Max("claimed_until"))
    until = last["claimed_until__max"]
    if until is not None:
        time.sleep(max(0.0, (until - timezone.now()).total_seconds()) + 0.1)
    return time.monotonic() - started


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def wait_for_workers(processes: Processes, timeout: float = 60.0, deferred: bool = False) -> bool:
    """Let the task workers finish what is due (with ``deferred``, what is deferred too);
    True when nothing is left and no live worker is running a task."""
    if os.environ.get("SOAK_ENGINE") == "celery":
        return wait_for_celery_workers(processes, timeout, deferred)
    from django_tasks_db.models import DBTaskResult

    waiting = DBTaskResult.objects.filter(status="READY") if deferred else None

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        live = processes.live_worker_ids()
        busy = any(
            ids and ids[-1] in live
            for ids in DBTaskResult.objects.running().values_list("worker_ids", flat=True)
        )
        left = waiting if waiting is not None else DBTaskResult.objects.ready()
        if not busy and not left.exists():
            return True
        time.sleep(0.2)
    return False


def wait_for_celery_workers(processes: Processes, timeout: float, deferred: bool) -> bool:
    """``wait_for_workers`` on Celery: the queue empty, and every live worker answering
    that it runs no task and holds none that is due (with ``deferred``, none at all)."""
    from celery import Celery  # type: ignore[import-untyped]

    app = Celery("soak", broker=os.environ["SOAK_AMQP_URL"], set_as_current=False)
    kinds = ("active", "reserved", "scheduled") if deferred else ("active", "reserved")
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            nodes = [f"{worker_id}@{CELERY_HOST}" for worker_id in processes.live_worker_ids()]
            inspect = app.control.inspect(destination=nodes, timeout=1.0)
            with app.connection_for_write() as amqp:
                queued = amqp.default_channel.queue_declare("default", passive=True)
            answers = [getattr(inspect, kind)() or {} for kind in kinds]
            idle = all(set(answer) == set(nodes) for answer in answers) and not any(
                tasks for answer in answers for tasks in answer.values()
            )
            if idle and not queued.message_count:
                return True
            time.sleep(0.2)
        return False
    finally:
        app.close()


def lost_tasks() -> int | None:
    """Tasks a killed worker had taken: they stay RUNNING for ever. (Celery keeps no trace
    of a task a killed worker had taken: None.)"""
    if os.environ.get("SOAK_ENGINE") == "celery":
        return None
    from django_tasks_db.models import DBTaskResult

    return DBTaskResult.objects.running().count()


# The shoppers


def retry(call: Callable[[], T], what: str, attempts: int = 30) -> T:
    """Call until LedgePay answers: the sandbox fails on purpose. Errors that are not
    LedgePay's being unreachable or failing are raised at once."""
    from django_ledgepay.exceptions import (
        APIConnectionError,
        APIError,
        RateLimitError,
        RefundUnresolvedError,
    )

    for attempt in range(1, attempts + 1):
        if STOPPING.is_set():
            raise RuntimeError("the soak is stopping")
        try:
            return call()
        except (APIConnectionError, APIError, RateLimitError, RefundUnresolvedError):
            if attempt == attempts:
                raise
            time.sleep(0.05)
    raise AssertionError(what)  # Never reached.


def shop(sandbox: Any, payments: int, concurrency: int) -> list[str]:
    """Create, pay and refund ``payments`` payments from ``concurrency`` threads; the
    errors, one line each."""
    from django.db import connection

    errors: list[str] = []

    def one(number: int) -> None:
        try:
            buy_and_refund(sandbox, number)
        except Exception as err:
            errors.append(f"payment {number}: {type(err).__name__}: {err}")
        finally:
            connection.close()

    pool = concurrent.futures.ThreadPoolExecutor(concurrency)
    try:
        list(pool.map(one, range(payments)))
    except BaseException:
        STOPPING.set()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return errors


def buy_and_refund(sandbox: Any, number: int) -> None:
    from django_ledgepay import services
    from django_ledgepay.models import Payment

    amount = 1000 + number
    payment = retry(
        lambda: services.create_payment(
            amount=amount,
            currency="EUR",
            description=f"soak order {number}",
            success_url="https://shop.test/paid",
            cancel_url="https://shop.test/cancel",
            metadata={"order": number},
            idempotency_key=f"soak-order-{number}",
        ),
        f"create payment {number}",
    )
    sandbox.pay(payment.ledgepay_id)
    if number % 2:
        return
    deadline = time.monotonic() + WAIT
    while not Payment.objects.filter(pk=payment.pk, status=Payment.Status.SUCCEEDED).exists():
        if time.monotonic() > deadline or STOPPING.is_set():
            raise TimeoutError(f"payment {payment.ledgepay_id} never became succeeded")
        time.sleep(0.05)
    parts: list[int | None] = [None] if number % 4 == 0 else [amount // 2, None]
    for index, part in enumerate(parts):
        retry(
            functools.partial(
                services.refund_payment,
                payment.ledgepay_id,
                amount=part,
                idempotency_key=f"soak-refund-{number}-{index}",
            ),
            f"refund {index} of payment {number}",
        )


# Checking


def check(sandbox: Any, payments: int, shop_errors: list[str], killed: set[int]) -> dict[str, Any]:
    from django.db.models import Count

    from bench.soak import receivers
    from bench.soak.models import Effect
    from django_ledgepay.models import Payment, Reaction, Refund, Transition

    failures: list[str] = [*shop_errors[:20]]
    if len(shop_errors) > 20:
        failures.append(f"... and {len(shop_errors) - 20} more shopper errors")

    # The mirror against the sandbox.
    remote_payments = sandbox.payments
    remote_refunds = sandbox.refunds
    mirror = {p.ledgepay_id: p for p in Payment.objects.all()}
    if len(remote_payments) != payments:
        failures.append(f"the sandbox holds {len(remote_payments)} payments, not {payments}")
    for ledgepay_id, remote in remote_payments.items():
        local = mirror.get(ledgepay_id)
        if local is None or local.status != remote["status"]:
            failures.append(f"payment {ledgepay_id}: mirror {local and local.status}")
    refunds = {r.ledgepay_id: r for r in Refund.objects.all()}
    for ledgepay_id, remote in remote_refunds.items():
        refund = refunds.get(ledgepay_id)
        if refund is None or refund.status != remote["status"]:
            failures.append(f"refund {ledgepay_id}: mirror {refund and refund.status}")
    if set(refunds) != set(remote_refunds):
        failures.append(f"{len(refunds)} refunds in the mirror, {len(remote_refunds)} sent")

    # What must have been delivered: one transition per payment and signal.
    expected: set[tuple[str, int, int | None]] = {
        ("payment_succeeded", p.pk, None) for p in mirror.values()
    }
    for refund in refunds.values():
        expected.add(("refund_created", refund.payment_id, refund.pk))
        expected.add(("refund_succeeded", refund.payment_id, refund.pk))
    transitions = Counter(
        Transition.objects.values_list("signal", "payment_id", "refund_id").iterator()
    )
    doubled_transitions = sum(n - 1 for n in transitions.values() if n > 1)
    missing_transitions = len(expected - set(transitions))
    stray_transitions = len(set(transitions) - expected)
    undelivered = Transition.objects.filter(delivered_at__isnull=True).count()
    if undelivered:
        failures.append(f"{undelivered} transitions undelivered after ledgepay_deliver --all")
    if doubled_transitions or missing_transitions or stray_transitions:
        failures.append(
            f"transitions: {missing_transitions} missing, {doubled_transitions} doubled, "
            f"{stray_transitions} unexpected"
        )

    effects: dict[str, dict[str, int]] = {}
    for name in (receivers.STEADY, receivers.FLAKY, receivers.OUTSIDE):
        counted = Counter(
            Effect.objects.filter(receiver=name)
            .values_list("signal", "payment_id", "refund_id")
            .iterator()
        )
        per_transition = Counter(
            Effect.objects.filter(receiver=name).values_list("transition_id", flat=True)
        )
        lost = len(expected - set(counted))
        doubled = sum(n - 1 for n in counted.values() if n > 1)
        doubled_runs = sum(n - 1 for n in per_transition.values() if n > 1)
        stray = len(set(counted) - expected)
        effects[name] = {
            "expected": len(expected),
            "effects": sum(counted.values()),
            "lost": lost,
            "doubled": doubled,
            "doubled_per_transition": doubled_runs,
            "unexpected": stray,
        }
        if lost or doubled or doubled_runs or stray:
            failures.append(
                f"{name}: {lost} lost, {doubled} doubled, {stray} unexpected of {len(expected)}"
            )

    outside = outside_runs(killed)
    if outside["violations"]:
        failures.append(
            f"{receivers.OUTSIDE} ran more than once with no crash for "
            f"{len(outside['violations'])} transitions: {outside['violations'][:10]}"
        )

    deliveries = list(sandbox.deliveries)
    statuses = Counter(
        str(d.status) if d.status is not None else f"no answer ({d.error})" for d in deliveries
    )
    if statuses.get("500"):
        failures.append(f"{statuses['500']} webhooks answered 500")
    retried = Reaction.objects.filter(attempts__gt=1).count()
    by_signal = dict(
        Transition.objects.values_list("signal").annotate(n=Count("id")).order_by("signal")
    )
    by_source = dict(
        Transition.objects.values_list("source").annotate(n=Count("id")).order_by("source")
    )
    return {
        "failures": failures,
        "payments": len(mirror),
        "refunds": len(refunds),
        "transitions": sum(transitions.values()),
        "transitions_by_signal": by_signal,
        "transitions_by_source": by_source,
        "effects": effects,
        "outside_runs": outside,
        "reactions_retried": retried,
        "webhook_attempts": len(deliveries),
        "webhook_statuses": dict(sorted(statuses.items())),
        "api_failures_injected": dict(Counter(sandbox.injected)),
    }


def outside_runs(killed: set[int]) -> dict[str, Any]:
    """How often the receiver that calls another system ran for each transition, from its
    log, against the run that took effect (its Effect row names the process). A run of a
    transition that did not take effect is excused when its process was killed: every
    other extra run is a violation (two deliverers ran it, or one ran it again)."""
    from bench.soak import receivers
    from bench.soak.models import Effect

    runs: dict[int, list[int]] = {}
    with OUTSIDE_LOG.open() as log:
        for line in log:
            fields = line.split()
            runs.setdefault(int(fields[0]), []).append(int(fields[1]))
    took_effect = dict(
        Effect.objects.filter(receiver=receivers.OUTSIDE).values_list("transition_id", "pid")
    )
    histogram: Counter[int] = Counter()
    crashed = 0
    violations: list[dict[str, Any]] = []
    for transition_id, pids in sorted(runs.items()):
        histogram[len(pids)] += 1
        extra = list(pids)
        if took_effect.get(transition_id) in extra:
            extra.remove(took_effect[transition_id])
        if any(pid in killed for pid in extra):
            crashed += 1
        if any(pid not in killed for pid in extra):
            violations.append({"transition": transition_id, "pids": pids})
    return {
        "transitions": len(runs),
        "runs": sum(len(pids) for pids in runs.values()),
        "transitions_by_runs": dict(sorted(histogram.items())),
        "transitions_a_killed_process_ran": crashed,
        "violations": violations,
    }


def access_log_statuses() -> dict[str, int]:
    """The answers gunicorn logged for the webhook view, by status."""
    counts: Counter[str] = Counter()
    with contextlib.suppress(OSError), (LOGS / "access.log").open() as log:
        for line in log:
            status, _, rest = line.partition(" ")
            if "/ledgepay/webhook/" in rest:
                counts[status] += 1
    return dict(sorted(counts.items()))


def print_report(report: dict[str, Any]) -> int:
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    (RESULTS / f"soak-{stamp}.json").write_text(json.dumps(report, indent=2, default=str))
    seconds = report["seconds"]
    print(
        f"\n{report['payments']} payments, {report['refunds']} refunds, "
        f"{report['transitions']} transitions {report['transitions_by_signal']}"
    )
    print(f"transitions by source: {report['transitions_by_source']}")
    print(
        f"time: load {seconds['load']:.1f} s, all webhooks delivered at "
        f"{seconds['webhooks']:.1f} s, total {seconds['total']:.1f} s"
    )
    print(
        f"kills: {report['kills']['web']} gunicorn workers, {report['kills']['task']} "
        f"db_workers, {report['kills']['ledgepay_deliver']} ledgepay_deliver; tasks lost "
        f"with a killed worker: {report['tasks_lost_with_a_killed_worker']}"
    )
    print(
        f"webhooks: {report['webhook_attempts']} attempts by the sandbox, answers "
        f"{report['webhook_statuses']}; gunicorn's access log {report['access_log']}"
    )
    print(f"sandbox API failures injected: {report['api_failures_injected']}")
    print(
        f"undelivered before the catch-up: {report['undelivered_before_catch_up']}; "
        f"reactions that needed more than one attempt: {report['reactions_retried']}"
    )
    runs = report["deliver_runs"]
    left = sum(
        int(found.group(1))
        for found in (re.search(r"(\d+) being delivered by another", line) for line in runs)
        if found
    )
    applied = sum(
        int(found.group(1))
        for found in (re.search(r"Applied (\d+) stored webhook", line) for line in runs)
        if found
    )
    print(
        f"ledgepay_deliver --all racing the workers: {len(runs)} runs, "
        f"{runs.count('killed')} killed; {left} transitions left to a worker's claim, "
        f"{applied} stored deliveries applied"
    )
    print(
        f"claims lapsed {report['seconds_waiting_for_claims_to_lapse']:.1f} s after the "
        "workers stopped"
    )
    for number, line in enumerate(report["catch_up"], 1):
        print(f"ledgepay_deliver --all, run {number}: {line}")
    if report["catch_up_status"] != 0:
        print(report["catch_up_errors"])
    for name, figures in report["effects"].items():
        print(
            f"{name}: {figures['effects']} effects for {figures['expected']} expected: "
            f"{figures['lost']} lost, {figures['doubled']} doubled"
        )
    outside = report["outside_runs"]
    print(
        f"soak.call_outside: {outside['runs']} runs for {outside['transitions']} transitions, "
        f"transitions by runs {outside['transitions_by_runs']}; "
        f"{outside['transitions_a_killed_process_ran']} with a run cut by a kill, "
        f"{len(outside['violations'])} run again without one"
    )
    failures = list(report["failures"])
    if not report["sandbox_all_delivered"]:
        failures.append("the sandbox did not deliver every event in time")
    if report["catch_up_status"] != 0:
        failures.append("ledgepay_deliver --all failed")
    if failures:
        print("\nFAIL:")
        for failure in failures:
            print(f"  {failure}")
        return 1
    print(
        "\nOK: every transition delivered, each effect exactly once, each outside call once "
        "but where a process died, no 500."
    )
    return 0


# Set-up


def machine(connection: Any) -> str:
    from bench.machine import cpu_model

    with connection.cursor() as cursor:
        cursor.execute("SHOW server_version")
        postgres = cursor.fetchone()[0]
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    return (
        f"machine: {platform.machine()}, {os.cpu_count()} cores, {cpu_model()}; "
        f"load {load}; Python {platform.python_version()}, Django {metadata.version('django')}, "
        f"gunicorn {metadata.version('gunicorn')}, django-tasks-db "
        f"{metadata.version('django-tasks-db')}, PostgreSQL {postgres}"
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def manage(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "django", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=WAIT,
    )


def _admin_connection(url: str) -> tuple[Any, str]:
    import environ
    import psycopg

    config = environ.Env.db_url_config(url)
    name = config["NAME"]
    admin = psycopg.connect(
        dbname="postgres",
        user=config.get("USER") or "postgres",
        password=config.get("PASSWORD") or None,
        host=config.get("HOST") or "127.0.0.1",
        port=config.get("PORT") or 5432,
        autocommit=True,
    )
    return admin, name


def recreate_database(url: str) -> None:
    from psycopg import sql

    admin, name = _admin_connection(url)
    with admin:
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def rabbitmqctl(*args: str) -> None:
    """Run ``rabbitmqctl`` (``SOAK_RABBITMQCTL``, e.g. ``sudo rabbitmqctl``, to change it)."""
    command = shlex.split(os.environ.get("SOAK_RABBITMQCTL", "rabbitmqctl"))
    subprocess.run([*command, "-q", *args], check=True, capture_output=True, timeout=60)


def recreate_vhost(url: str) -> None:
    """The broker URL's virtual host, new and empty, its user allowed everything there."""
    from kombu.utils.url import url_to_parts

    parts = url_to_parts(url)
    if parts.path in (None, "", "/"):
        raise OSError(f"SOAK_AMQP_URL must name a virtual host of the soak's own, not {url!r}")
    drop_vhost(url)
    rabbitmqctl("add_vhost", parts.path)
    user = parts.username or "guest"
    rabbitmqctl("set_permissions", "-p", parts.path, user, ".*", ".*", ".*")


def drop_vhost(url: str) -> None:
    from kombu.utils.url import url_to_parts

    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        rabbitmqctl("delete_vhost", url_to_parts(url).path)


def drop_database(url: str) -> None:
    from psycopg import sql

    admin, name = _admin_connection(url)
    with admin:
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


if __name__ == "__main__":
    sys.exit(main())
