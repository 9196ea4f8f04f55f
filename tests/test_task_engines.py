"""Delivery and webhook processing on real task engines, with their real workers.

Each engine runs as a project runs it: a web server (``runserver``), a worker
(``db_worker`` of django-tasks-db, django-rq's ``rqworker`` for django-tasks-rq on Redis, or
``celery worker`` for django-tasks-fennel on RabbitMQ) and ``ledgepay_deliver``, each a
process of its own on the test database (tests/settings_tasks.py), with the database
receiver of tests/task_receivers.py connected in each. This process only posts webhooks,
kills workers and reads the database.

Redis and RabbitMQ may serve other runs and other projects: this run's tasks go to a queue
of its own (tests/task_queues.py), and it deletes that queue's keys and that queue at the
end, nothing else. Their addresses come from ``LEDGEPAY_TEST_REDIS_URL`` (default
``redis://127.0.0.1:6379``), ``LEDGEPAY_TEST_REDIS_DB`` (default 15) and
``LEDGEPAY_TEST_AMQP_URL`` (default ``amqp://guest:guest@127.0.0.1:5672//``).

PostgreSQL only: on SQLite a worker in another process would fight the suite for one file.
An engine that is missing (its package, Redis or RabbitMQ) skips its tests, with the reason;
``LEDGEPAY_REQUIRE_ENGINES=1`` (as CI sets) makes that a failure.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import requests

from django.db import connection
from django.utils import timezone

from django_ledgepay.models import Payment, Reaction, Transition, WebhookEvent
from django_ledgepay.sandbox import Sandbox
from django_ledgepay.sandbox.state import event_payload
from django_ledgepay.testing import signed_webhook
from tests.conftest import DUMMY_BACKEND, lock_waiters
from tests.factories import make_payment

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = "tests.settings_tasks"
REDIS_URL = os.environ.get("LEDGEPAY_TEST_REDIS_URL", "redis://127.0.0.1:6379")
REDIS_DB = int(os.environ.get("LEDGEPAY_TEST_REDIS_DB", "15"))
AMQP_URL = os.environ.get("LEDGEPAY_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
#: This run's queue on Redis and on RabbitMQ: no other run takes its tasks.
QUEUE = f"ledgepay-tests-{os.getpid()}-{uuid.uuid4().hex[:8]}"
CELERY_APP = "django_tasks_fennel.app"
TASKS_TABLE = "django_tasks_database_dbtaskresult"
RECEIVER = "tests.count_effect"
#: How long anything a worker does may take before the test gives up on it.
TIMEOUT = 60.0


def wait_for(condition: Callable[[], Any], timeout: float = TIMEOUT, what: str = "") -> Any:
    """Poll ``condition`` every 20 ms until it returns something true; fail after
    ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"Timed out after {timeout:.0f} s waiting for {what or condition}.")
        time.sleep(0.02)


def unavailable(engine: str) -> str:
    """Why ``engine`` cannot run here, or "" when it can."""
    packages = {
        "db": ["django_tasks_db"],
        "rq": ["django_tasks_rq", "django_rq", "rq"],
        "celery": ["django_tasks_fennel", "celery", "kombu"],
    }[engine]
    for package in packages:
        if importlib.util.find_spec(package) is None:
            return f"{package} is not installed (pip install -e '.[tasks]')"
    if engine == "rq":
        try:
            redis().ping()
        except Exception as err:  # redis-py's ConnectionError and its kin
            return f"Redis is not reachable at {REDIS_URL} ({type(err).__name__}: {err})"
    if engine == "celery":
        from kombu.connection import Connection

        try:
            with Connection(AMQP_URL, connect_timeout=2) as amqp:
                amqp.ensure_connection(max_retries=1)
        except Exception as err:  # kombu's OperationalError, a refused login
            where = amqp_address()
            return f"RabbitMQ is not reachable at {where} ({type(err).__name__}: {err})"
    return ""


