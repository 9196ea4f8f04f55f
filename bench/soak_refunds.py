"""Fault soak of refunds and payments made without idempotency keys (issue 11): callers that
retry every failed call, against a sandbox that fails 30% of the API requests, some after
they took effect; no payment may be made twice and no refund doubled or lost.

Run from the repository root::

    .venv/bin/python bench/soak_refunds.py [--payments N] [--threads T] [--failure-rate F]
        [--seed S] [--max-retries R] [--sequential]

On SQLite (a fresh file in the temporary directory, ``transaction_mode`` ``IMMEDIATE``)
unless ``DATABASE_URL`` names a database: then a fresh database beside it
(``ledgepay_soak_refunds``) is created, migrated and dropped at the end (``--keep-db``
keeps it).

In this process: the sandbox at ``--failure-rate`` (0.3), delivering its webhooks to the
project's webhook view served by Django's threaded WSGI server on loopback. From
``--threads`` (8) threads, ``services.create_payment`` is called for each payment with the
order's idempotency key, as a shop should, each failed call retried until it succeeds, and
the payment is paid in the sandbox (``Sandbox.pay``). Meanwhile shoppers with the same cart
call it at once without a key, each once: each must get a payment of its own. Once the
webhooks have marked every payment succeeded, the refunds planned up front (a third
refunded in full, a third in two partials, a third not at all) are made with
``services.refund_payment``, without keys, by callers that retry every failed call
(``LedgePayError``, ``RefundUnresolvedError`` included) with the same arguments until it
succeeds. The two partials of a payment are usually two callers at once, from two threads;
with ``--sequential`` one caller makes them one after the other.

Once every webhook is delivered it checks that the sandbox holds one payment per
``create_payment`` meant, the refunds meant (per payment, the same amounts, one for one),
that each call got a refund of its own, and that the mirror equals the sandbox: every
payment's status, amount and currency, every refund's amount, currency, status and
payment, no request left unknown. It prints the machine, the counts and the time, and exits
1 with the list of mismatches when anything differs. ``tests/test_refund_soak.py`` runs the
same code on 40 payments.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import queue
import random
import sqlite3
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

if TYPE_CHECKING:
    from django_ledgepay.models import Payment, Refund
    from django_ledgepay.sandbox import Sandbox

T = TypeVar("T")

DEFAULT_PAYMENTS = 320
SHORT_PAYMENTS = 40
SOAK_DATABASE = "ledgepay_soak_refunds"
WEBHOOK_SECRET = "whsec_soak_refunds"
CURRENCIES = ("EUR", "EUR", "USD", "JPY")
#: How long one call is retried, and how long the webhooks may take, before the soak
#: gives up on it and reports it.
GIVE_UP_AFTER = 60.0
#: The cart the keyless shoppers all buy, at once.
SAME_CART = "The same cart"
SAME_CART_AMOUNT = 1234
#: ... and how many times at least: one try may take seconds (waiting for a lock).
GIVE_UP_TRIES = 2
#: A caller's pause between two tries of a failed call, in seconds.
RETRY_PAUSE = (0.005, 0.03)


# What is meant


@dataclass(frozen=True)
class PaymentPlan:
    """One payment and the refunds meant for it, decided before the soak starts."""

    number: int
    amount: int
    currency: str
    #: The refund calls, in order: an amount, or None for all that is left.
    refunds: tuple[int | None, ...] = ()
    #: Whether two callers make the refunds at once (explicit amounts only).
    together: bool = False

    @property
    def description(self) -> str:
        return f"Soak order {self.number}"

    @property
    def kind(self) -> str:
        if not self.refunds:
            return "none"
        if self.refunds == (None,):
            return "full"
        if self.refunds[-1] is None:
            return "partial and the rest"
        if self.refunds[0] == self.refunds[1]:
            return "two equal partials"
        return "two partials"

    def meant(self) -> list[int]:
        """The amounts LedgePay must refund, one per refund call."""
        amounts: list[int] = []
        for amount in self.refunds:
            amounts.append(self.amount - sum(amounts) if amount is None else amount)
        return amounts


def make_plans(count: int, seed: int, *, sequential: bool = False) -> list[PaymentPlan]:
    """``count`` payments: a third not refunded, a third in full, a third in two partials
    (of other amounts, of equal ones, or one and then the rest)."""
    rng = random.Random(seed)
    kinds = ["none", "full", "partials"] * (count // 3 + 1)
    kinds = kinds[:count]
    rng.shuffle(kinds)
    plans = []
    for number, kind in enumerate(kinds, start=1):
        amount = rng.randrange(300, 50_000)
        currency = rng.choice(CURRENCIES)
        refunds: tuple[int | None, ...] = ()
        together = False
        if kind == "full":
            refunds = (None,)
        elif kind == "partials":
            shape = rng.choice(("other", "equal", "rest"))
            first = rng.randrange(1, amount // 2)
            if shape == "rest":
                refunds = (first, None)
            else:
                second = first if shape == "equal" else rng.randrange(1, amount - first + 1)
                refunds = (first, second)
                together = not sequential
        plans.append(PaymentPlan(number, amount, currency, refunds, together))
    return plans


# What happened


@dataclass
class Tally:
    """What the callers did, counted from every thread."""

    calls: Counter[str] = field(default_factory=Counter)
    tries: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    #: Exceptions that are not LedgePayError: a caller would see a 500.
    unexpected: list[str] = field(default_factory=list)
    gave_up: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def retries(self) -> int:
        return sum(self.tries.values()) - sum(self.calls.values())


@dataclass
class Result:
    plans: list[PaymentPlan]
    tally: Tally
    mismatches: list[str]
    injected: Counter[str]
    seconds: dict[str, float]
    counts: dict[str, Any]

    @property
    def double_refunds(self) -> int:
        return int(self.counts.get("double refunds", 0))

    @property
    def ok(self) -> bool:
        """Whether LedgePay holds what was meant and the mirror equals it. Unexpected
        errors that a retry got past are reported, but are no mismatch."""
        return not self.mismatches


class Callers:
    """Callers that retry every failed call with the same arguments until it succeeds."""

    def __init__(self, tally: Tally, *, seed: int, give_up_after: float) -> None:
        self.tally = tally
        self.seed = seed
        self.give_up_after = give_up_after
        self.local = threading.local()

    def call(self, what: str, label: str, function: Callable[[], T]) -> T | None:
        """``function()`` until it returns; None if it kept failing for ``give_up_after``
        seconds and GIVE_UP_TRIES tries."""
        from django.db import close_old_connections

        from django_ledgepay.exceptions import LedgePayError

        rng = getattr(self.local, "rng", None)
        if rng is None:
            rng = self.local.rng = random.Random(f"{self.seed}-{threading.get_ident()}")
        deadline = time.monotonic() + self.give_up_after
        tries = 0
        while True:
            tries += 1
            try:
                result = function()
            except LedgePayError as err:
                error: BaseException = err
                with self.tally.lock:
                    self.tally.errors[f"{what}: {type(err).__name__}"] += 1
            except Exception as err:
                error = err
                with self.tally.lock:
                    self.tally.errors[f"{what}: {type(err).__name__}"] += 1
                    self.tally.unexpected.append(f"{label}: {one_line(err)}{where(err)}")
                close_old_connections()  # A database error may leave it unusable.
            else:
                with self.tally.lock:
                    self.tally.calls[what] += 1
                    self.tally.tries[what] += tries
                return result
            if time.monotonic() > deadline and tries >= GIVE_UP_TRIES:
                with self.tally.lock:
                    self.tally.calls[what] += 1
                    self.tally.tries[what] += tries
                    self.tally.gave_up.append(
                        f"{label}: still failing after {tries} tries: {one_line(error)}"
                    )
                return None
            time.sleep(rng.uniform(*RETRY_PAUSE))


def one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:300]}"


def where(err: BaseException) -> str:
    """The innermost line of the app's own code the error passed through."""
    frames = [
        frame
        for frame in traceback.extract_tb(err.__traceback__)
        if "django_ledgepay" in frame.filename
    ]
    if not frames:
        return ""
    frame = frames[-1]
    return f" (at {Path(frame.filename).name}:{frame.lineno} in {frame.name})"


