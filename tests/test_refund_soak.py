"""The fault soak of refunds without keys (bench/soak_refunds.py) in its short form, and the
double refunds it found, reduced to their smallest form."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from django.db import OperationalError, connection

from bench import soak_refunds
from django_ledgepay import refunds, services
from django_ledgepay.exceptions import LedgePayError
from django_ledgepay.models import Payment
from django_ledgepay.sandbox import Sandbox


class LosingSandbox(Sandbox):
    """A sandbox that loses the answer of the next ``lose`` POSTs after acting on them."""

    lose = 0

    def draw_failure(self, method: str) -> str | None:
        if method == "POST" and self.lose:
            self.lose -= 1
            return "drop-after"
        return None


@pytest.fixture
def sandbox(settings: Any) -> Iterator[LosingSandbox]:
    running = LosingSandbox(refund_delay=-1, seed=3)
    with running:
        settings.LEDGEPAY_API_BASE = running.api_base
        settings.LEDGEPAY_MAX_RETRIES = 0
        yield running


@pytest.fixture
def paid(sandbox: LosingSandbox, db: None) -> Payment:
    payment = services.create_payment(
        amount=5000,
        currency="EUR",
        success_url="https://shop.example/ok",
        cancel_url="https://shop.example/no",
    )
    sandbox.pay(payment.ledgepay_id)
    return services.sync_payment(payment)


def refunded(sandbox: Sandbox) -> list[int]:
    return sorted(refund["amount"] for refund in sandbox.refunds.values())


def test_a_retry_after_another_callers_refund_resolved_it_refunds_once(sandbox, paid):
    """Two clerks refund one payment: the first call's answer is lost, the second call
    resolves the first's request on its way; the first clerk then retries."""
    sandbox.lose = 1
    with pytest.raises(LedgePayError):
        services.refund_payment(paid, amount=1000)
    (lost,) = sandbox.refunds
    other = services.refund_payment(paid, amount=500)
    assert refunded(sandbox) == [500, 1000]

    retried = services.refund_payment(paid, amount=1000)

    assert refunded(sandbox) == [500, 1000]
    assert retried.ledgepay_id == lost
    # And the other clerk's call again is a new refund: its own was answered.
    again = services.refund_payment(paid, amount=500)
    assert again != other and refunded(sandbox) == [500, 500, 1000]


def test_a_retry_after_the_request_was_resolved_elsewhere_refunds_once(sandbox, paid):
    """The admin's "resolve now" (or ledgepay_reconcile --apply) settles the lost request
    before the caller retries."""
    sandbox.lose = 1
    with pytest.raises(LedgePayError):
        services.refund_payment(paid, amount=1000)
    (lost,) = sandbox.refunds
    services.resolve_refund_requests(paid)

    retried = services.refund_payment(paid, amount=1000)

    assert retried.ledgepay_id == lost and refunded(sandbox) == [1000]


def test_a_retry_after_the_answer_could_not_be_recorded_resolves_at_once(
    sandbox, paid, monkeypatch
):
    """Seen in the soak as "database is locked" on SQLite; a deadlock on PostgreSQL takes
    the same path (tests/test_task_engines.py)."""
    record = services.apply_refund
    failures = [OperationalError("database is locked")]

    def failing_once(*args, **kwargs):
        if failures:
            raise failures.pop()
        return record(*args, **kwargs)

    monkeypatch.setattr(refunds, "apply_refund", failing_once)
    monkeypatch.setattr(refunds, "IN_FLIGHT_WAIT", 0.0)
    with pytest.raises(OperationalError):
        services.refund_payment(paid, amount=1000)
    assert refunded(sandbox) == [1000]

    retried = services.refund_payment(paid, amount=1000)

    assert retried.amount == 1000 and refunded(sandbox) == [1000]


# The soak's short form


@pytest.mark.live
@pytest.mark.django_db(transaction=True)
def test_the_short_soak_refunds_what_was_meant_and_mirrors_it(live_server, settings, monkeypatch):
    """40 payments; a payment's two partial refunds are mostly two callers at once."""
    # No retries in the client: every lost answer reaches the services and the callers.
    settings.LEDGEPAY_MAX_RETRIES = 0
    # A failure in 30% of calls makes five in a row likely: an open breaker would fail every
    # call for longer than the callers persist (bench/soak_refunds.py turns it off too).
    settings.LEDGEPAY_BREAKER_THRESHOLD = 0
    if connection.vendor == "sqlite":
        # On a busy CI machine, SQLite's 5 s wait for the write lock can run out with 20
        # threads in one process; the soak is about money, not that (bench/soak_refunds.py
        # keeps the default and reports it).
        monkeypatch.setitem(connection.settings_dict.setdefault("OPTIONS", {}), "timeout", 30)
    seed = 11
    plans = soak_refunds.make_plans(soak_refunds.SHORT_PAYMENTS, seed)
    sandbox = soak_refunds.soak_sandbox(
        f"{live_server.url}/ledgepay/webhook/",
        settings.LEDGEPAY_WEBHOOK_SECRET,
        failure_rate=0.3,
        seed=seed,
    )
    with sandbox:
        settings.LEDGEPAY_API_BASE = sandbox.api_base
        result = soak_refunds.run(
            sandbox, plans, threads=8, shop_url=live_server.url, seed=seed, give_up_after=5
        )

    report = soak_refunds.report(result)
    print(report)
    assert result.counts["payments at LedgePay"] == len(plans), report
    # Keyless calls with the same arguments: a payment each (run() fails on one shared).
    answered = result.counts["same-cart calls answered"]
    assert 0 < answered <= result.counts["same-cart payments at LedgePay"], report
    assert sum(kind.endswith("-after") for kind in sandbox.injected) > 0, report
    assert result.counts["refund requests sent again"] > 0, report
    assert result.mismatches == [], report
    assert result.double_refunds == 0