def amqp_address() -> str:
    """The broker's address, without its password."""
    from kombu.connection import Connection

    return str(Connection(AMQP_URL).as_uri())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def database_url() -> str:
    """The test database, as a URL for tests.settings in another process."""
    db = connection.settings_dict
    user = quote(db.get("USER") or "postgres")
    password = f":{quote(db['PASSWORD'])}" if db.get("PASSWORD") else ""
    host = db.get("HOST") or "127.0.0.1"
    port = db.get("PORT") or 5432
    return f"postgres://{user}{password}@{host}:{port}/{quote(db['NAME'])}"


class Project:
    """The processes of a project on one engine: web servers (one per processing mode),
    a worker, and commands, all on the test database."""

    def __init__(self, engine: str, sandbox: Sandbox, logs: Path) -> None:
        self.engine = engine
        self.sandbox = sandbox
        self.logs = logs
        self.webs: dict[str, tuple[subprocess.Popen[bytes], str]] = {}
        self.worker: subprocess.Popen[bytes] | None = None
        self.started = 0

    def env(self, processing: str = "inline") -> dict[str, str]:
        return {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": SETTINGS,
            "DATABASE_URL": database_url(),
            "LEDGEPAY_TEST_ENGINE": self.engine,
            "LEDGEPAY_TEST_PROCESSING": processing,
            "LEDGEPAY_TEST_API_BASE": self.sandbox.api_base,
            "LEDGEPAY_TEST_REDIS_URL": REDIS_URL,
            "LEDGEPAY_TEST_REDIS_DB": str(REDIS_DB),
            "LEDGEPAY_TEST_AMQP_URL": AMQP_URL,
            "LEDGEPAY_TEST_QUEUE": QUEUE,
            "PYTHONPATH": str(ROOT),
        }

    def spawn(
        self, name: str, args: list[str], processing: str = "inline", program: str = "django"
    ) -> Any:
        with (self.logs / f"{self.engine}-{name}.log").open("ab") as log:
            return subprocess.Popen(
                [sys.executable, "-m", program, *args],
                cwd=ROOT,
                env=self.env(processing),
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def manage(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "django", *args],
            cwd=ROOT,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=60,
        )

    def web(self, processing: str = "inline") -> str:
        """The URL of the webhook view of a web server with that processing mode."""
        if processing in self.webs and self.webs[processing][0].poll() is None:
            return self.webs[processing][1]
        port = free_port()
        process = self.spawn(
            f"web-{processing}",
            ["runserver", f"127.0.0.1:{port}", "--noreload", "--skip-checks"],
            processing,
        )

        def listening() -> bool:
            if process.poll() is not None:
                pytest.fail(f"runserver exited with {process.returncode}; see {self.logs}.")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            except OSError:
                return False
            return True

        wait_for(listening, what="the web server")
        url = f"http://127.0.0.1:{port}/ledgepay/webhook/"
        self.webs[processing] = (process, url)
        return url

    def start_worker(self) -> None:
        if self.worker is not None and self.worker.poll() is None:
            return
        self.started += 1
        if self.engine == "db":
            args = ["db_worker", "--interval", "0.05", "--no-startup-delay", "--no-reload"]
        elif self.engine == "rq":
            args = [
                "rqworker",
                QUEUE,
                "--job-class",
                "django_tasks_rq.Job",
                "--with-scheduler",
                "--name",
                f"{QUEUE}-{self.started}",
            ]
        else:
            args = [
                "-A",
                CELERY_APP,
                "worker",
                "--queues",
                QUEUE,
                "--hostname",
                self.celery_node(),
                "--concurrency",
                "1",
                # Nothing asked of, or told to, the other workers on the broker.
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "--loglevel",
                "WARNING",
            ]
            self.worker = self.spawn("worker", args, program="celery")
            return
        self.worker = self.spawn("worker", args)

    def celery_node(self) -> str:
        """The node name of the Celery worker started last."""
        return f"{QUEUE}-{self.started}@ledgepay-tests"

    def inspect(self, what: str) -> dict[str, list[dict[str, Any]]]:
        """Ask the Celery worker (that one only) for its ``active`` or ``scheduled`` tasks."""
        app = celery_app()
        try:
            inspector = app.control.inspect(destination=[self.celery_node()], timeout=5)
            return getattr(inspector, what)() or {}
        finally:
            app.close()

    def kill_worker(self) -> list[int]:
        """``kill -9`` the worker and its children (RQ's work horse has a session of its
        own), as when the machine loses them; the process ids killed."""
        assert self.worker is not None
        pids = [self.worker.pid, *descendants(self.worker.pid)]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.worker.wait(timeout=5)
        return pids

    def running_tasks(self) -> int:
        """How many tasks a worker has taken and not finished."""
        if self.engine == "db":
            with connection.cursor() as cursor:
                cursor.execute(f"SELECT count(*) FROM {TASKS_TABLE} WHERE status = 'RUNNING'")
                return int(cursor.fetchone()[0])
        if self.engine == "celery":
            return sum(len(tasks) for tasks in self.inspect("active").values())
        from rq.registry import StartedJobRegistry

        return len(StartedJobRegistry(QUEUE, connection=redis()).get_job_ids())

    def clear_tasks(self) -> None:
        if self.engine == "db":
            with connection.cursor() as cursor:
                cursor.execute(f"DELETE FROM {TASKS_TABLE}")
        elif self.engine == "rq":
            forget_rq(workers=False)
        else:
            purge_celery_queue()

    def close(self) -> None:
        for process in [self.worker, *(web for web, _ in self.webs.values())]:
            if process is not None and process.poll() is None:
                for pid in [process.pid, *descendants(process.pid)]:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                process.wait(timeout=5)


