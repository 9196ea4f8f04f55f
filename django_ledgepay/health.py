"""The health of django-ledgepay's operations, read from the mirror alone.

``manage.py ledgepay_health`` runs :func:`run_checks`: six checks, each a function of the
moment and the :class:`Thresholds` that reads the database in one or two queries on indexed
columns. None calls LedgePay, so the command answers the same while LedgePay is down.

- ``deliveries``: transitions whose receivers are past their next attempt, or given up;
- ``events``: webhook deliveries that failed, or were stored and not applied past the grace;
- ``refunds``: refund requests whose outcome is unknown;
- ``pending``: payments pending for longer than ``LEDGEPAY_STALE_PENDING_AFTER`` minutes;
- ``reconcile``: the drift the last reconciliation left;
- ``webhooks``: no valid delivery for a long time while payments were created.

Each finds ``ok``, ``warning`` (someone should look, today) or ``critical`` (an order, a
receiver's work or a refund is wrong or unknown now, and will stay so until someone acts).
"""

from __future__ import annotations

import datetime
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from django.db.models import Count, Min, Q
from django.template.defaultfilters import pluralize
from django.utils import timezone

from django_ledgepay.conf import conf
from django_ledgepay.delivery import GRACE
from django_ledgepay.mirror.values import iso_z
from django_ledgepay.models import (
    Payment,
    Reconciliation,
    RefundRequest,
    Transition,
    WebhookEvent,
)
from django_ledgepay.sync import STALE_DAYS, stale_payments

OK: Final = "ok"
WARNING: Final = "warning"
CRITICAL: Final = "critical"
#: The statuses from best to worst: a status's index is ``ledgepay_health``'s exit status.
STATUSES: Final = (OK, WARNING, CRITICAL)
#: How many of the latest payments older than ``LEDGEPAY_STALE_PENDING_AFTER`` the check
#: ``pending`` looks at to tell a few abandoned checkouts from payments that never settle.
PENDING_SAMPLE: Final = 20


@dataclass(frozen=True)
class Check:
    """One check's finding: its ``name``, a status of :data:`STATUSES` and a sentence."""

    name: str
    status: str
    detail: str

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "status": self.status, "detail": self.detail}


@dataclass(frozen=True)
class Report:
    """Every check's finding; the report's status is the worst of theirs."""

    checks: tuple[Check, ...]

    @property
    def status(self) -> str:
        return max((check.status for check in self.checks), key=STATUSES.index, default=OK)

    @property
    def exit_status(self) -> int:
        """0 when every check is ok, 1 on a warning, 2 on a critical finding."""
        return STATUSES.index(self.status)

    def as_dict(self) -> dict[str, Any]:
        return {"status": self.status, "checks": [check.as_dict() for check in self.checks]}


@dataclass(frozen=True)
class Thresholds:
    """The settings the checks judge by, each read once per run."""

    stale_pending: datetime.timedelta
    overdue: datetime.timedelta
    critical: datetime.timedelta
    webhook_silence: datetime.timedelta
    pending_critical: int

    @classmethod
    def from_settings(cls) -> Thresholds:
        """The project's thresholds; ImproperlyConfigured names a setting that is not a
        usable number."""
        return cls(
            stale_pending=datetime.timedelta(minutes=conf.LEDGEPAY_STALE_PENDING_AFTER),
            overdue=datetime.timedelta(minutes=conf.LEDGEPAY_HEALTH_OVERDUE_AFTER),
            critical=datetime.timedelta(minutes=conf.LEDGEPAY_HEALTH_CRITICAL_AFTER),
            webhook_silence=datetime.timedelta(minutes=conf.LEDGEPAY_HEALTH_WEBHOOK_SILENCE),
            pending_critical=conf.LEDGEPAY_HEALTH_PENDING_CRITICAL,
        )


def run_checks(*, now: datetime.datetime | None = None) -> Report:
    """Run every check of :data:`CHECKS` as of ``now`` (default: now)."""
    thresholds = Thresholds.from_settings()
    now = now or timezone.now()
    return Report(tuple(check(now, thresholds) for check in CHECKS))


