from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import pytest
import responses as responses_lib

from django.contrib.auth.models import Permission
from django.db import connection
from django.dispatch import Signal
from django.test import Client

from django_ledgepay import client


@pytest.fixture(autouse=True)
def _fresh_client_state(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test starts with a new session, no rate-limit reading, and no real sleeping."""
    client.reset_state()
    sleeps: list[float] = []
    monkeypatch.setattr(client, "sleep", sleeps.append)
    yield
    client.reset_state()


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The waits the client asked for, in order, instead of sleeping."""
    waits: list[float] = []
    monkeypatch.setattr(client, "sleep", waits.append)
    return waits


@pytest.fixture
def api() -> Iterator[responses_lib.RequestsMock]:
    """A ``responses`` mock of LedgePay; any call it was not told about fails the test."""
    with responses_lib.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


API = "https://api.ledgepay.test/v1"


class Receiver:
    """A signal receiver that records each call's kwargs; the ``transition`` each call
    carries is kept apart, in ``transitions``."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.transitions: list[Any] = []

    def __call__(self, sender: Any, **kwargs: Any) -> None:
        kwargs.pop("signal", None)
        self.transitions.append(kwargs.pop("transition"))
        self.calls.append({"sender": sender, **kwargs})


@pytest.fixture
def receive() -> Iterator[Any]:
    """``receive(signal)`` connects a recording receiver, disconnected after the test."""
    connected: list[tuple[Signal, Receiver]] = []

    def connect(signal: Signal) -> Receiver:
        receiver = Receiver()
        signal.connect(receiver, weak=False)
        connected.append((signal, receiver))
        return receiver

    yield connect
    for signal, receiver in connected:
        signal.disconnect(receiver)


# Browser tests: Debian's Chromium driven by Playwright, never a downloaded browser.

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def missing_browser() -> str:
    if importlib.util.find_spec("playwright") is None:
        return "the playwright package is not installed"
    if not os.access(CHROMIUM, os.X_OK):
        return f"Chromium is not installed at {CHROMIUM} (apt-get install chromium)"
    return ""


@pytest.fixture
def chromium(monkeypatch: pytest.MonkeyPatch) -> Callable[[], AbstractContextManager[Any]]:
    """``with chromium() as page:`` a fresh page in Debian's Chromium.

    While Playwright runs, this thread has an event loop: the ORM refuses to run (unless
    ``DJANGO_ALLOW_ASYNC_UNSAFE``), and where allowed it opens a connection of its own that
    is never closed (on PostgreSQL the test database then cannot be dropped). So the test
    touches the database only before and after the ``with`` block.
    """
    reason = missing_browser()
    if reason:
        if os.environ.get("LEDGEPAY_REQUIRE_BROWSER") == "1":
            pytest.fail(f"LEDGEPAY_REQUIRE_BROWSER=1 but {reason}.")
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

    @contextmanager
    def open_page() -> Iterator[Any]:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            try:
                page = browser.new_page()
                page.set_default_timeout(15_000)
                yield page
            finally:
                browser.close()

    return open_page


@pytest.fixture
def without_shop_receivers() -> Iterator[None]:
    """The example shop's order receivers disconnected, so a query count is the app's own."""
    from django_ledgepay import signals
    from shop import receivers

    pairs = [
        (signals.payment_succeeded, receivers.mark_paid),
        (signals.payment_failed, receivers.mark_failed),
        (signals.payment_canceled, receivers.mark_canceled),
    ]
    for signal, receiver in pairs:
        signal.disconnect(receiver)
    yield
    for signal, receiver in pairs:
        signal.connect(receiver)


def writers_wait_for_each_other() -> bool:
    """Whether concurrent writers queue up: PostgreSQL's row locks, or SQLite in IMMEDIATE
    transaction mode (one writer at a time, as the README advises)."""
    if connection.vendor == "postgresql":
        return True
    mode = connection.settings_dict.get("OPTIONS", {}).get("transaction_mode") or ""
    return connection.vendor == "sqlite" and str(mode).upper() == "IMMEDIATE"


#: For concurrency tests: they need writers that wait for each other.
concurrent_writers = pytest.mark.skipif(
    not writers_wait_for_each_other(),
    reason="needs PostgreSQL's row locks or SQLite's IMMEDIATE transactions",
)


# Deliveries held in a queue instead of run after each commit

DUMMY_BACKEND = (
    "django.tasks.backends.dummy.DummyBackend"
    if importlib.util.find_spec("django.tasks")
    else "django_tasks.backends.dummy.DummyBackend"
)


@pytest.fixture
def held_deliveries(settings: Any) -> Callable[[], list[Any]]:
    """Deliveries and event processing queued on Django's dummy task backend, not run:
    ``run_held()`` runs what was queued (in order) and returns the tasks' results.

    A query count of a webhook then counts the webhook's own statements, not those of the
    receivers' delivery after its commit.
    """
    from django_ledgepay import tasks

    settings.TASKS = {
        "default": {"BACKEND": DUMMY_BACKEND},
        "held": {"BACKEND": DUMMY_BACKEND},
    }
    settings.LEDGEPAY_TASK_BACKEND = "held"

    def run_held() -> list[Any]:
        queued = tasks.task_backends["held"]
        results, queued.results = list(queued.results), []
        return [result.task.call(*result.args, **result.kwargs) for result in results]

    return run_held


def lock_waiters() -> int:
    """How many sessions of the test database wait for a lock, from a connection of its own."""
    import psycopg

    db = connection.settings_dict
    with psycopg.connect(
        dbname=db["NAME"],
        user=db.get("USER") or "postgres",
        password=db.get("PASSWORD") or None,
        host=db.get("HOST") or "127.0.0.1",
        port=db.get("PORT") or 5432,
        autocommit=True,
    ) as other:
        row = other.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND wait_event_type = 'Lock'"
        ).fetchone()
    return int(row[0]) if row else 0


def staff_client(django_user_model: Any, *codenames: str, username: str = "staff") -> Client:
    """A client logged in as staff holding the app's permissions ``codenames``."""
    user = django_user_model.objects.create_user(username, password="pw", is_staff=True)
    user.user_permissions.set(
        Permission.objects.filter(
            content_type__app_label="django_ledgepay", codename__in=codenames
        )
    )
    client = Client()
    client.force_login(user)
    return client


def pytest_unconfigure(config: pytest.Config) -> None:
    """Remove the run's folder that tests/settings.py made (``LEDGEPAY_TEST_TMPDIR`` unset),
    once the test databases in it are gone; a folder the environment named is left."""
    if os.environ.get("LEDGEPAY_TEST_TMPDIR_MADE_BY") == str(os.getpid()):
        shutil.rmtree(os.environ["LEDGEPAY_TEST_TMPDIR"], ignore_errors=True)