def descendants(pid: int) -> list[int]:
    """The processes descended from ``pid``, from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            # The command may hold spaces and parentheses: the fields follow the last ")".
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def redis() -> Any:
    from redis import Redis

    return Redis.from_url(REDIS_URL, db=REDIS_DB, socket_connect_timeout=2)


def forget_rq(workers: bool = True) -> None:
    """Delete this run's keys on Redis: its queue, its registries, its jobs (and their
    results), and with ``workers`` its workers and scheduler lock. No other key."""
    db = redis()
    token = QUEUE.encode()
    jobs = [
        key.rsplit(b":", 1)[1]
        for key in db.scan_iter(match=b"rq:job:*", count=1000)
        if key.count(b":") == 2 and db.hget(key, "origin") == token
    ]
    kept = () if workers else (b"rq:worker", b"rq:scheduler")
    ours = [
        key
        for key in db.scan_iter(count=1000)
        if (token in key or any(job in key for job in jobs)) and not key.startswith(kept)
    ]
    if workers:
        # The schedulers' own records, named by a uuid: those of this run's queue.
        ours += [
            key
            for key in db.scan_iter(match=b"rq:scheduler:*", count=1000)
            if key.count(b":") == 2
            and db.type(key) == b"hash"
            and token in (db.hget(key, "queues") or b"")
        ]
    if ours:
        db.delete(*ours)
    # Sets of every queue's and every worker's keys: only this run's members.
    for members in (b"rq:queues", *((b"rq:workers",) if workers else ())):
        mine = [member for member in db.smembers(members) if token in member]
        if mine:
            db.srem(members, *mine)


def celery_app() -> Any:
    """A Celery app on the test broker, to inspect the worker."""
    from celery import Celery  # type: ignore[import-untyped]

    return Celery("ledgepay-tests", broker=AMQP_URL, set_as_current=False)


def purge_celery_queue(delete: bool = False) -> None:
    """Empty this run's queue on RabbitMQ; with ``delete``, delete it and its exchange."""
    from kombu.connection import Connection

    with Connection(AMQP_URL) as amqp:
        channel = amqp.channel()
        if delete:
            channel.queue_delete(QUEUE)
            channel.exchange_delete(QUEUE)
            return
        with contextlib.suppress(amqp.channel_errors):  # Not declared yet.
            channel.queue_purge(QUEUE)