def in_threads(threads: int, work: Sequence[Callable[[], None]]) -> None:
    """Run the ``work`` items in order from ``threads`` threads; each thread closes its
    database connection when the work runs out."""
    from django.db import connections

    items: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
    for item in work:
        items.put(item)
    failures: list[str] = []

    def worker() -> None:
        try:
            while True:
                try:
                    item = items.get_nowait()
                except queue.Empty:
                    return
                item()
        except Exception:
            failures.append(traceback.format_exc())
        finally:
            connections.close_all()

    pool = [threading.Thread(target=worker, name=f"soak-{n}") for n in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    if failures:
        raise RuntimeError("A soak thread failed:\n" + "\n".join(failures))


# The soak


def run(
    sandbox: Sandbox,
    plans: Sequence[PaymentPlan],
    *,
    threads: int = 8,
    shop_url: str = "http://127.0.0.1:9/shop",
    seed: int = 0,
    give_up_after: float = GIVE_UP_AFTER,
) -> Result:
    """Make the payments and refunds of ``plans`` through the services against
    ``sandbox``, which must deliver its webhooks to this project; then compare."""
    from django_ledgepay import services
    from django_ledgepay.exceptions import LedgePayError
    from django_ledgepay.models import Payment

    tally = Tally()
    callers = Callers(tally, seed=seed, give_up_after=give_up_after)
    mismatches: list[str] = []
    seconds: dict[str, float] = {}
    made: dict[int, str] = {}  # Plan number -> the payment's LedgePay id.
    got: dict[int, list[tuple[str, int]]] = {}  # Plan number -> the refunds the calls got.
    started = time.monotonic()

    def buy(plan: PaymentPlan) -> Callable[[], None]:
        def work() -> None:
            payment = callers.call(
                "create_payment",
                f"payment {plan.number}",
                lambda: services.create_payment(
                    amount=plan.amount,
                    currency=plan.currency,
                    description=plan.description,
                    success_url=f"{shop_url}/orders/{plan.number}/",
                    cancel_url=f"{shop_url}/cart/",
                    # The shop's order: a retry after a lost answer is the same payment.
                    idempotency_key=f"soak-{seed}-order-{plan.number}",
                ),
            )
            if payment is not None:
                made[plan.number] = payment.ledgepay_id
                sandbox.pay(payment.ledgepay_id)  # The shopper pays on the checkout page.

        return work

    in_threads(threads, [buy(plan) for plan in plans])
    # Shoppers with the same cart, at once, without a key: a payment each, never one shared
    # (a call whose answer was lost may leave one more at LedgePay, nobody's).
    same_cart: list[str] = []

    def shop_alike() -> None:
        try:
            payment = services.create_payment(
                amount=SAME_CART_AMOUNT,
                currency="EUR",
                description=SAME_CART,
                success_url=f"{shop_url}/orders/same/",
                cancel_url=f"{shop_url}/cart/",
            )
        except LedgePayError:
            return
        with tally.lock:
            same_cart.append(payment.ledgepay_id)

    in_threads(threads, [shop_alike] * max(threads, len(plans) // 4))
    seconds["payments"] = time.monotonic() - started
    if len(set(same_cart)) != len(same_cart):
        mismatches.append(
            f"keyless calls with the same arguments shared a payment: {sorted(same_cart)}"
        )

    paid = set(made.values())
    succeeded = sandbox.wait_until(
        lambda: (
            Payment.objects.filter(ledgepay_id__in=paid, status="succeeded").count() == len(paid)
        ),
        timeout=give_up_after,
    )
    if not succeeded:
        done = set(
            Payment.objects.filter(ledgepay_id__in=paid, status="succeeded").values_list(
                "ledgepay_id", flat=True
            )
        )
        mismatches.append(
            f"{len(paid - done)} paid payments not succeeded in the mirror after "
            f"{give_up_after:.0f} s (their refunds are not made): {sorted(paid - done)}"
        )
        for number, payment_id in list(made.items()):
            if payment_id not in done:
                del made[number]
    seconds["payment webhooks"] = time.monotonic() - started - seconds["payments"]

    def refund(plan: PaymentPlan, amounts: Sequence[int | None]) -> Callable[[], None]:
        def work() -> None:
            for amount in amounts:
                refund = callers.call(
                    "refund_payment",
                    f"refund of {amount or 'the rest'} of payment {plan.number}",
                    lambda amount=amount: services.refund_payment(  # type: ignore[misc]
                        made[plan.number], amount=amount
                    ),
                )
                if refund is None:
                    return  # A caller stuck on one refund does not go on to the next.
                with tally.lock:
                    got.setdefault(plan.number, []).append((refund.ledgepay_id, refund.amount))

        return work

    # Groups of work in a random order; the two callers of a payment's "together" refunds
    # next to each other in the queue, so that they run at once.
    groups: list[list[Callable[[], None]]] = []
    for plan in plans:
        if not plan.refunds or plan.number not in made:
            continue
        if plan.together:
            groups.append([refund(plan, [amount]) for amount in plan.refunds])
        else:
            groups.append([refund(plan, plan.refunds)])
    random.Random(seed).shuffle(groups)
    refund_started = time.monotonic()
    in_threads(threads, [work for group in groups for work in group])
    seconds["refunds"] = time.monotonic() - refund_started

    delivered_started = time.monotonic()
    if not sandbox.wait_for_deliveries(timeout=give_up_after):
        mismatches.append(f"webhooks still undelivered after {give_up_after:.0f} s")
    seconds["refund webhooks"] = time.monotonic() - delivered_started
    seconds["total"] = time.monotonic() - started

    # A call that never succeeded is a caller left without what it asked for.
    mismatches.extend(f"a call never succeeded: {line}" for line in tally.gave_up)
    counts = compare(sandbox, plans, made, got, mismatches)
    counts["same-cart calls answered"] = len(same_cart)
    return Result(
        plans=list(plans),
        tally=tally,
        mismatches=mismatches,
        injected=Counter(sandbox.injected),
        seconds=seconds,
        counts=counts,
    )


def compare(
    sandbox: Sandbox,
    plans: Sequence[PaymentPlan],
    made: dict[int, str],
    got: dict[int, list[tuple[str, int]]],
    mismatches: list[str],
) -> dict[str, Any]:
    """Append to ``mismatches`` what differs between what was meant, what the sandbox
    holds and what the mirror holds; return the counts."""
    from django_ledgepay.models import (
        Payment,
        PaymentRequest,
        Refund,
        RefundRequest,
        WebhookEvent,
    )

    # The keyless shoppers' payments: checked apart (one each, never shared); one whose
    # answer was lost is at LedgePay and not in the mirror until a reconcile records it.
    same_cart = {
        payment_id
        for payment_id, payment in sandbox.payments.items()
        if payment["description"] == SAME_CART
    }
    remote_payments = {
        payment_id: payment
        for payment_id, payment in sandbox.payments.items()
        if payment_id not in same_cart
    }
    remote_refunds = sandbox.refunds
    by_description: dict[str, list[str]] = {}
    for payment_id, payment in remote_payments.items():
        by_description.setdefault(payment["description"], []).append(payment_id)
    refunds_of: dict[str, list[dict[str, Any]]] = {}
    for refund in remote_refunds.values():
        refunds_of.setdefault(refund["payment_id"], []).append(refund)

    doubles = missing = 0
    meant_refunds = 0
    for plan in plans:
        ids = by_description.pop(plan.description, [])
        if len(ids) != 1:
            mismatches.append(
                f"payment {plan.number}: {len(ids)} payments at LedgePay, 1 meant ({ids})"
            )
        if plan.number not in made:
            continue
        payment_id = made[plan.number]
        remote = remote_payments.get(payment_id)
        if remote is None or remote["amount"] != plan.amount:
            mismatches.append(f"payment {plan.number}: the call got {payment_id}, not {remote}")
        meant = Counter(plan.meant())
        meant_refunds += len(plan.meant())
        found = Counter(refund["amount"] for refund in refunds_of.get(payment_id, []))
        extra, lacking = found - meant, meant - found
        if extra or lacking:
            doubles += sum(extra.values())
            missing += sum(lacking.values())
            mismatches.append(
                f"payment {plan.number} ({payment_id}, {plan.kind}): LedgePay refunded "
                f"{sorted(found.elements())}, meant {sorted(meant.elements())}"
            )
        calls_got = got.get(plan.number, [])
        if len({refund_id for refund_id, _ in calls_got}) != len(calls_got):
            mismatches.append(
                f"payment {plan.number} ({payment_id}): two calls got the same refund "
                f"{sorted(calls_got)}"
            )
        for refund_id, amount in calls_got:
            if remote_refunds.get(refund_id, {}).get("amount") != amount:
                mismatches.append(
                    f"payment {plan.number}: a call got refund {refund_id} of {amount}, "
                    f"LedgePay has {remote_refunds.get(refund_id)}"
                )
    for description, ids in by_description.items():
        mismatches.append(f"payments nobody meant at LedgePay ({description!r}): {ids}")

    # The mirror against the sandbox.
    local_payments: dict[str, Payment] = {
        payment.ledgepay_id: payment for payment in Payment.objects.with_amount_refunded()
    }
    for payment_id, remote in remote_payments.items():
        local = local_payments.pop(payment_id, None)
        if local is None:
            mismatches.append(f"mirror: payment {payment_id} is missing")
            continue
        said = (remote["status"], remote["amount"], remote["currency"])
        kept = (local.status, local.amount, local.currency)
        if said != kept:
            mismatches.append(f"mirror: payment {payment_id} is {kept}, LedgePay says {said}")
        refunded = sandbox.state.refunded(payment_id)
        if local.amount_refunded != refunded:
            mismatches.append(
                f"mirror: payment {payment_id} has {local.amount_refunded} refunded, "
                f"LedgePay {refunded}"
            )
    for payment_id in set(local_payments) - same_cart:
        mismatches.append(f"mirror: payment {payment_id} is not at LedgePay")
    local_refunds: dict[str, Refund] = {
        refund.ledgepay_id: refund for refund in Refund.objects.select_related("payment")
    }
    for refund_id, remote in remote_refunds.items():
        local_refund = local_refunds.pop(refund_id, None)
        if local_refund is None:
            mismatches.append(f"mirror: refund {refund_id} is missing")
            continue
        says = (remote["amount"], remote["currency"], remote["status"], remote["payment_id"])
        keeps = (
            local_refund.amount,
            local_refund.currency,
            local_refund.status,
            local_refund.payment.ledgepay_id,
        )
        if says != keeps:
            mismatches.append(f"mirror: refund {refund_id} is {keeps}, LedgePay says {says}")
    for refund_id in local_refunds:
        mismatches.append(f"mirror: refund {refund_id} is not at LedgePay")
    for request in RefundRequest.objects.filter(outcome="unknown").select_related("payment"):
        mismatches.append(
            f"mirror: refund request {request.idempotency_key} of {request.amount} "
            f"left unknown ({request.error or 'no error'})"
        )
    # A keyless call whose answer was lost leaves its request unknown (the reconcile finds
    # its payment); each is one of the same-cart shoppers', whose calls are not retried.
    unknown_payments = PaymentRequest.objects.filter(outcome="unknown")
    if unknown_payments.exclude(error__gt="").exists():
        mismatches.append("mirror: a payment request left unknown without an error")

    requests = RefundRequest.objects.all()
    answers = Counter(
        str(delivery.status or delivery.error or "no answer") for delivery in sandbox.deliveries
    )
    return {
        "webhook deliveries": dict(sorted(answers.items())),
        "payments meant": len(plans),
        "payments at LedgePay": len(remote_payments),
        "same-cart payments at LedgePay": len(same_cart),
        "refunds meant": meant_refunds,
        "refunds at LedgePay": len(remote_refunds),
        "double refunds": doubles,
        "missing refunds": missing,
        "refund requests": requests.count(),
        "refund requests sent again": requests.filter(attempts__gt=1).count(),
        "payment requests": PaymentRequest.objects.count(),
        "webhook events": dict(
            Counter(WebhookEvent.objects.values_list("status", flat=True)).most_common()
        ),
    }


# Reporting


def machine() -> str:
    from bench.machine import cpu_model

    load = ""
    with contextlib.suppress(OSError):
        load = f", load average {os.getloadavg()[0]:.1f} at the start"
    return (
        f"machine: {os.cpu_count()} cores, {cpu_model()}, {platform.system()} "
        f"{platform.release()}; Python {platform.python_version()}{load}"
    )


def database() -> str:
    import django
    from django.db import connection

    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SHOW server_version")
            (version,) = cursor.fetchone() or ("?",)
        name = f"PostgreSQL {version}"
    else:
        mode = connection.settings_dict.get("OPTIONS", {}).get("transaction_mode", "DEFERRED")
        name = f"SQLite {sqlite3.sqlite_version} (file, {mode})"
    return f"database: {name}; Django {django.get_version()}"


def report(result: Result) -> str:
    tally, counts = result.tally, result.counts
    kinds = Counter(plan.kind for plan in result.plans)
    together = sum(1 for plan in result.plans if plan.together)
    lost = sum(n for kind, n in result.injected.items() if kind.endswith("-after"))
    lines = [
        f"plans: {', '.join(f'{n} {kind}' for kind, n in sorted(kinds.items()))}; "
        f"{together} payments refunded by two callers at once",
        f"calls: {tally.calls['create_payment']} create_payment, "
        f"{tally.calls['refund_payment']} refund_payment; {tally.retries()} retries "
        f"({tally.tries['create_payment'] - tally.calls['create_payment']} of payments, "
        f"{tally.tries['refund_payment'] - tally.calls['refund_payment']} of refunds)",
        f"errors the callers saw: {dict(tally.errors.most_common()) or 'none'}",
        f"failures injected: {sum(result.injected.values())} "
        f"({dict(result.injected.most_common())}), {lost} of them after the request "
        "took effect",
        f"LedgePay: {counts['payments at LedgePay']} payments "
        f"({counts['payments meant']} meant), {counts['refunds at LedgePay']} refunds "
        f"({counts['refunds meant']} meant); keyless same-cart calls: "
        f"{counts['same-cart calls answered']} answered, "
        f"{counts['same-cart payments at LedgePay']} payments",
        f"double refunds found: {counts['double refunds']}; missing refunds: "
        f"{counts['missing refunds']}",
        f"mirror: {counts['refund requests']} refund requests "
        f"({counts['refund requests sent again']} sent again), "
        f"{counts['payment requests']} payment requests; webhook events "
        f"{counts['webhook events']}",
        f"webhook deliveries by answer: {counts['webhook deliveries']}",
        "time: " + ", ".join(f"{name} {value:.1f} s" for name, value in result.seconds.items()),
    ]
    if tally.unexpected:
        lines.append(
            f"unexpected errors ({len(tally.unexpected)}: not LedgePayError, a caller would "
            "see a 500; its retry went on):"
        )
        lines.extend(f"  {line}" for line in tally.unexpected[:20])
    if result.mismatches:
        lines.append(f"MISMATCHES ({len(result.mismatches)}):")
        lines.extend(f"  {line}" for line in result.mismatches)
    else:
        lines.append("mismatches: none (the sandbox holds what was meant; the mirror equals it)")
    return "\n".join(lines)


# The script: Django, a database, the webhook server and the sandbox in this process


def configure(database_url: str | None, max_retries: int, sqlite_dir: Path) -> None:
    import django
    from django.conf import settings

    if database_url:
        import environ

        db = environ.Env.db_url_config(database_url)
        db["TEST"] = {"NAME": SOAK_DATABASE}
    else:
        db = {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": str(sqlite_dir / "unused.sqlite3"),
            # As the README advises: writers wait for each other.
            "OPTIONS": {"transaction_mode": "IMMEDIATE"},
            "TEST": {"NAME": str(sqlite_dir / f"{SOAK_DATABASE}.sqlite3")},
        }
    settings.configure(
        SECRET_KEY="soak-only-not-secret",
        DEBUG=False,
        USE_TZ=True,
        TIME_ZONE="UTC",
        ALLOWED_HOSTS=["127.0.0.1"],
        ROOT_URLCONF="django_ledgepay.urls",  # The webhook view at /webhook/.
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
        DATABASES={"default": db},
        INSTALLED_APPS=[
            "django.contrib.contenttypes",
            "django.contrib.auth",
            "django_ledgepay",
        ],
        MIDDLEWARE=["django.middleware.common.CommonMiddleware"],
        LEDGEPAY_API_KEY="sk_test_soak_refunds",
        LEDGEPAY_WEBHOOK_SECRET=WEBHOOK_SECRET,
        LEDGEPAY_MAX_RETRIES=max_retries,
        # The soak injects a failure into 30% of calls: five in a row happen, and an open
        # circuit breaker would fail every call for its cooldown, longer than the callers
        # persist. The breaker is tested apart; here every call reaches the sandbox.
        LEDGEPAY_BREAKER_THRESHOLD=0,
        LOGGING={
            "version": 1,
            "disable_existing_loggers": False,
            "handlers": {"console": {"class": "logging.StreamHandler"}},
            "root": {"handlers": ["console"], "level": "WARNING"},
            "loggers": {
                # Expected, and many: the client's retries, the sandbox's deliveries, the
                # status rules' notes on late events, a webhook answered 503 (and delivered
                # again) while SQLite is locked. The report counts the deliveries' answers.
                "django_ledgepay": {"level": "CRITICAL"},
                "django.request": {"level": "CRITICAL"},
                "django.server": {"level": "CRITICAL"},
            },
        },
    )
    django.setup()


@contextlib.contextmanager
def webhook_server() -> Iterator[str]:
    """The project served by Django's threaded WSGI server on loopback; yields its URL."""
    from django.core.handlers.wsgi import WSGIHandler
    from django.core.servers.basehttp import ThreadedWSGIServer, WSGIRequestHandler

    class Quiet(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadedWSGIServer(("127.0.0.1", 0), Quiet, allow_reuse_address=False)
    server.set_app(WSGIHandler())
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def soak_sandbox(webhook_url: str, secret: str, *, failure_rate: float, seed: int) -> Sandbox:
    """The sandbox the soak runs against: refunds complete after 50 ms, and a webhook
    refused is tried again within a second."""
    from django_ledgepay.sandbox import Sandbox

    return Sandbox(
        webhook_url=webhook_url,
        webhook_secret=secret,
        failure_rate=failure_rate,
        refund_delay=0.05,
        delivery_backoff=0.05,
        delivery_max_backoff=1.0,
        seed=seed,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--payments", type=int, default=DEFAULT_PAYMENTS, help="(320)")
    parser.add_argument("--threads", type=int, default=8, help="callers at once (8)")
    parser.add_argument("--failure-rate", type=float, default=0.3, help="sandbox API (0.3)")
    parser.add_argument("--seed", type=int, default=None, help="plans and failures (random)")
    parser.add_argument(
        "--max-retries",
        type=int,
        default=3,
        help="LEDGEPAY_MAX_RETRIES (3, the default); 0 leaves every failure to the callers",
    )
    parser.add_argument(
        "--sequential",
        action="store_true",
        help="one caller makes a payment's two partial refunds, one after the other",
    )
    parser.add_argument("--keep-db", action="store_true", help="do not drop the database")
    options = parser.parse_args(argv)
    if options.payments < 1:
        parser.error("--payments must be at least 1.")
    if options.threads < 1:
        parser.error("--threads must be at least 1.")
    if not 0 <= options.failure_rate <= 1:
        parser.error("--failure-rate must be between 0 and 1.")
    if options.max_retries < 0:
        parser.error("--max-retries must be at least 0.")
    seed = options.seed if options.seed is not None else random.randrange(1_000_000)

    with tempfile.TemporaryDirectory(prefix="soak-refunds-") as tmp:
        configure(os.environ.get("DATABASE_URL"), options.max_retries, Path(tmp))
        from django.conf import settings
        from django.db import connection, connections

        print(machine())
        old_name = connection.creation.create_test_db(
            verbosity=0, autoclobber=True, serialize=False
        )
        try:
            print(database())
            print(
                f"soak: {options.payments} payments, {options.threads} threads, sandbox "
                f"failure rate {options.failure_rate}, LEDGEPAY_MAX_RETRIES "
                f"{options.max_retries}, seed {seed}"
                + (", partials one after the other" if options.sequential else "")
            )
            plans = make_plans(options.payments, seed, sequential=options.sequential)
            with webhook_server() as url:
                sandbox = soak_sandbox(
                    f"{url}/webhook/",
                    WEBHOOK_SECRET,
                    failure_rate=options.failure_rate,
                    seed=seed,
                )
                with sandbox:
                    settings.LEDGEPAY_API_BASE = sandbox.api_base
                    result = run(sandbox, plans, threads=options.threads, shop_url=url, seed=seed)
            print(report(result))
        finally:
            connections.close_all()
            if not options.keep_db:
                connection.creation.destroy_test_db(old_name, verbosity=0)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