def age(delta: datetime.timedelta) -> str:
    """A duration as a person says it, rounded down: ``45 minutes``, ``3 hours``, ``2 days``."""
    minutes = max(0, int(delta.total_seconds() // 60))
    if minutes < 120:
        return f"{minutes} minute{pluralize(minutes)}"
    hours = minutes // 60
    if hours < 48:
        return f"{hours} hours"
    return f"{hours // 24} days"


def when(moment: datetime.datetime, now: datetime.datetime) -> str:
    """``moment`` in UTC to the second, and how long ago."""
    return f"{iso_z(moment)} ({age(now - moment)} ago)"


def number_of(number: int, singular: str, plural: str = "") -> str:
    """``1 transition``, ``3 transitions``; ``plural`` for an irregular noun."""
    return f"{number} {singular if number == 1 else plural or singular + 's'}"


# The checks


def deliveries(now: datetime.datetime, thresholds: Thresholds) -> Check:
    """Transitions past their next attempt by more than ``LEDGEPAY_HEALTH_OVERDUE_AFTER``
    (warning; critical past ``LEDGEPAY_HEALTH_CRITICAL_AFTER``), or given up after
    ``LEDGEPAY_DELIVERY_MAX_ATTEMPTS`` (critical). One query, on the index of undelivered
    transitions."""
    found = (
        Transition.objects.filter(delivered_at__isnull=True)
        .filter(Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now - thresholds.overdue))
        .aggregate(
            given_up=Count("pk", filter=Q(next_attempt_at__isnull=True)),
            overdue=Count("pk", filter=Q(next_attempt_at__isnull=False)),
            oldest=Min("next_attempt_at"),
        )
    )
    given_up, overdue, oldest = found["given_up"], found["overdue"], found["oldest"]
    if not given_up and not overdue:
        return Check("deliveries", OK, "No transition is past due or given up.")
    parts = []
    if given_up:
        parts.append(
            f"{number_of(given_up, 'transition')} given up after LEDGEPAY_DELIVERY_MAX_ATTEMPTS "
            "attempts (fix the receivers whose errors the admin shows, then run "
            "ledgepay_deliver --all)"
        )
    if overdue:
        parts.append(
            f"{number_of(overdue, 'transition')} past due by more than {age(thresholds.overdue)}, "
            f"the oldest due since {when(oldest, now)} (is ledgepay_deliver running, are "
            "the task workers up?)"
        )
    late = oldest is not None and oldest <= now - thresholds.critical
    status = CRITICAL if given_up or late else WARNING
    return Check("deliveries", status, "; ".join(parts) + ".")


def events(now: datetime.datetime, thresholds: Thresholds) -> Check:
    """Webhook deliveries whose processing failed, or stored and not applied by the grace
    ``ledgepay_deliver`` leaves them plus ``LEDGEPAY_HEALTH_OVERDUE_AFTER`` (warning;
    critical when one came more than ``LEDGEPAY_HEALTH_CRITICAL_AFTER`` ago). One query,
    on the index of status and reception time."""
    late_after = GRACE + thresholds.overdue
    found = WebhookEvent.objects.filter(
        Q(status=WebhookEvent.Status.FAILED)
        | Q(status=WebhookEvent.Status.RECEIVED, received_at__lte=now - late_after)
    ).aggregate(
        failed=Count("pk", filter=Q(status=WebhookEvent.Status.FAILED)),
        late=Count("pk", filter=Q(status=WebhookEvent.Status.RECEIVED)),
        oldest=Min("received_at"),
    )
    failed, late, oldest = found["failed"], found["late"], found["oldest"]
    if not failed and not late:
        return Check("events", OK, "No event failed; none waits to be applied.")
    parts = []
    if failed:
        parts.append(
            f"{number_of(failed, 'event')} failed (LedgePay delivers each again; "
            "ledgepay_reprocess applies them now)"
        )
    if late:
        parts.append(
            f"{number_of(late, 'event')} stored and not applied {age(late_after)} after "
            "they came (is ledgepay_deliver running, are the task workers up?)"
        )
    status = CRITICAL if oldest <= now - thresholds.critical else WARNING
    return Check("events", status, "; ".join(parts) + f"; the oldest came at {when(oldest, now)}.")


def refunds(now: datetime.datetime, thresholds: Thresholds) -> Check:
    """Refund requests whose outcome has been unknown for more than
    ``LEDGEPAY_HEALTH_OVERDUE_AFTER`` (warning; critical past
    ``LEDGEPAY_HEALTH_CRITICAL_AFTER``): LedgePay may or may not have refunded. One query,
    on the index of unknown requests."""
    found = RefundRequest.objects.filter(
        outcome=RefundRequest.Outcome.UNKNOWN, created_at__lte=now - thresholds.overdue
    ).aggregate(
        requests=Count("pk"), payments=Count("payment", distinct=True), oldest=Min("created_at")
    )
    requests, oldest = found["requests"], found["oldest"]
    if not requests:
        return Check("refunds", OK, "Every refund request has its outcome.")
    status = CRITICAL if oldest <= now - thresholds.critical else WARNING
    return Check(
        "refunds",
        status,
        f"{number_of(requests, 'refund request')} of {number_of(found['payments'], 'payment')} "
        f"without an answer for more than {age(thresholds.overdue)}, the oldest asked at "
        f"{when(oldest, now)}: the next refund of the payment sends it again, as does "
        "ledgepay_reconcile --apply.",
    )


def pending(now: datetime.datetime, thresholds: Thresholds) -> Check:
    """Payments created in the last 7 days and pending for longer than
    ``LEDGEPAY_STALE_PENDING_AFTER`` (warning: a shopper who left the checkout leaves one
    too); critical when at least ``LEDGEPAY_HEALTH_PENDING_CRITICAL`` of the last
    :data:`PENDING_SAMPLE` payments that old are: then payments do not settle. One query
    when none is, two otherwise; both on indexes of creation time."""
    minutes = thresholds.stale_pending / datetime.timedelta(minutes=1)
    found = (
        stale_payments(minutes=minutes, now=now)
        .order_by()
        .aggregate(payments=Count("pk"), oldest=Min("created_at"))
    )
    stale, oldest = found["payments"], found["oldest"]
    older = age(thresholds.stale_pending)
    if not stale:
        return Check(
            "pending",
            OK,
            f"No payment created in the last {STALE_DAYS} days has been pending for more "
            f"than {older}.",
        )
    latest = list(
        Payment.objects.filter(
            created_at__gte=now - datetime.timedelta(days=STALE_DAYS),
            created_at__lt=now - thresholds.stale_pending,
        )
        .order_by("-created_at")
        .values_list("status", flat=True)[:PENDING_SAMPLE]
    )
    still = latest.count(Payment.Status.PENDING)
    found_text = (
        f"{number_of(stale, 'payment')} created in the last {STALE_DAYS} days pending for "
        f"more than {older}, the oldest created at {when(oldest, now)}; {still} of the last "
        f"{len(latest)} created more than {older} ago are still pending"
    )
    if still >= thresholds.pending_critical:
        return Check(
            "pending",
            CRITICAL,
            f"{found_text}: payments do not settle (are webhooks arriving, is ledgepay_sync "
            "--stale running?).",
        )
    return Check(
        "pending",
        WARNING,
        f"{found_text} (ledgepay_sync --stale asks LedgePay about them; a checkout the "
        "shopper left stays pending).",
    )


def reconcile(now: datetime.datetime, thresholds: Thresholds) -> Check:
    """The drift the last finished reconciliation left: none (ok), drift that
    ``ledgepay_reconcile --apply`` repairs or a run that could not read LedgePay (warning),
    drift it cannot repair (critical). One query, on the primary key."""
    run = (
        Reconciliation.objects.exclude(outcome=Reconciliation.Outcome.RUNNING)
        .order_by("-pk")
        .first()
    )
    if run is None:
        return Check("reconcile", OK, "No reconciliation has run yet.")
    which = f"The last reconciliation, at {when(run.finished_at or run.started_at, now)},"
    if run.outcome == Reconciliation.Outcome.FAILED:
        return Check("reconcile", WARNING, f"{which} could not read LedgePay: {run.error}")
    drift = run.drift if isinstance(run.drift, list) else []
    left = [entry for entry in drift if isinstance(entry, dict) and not entry.get("repaired")]
    if not left:
        return Check("reconcile", OK, f"{which} left no drift.")
    kinds = Counter(str(entry.get("kind", "")) for entry in left)
    listed = ", ".join(f"{number} {kind}" for kind, number in sorted(kinds.items()))
    stuck = sum(1 for entry in left if not entry.get("repairable"))
    found = f"{which} left {number_of(len(left), 'drift entry', 'drift entries')} ({listed})"
    if stuck:
        return Check(
            "reconcile",
            CRITICAL,
            f"{found}; {stuck} cannot be repaired by ledgepay_reconcile --apply: see the "
            "dashboard and LedgePay.",
        )
    return Check("reconcile", WARNING, f"{found}; ledgepay_reconcile --apply repairs them.")


def webhooks(now: datetime.datetime, thresholds: Thresholds) -> Check:
    """No valid delivery for ``LEDGEPAY_HEALTH_WEBHOOK_SILENCE`` while payments were
    created at least that long ago, since the last one (warning), some of which have
    settled all the same, as a sync or the return page learnt (critical: LedgePay's
    deliveries do not arrive, or are refused). One query when a delivery came lately (the
    newest stored event, by primary key), two otherwise."""
    last = WebhookEvent.objects.order_by("-pk").values_list("received_at", flat=True).first()
    silent_since = now - thresholds.webhook_silence
    if last is not None and last > silent_since:
        return Check("webhooks", OK, f"The last valid delivery came at {when(last, now)}.")
    start = now - datetime.timedelta(days=STALE_DAYS)
    if last is not None and last > start:
        start = last
    found = Payment.objects.filter(created_at__gt=start, created_at__lte=silent_since).aggregate(
        created=Count("pk"), settled=Count("pk", filter=~Q(status=Payment.Status.PENDING))
    )
    created, settled = found["created"], found["settled"]
    heard = f"No valid delivery since {when(last, now)}" if last else "No valid delivery stored"
    if not created:
        return Check(
            "webhooks",
            OK,
            f"{heard}; no payment created since is more than "
            f"{age(thresholds.webhook_silence)} old.",
        )
    made = (
        f"{number_of(created, 'payment')} created since {pluralize(created, 'is,are')} more "
        f"than {age(thresholds.webhook_silence)} old"
    )
    if settled:
        return Check(
            "webhooks",
            CRITICAL,
            f"{heard}, while {made} and {settled} of them settled all the same: LedgePay's "
            "deliveries do not arrive or are refused (check the webhook URL at LedgePay, "
            "LEDGEPAY_WEBHOOK_SECRET and the web server's log for 400 answers).",
        )
    return Check("webhooks", WARNING, f"{heard}, while {made}; none has settled yet.")


#: The checks in the order they are reported.
CHECKS: Final[tuple[Callable[[datetime.datetime, Thresholds], Check], ...]] = (
    deliveries,
    events,
    refunds,
    pending,
    reconcile,
    webhooks,
)