def make_celery_retry_due(transition_id: int) -> dict[str, Any]:
    """Take the deferred retry of ``transition_id`` off the run's queue (where a killed
    worker left it) and put it back without its ``eta``, as once it is due; its headers."""
    from kombu.connection import Connection
    from kombu.messaging import Producer

    with Connection(AMQP_URL) as amqp:
        queue = amqp.SimpleQueue(QUEUE)
        try:
            message = queue.get(block=True, timeout=TIMEOUT)
            args = json.loads(message.body)[0]
            assert args == [transition_id], args
            headers = dict(message.headers)
            Producer(amqp.default_channel).publish(
                message.body,
                exchange="",
                routing_key=QUEUE,
                headers={**headers, "eta": None},
                content_type=message.content_type,
                content_encoding=message.content_encoding,
                correlation_id=message.properties.get("correlation_id"),
                delivery_mode=2,
            )
            message.ack()
        finally:
            queue.close()
    return headers


@pytest.fixture(scope="module", params=["db", "rq", "celery"])
def project(
    request: pytest.FixtureRequest,
    django_db_setup: Any,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Project]:
    engine: str = request.param
    if connection.vendor != "postgresql":
        pytest.skip(
            "needs PostgreSQL: a worker in another process cannot share the suite's "
            "SQLite test database"
        )
    reason = unavailable(engine)
    if reason:
        if os.environ.get("LEDGEPAY_REQUIRE_ENGINES") == "1":
            pytest.fail(f"LEDGEPAY_REQUIRE_ENGINES=1 but {reason}.")
        pytest.skip(reason)
    from django.conf import settings

    # LedgePay, for the workers to fetch from (they get its address when they start).
    sandbox = Sandbox(webhook_secret=settings.LEDGEPAY_WEBHOOK_SECRET, seed=10).start()
    project = Project(engine, sandbox, tmp_path_factory.mktemp(f"engine-{engine}"))
    try:
        # The engine's own tables (django-tasks-db's) in the test database, as a project
        # migrates them.
        migrated = project.manage("migrate", "--no-input", "--skip-checks")
        assert migrated.returncode == 0, migrated.stderr
        yield project
    finally:
        project.close()
        sandbox.stop()
        if engine == "rq":
            forget_rq()
        elif engine == "celery":
            purge_celery_queue(delete=True)


@pytest.fixture
def engine(project: Project) -> Project:
    """The project with no task left from an earlier test, and a worker running."""
    project.clear_tasks()
    project.start_worker()
    return project


def succeeded_body(payment: Payment) -> tuple[bytes, dict[str, str]]:
    data = {"id": payment.ledgepay_id, "amount": payment.amount, "currency": payment.currency}
    return signed_webhook({"event": "payment.succeeded", "data": data})


def post(url: str, body: bytes, headers: dict[str, str]) -> requests.Response:
    return requests.post(
        url, data=body, headers={"Content-Type": "application/json", **headers}, timeout=10
    )


def effects(payment: Payment) -> int:
    """How many runs of the receiver took effect for the payment."""
    return Payment.objects.get(pk=payment.pk).description.count("+")


def delivered(transition_id: int) -> bool:
    return Transition.objects.filter(pk=transition_id, delivered_at__isnull=False).exists()


@pytest.fixture
def gate(tmp_path: Path) -> Path:
    """A file the held receiver waits on while it exists."""
    path = tmp_path / "gate"
    path.touch()
    return path


def holder(gate: Path) -> int:
    """The process id of the receiver held at ``gate``, once it holds (0 before)."""
    held = gate.with_name(f"{gate.name}.held")
    with contextlib.suppress(OSError, ValueError):
        return int(held.read_text())
    return 0


def test_the_webhook_is_answered_while_the_worker_runs_the_receiver(engine, gate):
    payment = make_payment(status="pending", description=f"hold:{gate}")
    started = time.monotonic()
    response = post(engine.web(), *succeeded_body(payment))
    answered = time.monotonic() - started
    assert response.status_code == 200, response.text
    assert response.json() == {"detail": "processed"}
    transition = Transition.objects.get(payment=payment)
    assert transition.source == Transition.Source.WEBHOOK
    # The worker runs the receiver, which now holds its transaction open: the webhook was
    # answered without waiting for it.
    pid = wait_for(lambda: holder(gate), what="the worker to run the receiver")
    assert engine.worker is not None
    assert pid in [engine.worker.pid, *descendants(engine.worker.pid)]
    assert engine.running_tasks() == 1
    assert answered < 30  # The receiver holds for up to 60 s: it was not waited for.
    assert not delivered(transition.pk)
    assert effects(payment) == 0
    gate.unlink()
    wait_for(lambda: delivered(transition.pk), what="the delivery")
    assert effects(payment) == 1
    reaction = Reaction.objects.get(transition=transition, receiver=RECEIVER)
    assert reaction.succeeded_at is not None and reaction.attempts == 1


def test_a_raising_receiver_is_retried_by_the_worker_after_its_backoff(engine):
    payment = make_payment(status="pending", description="raise-once")
    assert post(engine.web(), *succeeded_body(payment)).status_code == 200
    transition = Transition.objects.get(payment=payment)
    wait_for(
        lambda: Transition.objects.filter(pk=transition.pk, attempts=1).exists(),
        what="the first attempt",
    )
    transition.refresh_from_db()
    assert transition.delivered_at is None
    assert effects(payment) == 0  # The failed run's write was rolled back with it.
    reaction = Reaction.objects.get(transition=transition, receiver=RECEIVER)
    assert "RuntimeError: first attempt" in reaction.error
    assert transition.next_attempt_at is not None
    backoff = transition.next_attempt_at - timezone.now()
    assert datetime.timedelta(seconds=50) < backoff <= datetime.timedelta(minutes=1)

    # The worker enqueues its next attempt, deferred to the transition's next_attempt_at,
    # just after it records the attempt: waited for, not assumed.
    if engine.engine == "celery":

        def held() -> list[dict[str, Any]]:
            """The worker's tasks waiting for their eta, for this transition."""
            return [
                entry
                for entries in engine.inspect("scheduled").values()
                for entry in entries
                if list(entry["request"]["args"]) == [transition.pk]
            ]

        wait_for(held, what="the deferred retry")
        holding = held()
        assert len(holding) == 1
        eta = datetime.datetime.fromisoformat(holding[0]["eta"])
        assert abs(eta - transition.next_attempt_at) < datetime.timedelta(seconds=2)
        # Time passes: a Celery worker holds a task until its eta, unacknowledged. Killed,
        # it leaves the task to RabbitMQ, which queues it again; there it becomes due, and
        # the next worker runs it.
        engine.kill_worker()
        headers = make_celery_retry_due(transition.pk)
        assert headers["task"] == "django_tasks:django_ledgepay.delivery.deliver_transition"
        engine.start_worker()
    elif engine.engine == "db":

        def deferred() -> list[Any]:
            with connection.cursor() as cursor:
                cursor.execute(
                    f"SELECT id, run_after FROM {TASKS_TABLE} WHERE status = 'READY' "
                    "AND task_path = 'django_ledgepay.delivery.deliver_transition' "
                    "AND args_kwargs = %s::jsonb",
                    [json.dumps({"args": [transition.pk], "kwargs": {}})],
                )
                return list(cursor.fetchall())

        wait_for(deferred, what="the deferred retry")
        rows = deferred()
        assert len(rows) == 1
        task_id, run_after = rows[0]
        assert run_after == transition.next_attempt_at
        # Time passes: the worker takes the task once it is due.
        with connection.cursor() as cursor:
            cursor.execute(f"UPDATE {TASKS_TABLE} SET run_after = now() WHERE id = %s", [task_id])
    else:
        from rq import Queue
        from rq.job import Job
        from rq.registry import ScheduledJobRegistry

        queue = Queue(QUEUE, connection=redis())
        registry = ScheduledJobRegistry(queue=queue)

        def scheduled() -> list[Job]:
            jobs = [Job.fetch(job_id, connection=redis()) for job_id in registry.get_job_ids()]
            return [job for job in jobs if list(job.args) == [transition.pk]]

        wait_for(scheduled, what="the deferred retry")
        retries = scheduled()
        assert len(retries) == 1
        when = registry.get_scheduled_time(retries[0])
        assert abs(when - transition.next_attempt_at) < datetime.timedelta(seconds=2)
        # Time passes: RQ's scheduler moves the job to the queue once it is due.
        queue.schedule_job(retries[0], datetime.datetime.now(datetime.timezone.utc))
    wait_for(lambda: delivered(transition.pk), what="the retry")
    assert effects(payment) == 1
    reaction.refresh_from_db()
    assert reaction.succeeded_at is not None and reaction.attempts == 2


def test_webhooks_processed_in_the_worker_fetch_what_the_mirror_never_saw(engine):
    sandbox = engine.sandbox
    created = sandbox.state.create_payment(
        {
            "amount": 4200,
            "currency": "EUR",
            "description": "never seen",
            "success_url": "https://shop.test/ok",
            "cancel_url": "https://shop.test/cancel",
        }
    )
    paid = sandbox.pay(created["id"])
    body, headers = signed_webhook(event_payload("payment.succeeded", paid))
    response = post(engine.web(processing="task"), body, headers)
    # Stored and answered at once; applied by the worker, which fetches the payment.
    assert response.status_code == 200, response.text
    assert response.json() == {"detail": "received"}
    event = WebhookEvent.objects.get()
    payment = wait_for(
        lambda: Payment.objects.filter(ledgepay_id=created["id"], status="succeeded").first(),
        what="the worker to apply the event",
    )
    assert (payment.amount, payment.currency) == (4200, "EUR")
    transition = Transition.objects.get(payment=payment)
    assert (transition.source, transition.event_id) == (Transition.Source.WEBHOOK, event.pk)
    wait_for(lambda: delivered(transition.pk), what="the delivery")
    assert effects(payment) == 1
    event.refresh_from_db()
    assert event.status == WebhookEvent.Status.PROCESSED
    # The same delivery again: a duplicate, nothing run twice.
    again = post(engine.web(processing="task"), body, headers)
    assert again.json() == {"detail": "duplicate"}
    assert effects(payment) == 1


def test_a_worker_killed_mid_delivery_loses_nothing_after_ledgepay_deliver(engine, gate):
    payment = make_payment(status="pending", description=f"hold:{gate}")
    assert post(engine.web(), *succeeded_body(payment)).status_code == 200
    transition = Transition.objects.get(payment=payment)
    pid = wait_for(lambda: holder(gate), what="the worker to run the receiver")
    killed = engine.kill_worker()
    assert pid in killed
    gate.unlink()
    # The killed run's write died with its transaction; the transition waits.
    assert effects(payment) == 0
    assert not delivered(transition.pk)
    # The dead worker's claim on the receiver holds until its lease ends (10 s here): a
    # catch-up meanwhile leaves the receiver alone.
    claim = Reaction.objects.get(transition=transition, receiver=RECEIVER).claimed_until
    assert claim is not None
    early = engine.manage("ledgepay_deliver", "--all")
    if timezone.now() < claim:
        assert early.returncode == 0, early.stderr
        assert "1 being delivered by another deliverer" in early.stdout
        assert effects(payment) == 0
    wait_for(lambda: timezone.now() > claim, what="the dead worker's claim to lapse")
    caught_up = engine.manage("ledgepay_deliver", "--all")
    assert caught_up.returncode == 0, caught_up.stderr
    assert "Delivered 1 transition; 0 still failing." in caught_up.stdout
    assert delivered(transition.pk)
    assert effects(payment) == 1
    # A new worker does not run it again: the lost task stays with the dead worker, and a
    # delivered transition has nothing left to run anyway.
    engine.start_worker()
    again = engine.manage("ledgepay_deliver", "--all")
    assert "Delivered 0 transitions" in again.stdout
    assert effects(payment) == 1


# Found by bench/soak_delivery.py


def test_a_refund_webhook_and_a_refund_call_on_its_payment_do_not_deadlock():
    """The soak's 503s: refund_payment() holds the payment's row (FOR UPDATE) and then
    locks a refund of it (recording LedgePay's answer for a refund whose webhook came
    first); meanwhile the webhook applying that refund's ``refund.succeeded`` locked the
    refund, and its commit checks the new Transition's foreign key to the payment, which
    waits for refund_payment's lock. PostgreSQL kills one of them: the webhook answers
    503, or refund_payment() raises after LedgePay refunded."""
    from django.db import OperationalError, connections, transaction

    from django_ledgepay import services
    from django_ledgepay.models import Refund
    from tests.factories import make_refund, refund_data

    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL's row locks and deferred foreign keys")
    payment = make_payment(status="succeeded", amount=5000)
    refund = make_refund(payment, status="pending", amount=2500)
    payment_locked = threading.Event()
    errors: list[BaseException] = []

    def refund_call() -> None:
        # What refund_payment() does: the payment first, then the refund it records.
        try:
            with transaction.atomic():
                Payment.objects.select_for_update().get(pk=payment.pk)
                payment_locked.set()
                wait_for(lock_waiters, timeout=5, what="the webhook to wait for the payment")
                Refund.objects.select_for_update().get(pk=refund.pk)
        except BaseException as err:
            errors.append(err)
        finally:
            connections.close_all()

    def webhook() -> None:
        try:
            data = refund_data(payment.ledgepay_id, id=refund.ledgepay_id, amount=2500)
            services.apply_refund(data, status="succeeded")
        except BaseException as err:
            errors.append(err)
        finally:
            connections.close_all()

    caller = threading.Thread(target=refund_call)
    caller.start()
    assert payment_locked.wait(5)
    applier = threading.Thread(target=webhook)
    applier.start()
    caller.join(10)
    applier.join(10)
    deadlocks = [err for err in errors if isinstance(err, OperationalError)]
    assert not deadlocks, deadlocks
    assert not errors, errors
    assert Refund.objects.get(pk=refund.pk).status == "succeeded"


def test_a_receiver_that_succeeded_before_its_worker_died_is_not_run_again(settings):
    """SPEC: "one that succeeded is not run again for that transition". A worker killed
    after the first receiver committed its success, in the middle of the second, leaves
    ``attempts`` at 0 (only a finished attempt counts); the catch-up must still skip the
    first receiver, or whatever it did outside the database (an email, a call) would
    happen twice. (SystemExit stands for the kill: it leaves deliver() as a SIGKILL would,
    with nothing after it.)"""
    from django_ledgepay import reactions, services, signals

    settings.TASKS = {"default": {"BACKEND": DUMMY_BACKEND}}  # Nothing runs on commit.
    calls: list[str] = []

    def emails(sender: Any, transition: Any, **kwargs: Any) -> None:
        calls.append("email")  # Outside the database: not rolled back.

    killed: list[int] = []

    def dies_once(sender: Any, transition: Any, **kwargs: Any) -> None:
        if not killed:
            killed.append(transition.pk)
            raise SystemExit("the worker is killed here")

    signals.payment_succeeded.connect(emails, weak=False, dispatch_uid="tests.emails")
    signals.payment_succeeded.connect(dies_once, weak=False, dispatch_uid="tests.dies_once")
    try:
        payment = make_payment(status="pending")
        services.apply_payment({"id": payment.ledgepay_id, "status": "succeeded"})
        transition = Transition.objects.get(payment=payment)
        with pytest.raises(SystemExit):
            reactions.deliver(transition.pk)
        assert Reaction.objects.filter(receiver="tests.emails", succeeded_at__isnull=False)
        assert reactions.deliver(transition.pk).delivered  # What ledgepay_deliver does.
        assert calls == ["email"]
    finally:
        signals.payment_succeeded.disconnect(dispatch_uid="tests.emails")
        signals.payment_succeeded.disconnect(dispatch_uid="tests.dies_once")
