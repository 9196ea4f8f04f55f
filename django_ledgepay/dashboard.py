"""The admin's dashboard: the business per day and currency, and what needs a person.

Per day and currency over a window of 7, 30 or 90 days: the volume of succeeded payments,
the refunds made (those that have not failed) and the payments by status, drawn as bar
charts in inline SVG (nothing is fetched to draw them, not even a script); webhook health
(failed events, the oldest one not processed yet, transitions whose receivers have not all
run) and the drift the last reconciliation found.

Its queries are a fixed number whatever the data: one aggregate over the window's payments
and one over its refunds (each grouped by day on an indexed ``created_at``), then one each
for the failed events, the oldest unprocessed event, the undelivered transitions and the
last reconciliation.
"""

from __future__ import annotations

import datetime
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.db.models import Count, Sum
from django.db.models.functions import TruncDate
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import NoReverseMatch, reverse
from django.utils import timezone
from django.utils.formats import date_format
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe
from django.utils.translation import gettext as _
from django.utils.translation import ngettext

from django_ledgepay import exports
from django_ledgepay.currencies import format_amount, to_major
from django_ledgepay.models import Payment, Reconciliation, Refund, Transition, WebhookEvent

#: The windows offered, in days; the first page shows the default.
WINDOWS = (7, 30, 90)
DEFAULT_WINDOW = 30
#: The most payments the drift's link filters the payments list by (a URL has a length).
DRIFT_LINK_LIMIT = 100
#: The drift entries listed on the page; the counts per kind cover them all.
DRIFT_SHOWN = 10
#: An event received this long ago and still not processed is late: the webhook view
#: processes each as it arrives, or a task worker does within moments.
LATE_EVENT = datetime.timedelta(minutes=10)
#: The order of the statuses in the stacked bars, bottom up, and their legend.
STATUSES = (
    Payment.Status.SUCCEEDED,
    Payment.Status.PENDING,
    Payment.Status.FAILED,
    Payment.Status.CANCELED,
)
#: A chart's drawing box: one column of this width per day, bars within this height.
DAY_WIDTH = 10
BAR_WIDTH = 7
CHART_HEIGHT = 100
TEMPLATE = "admin/django_ledgepay/payment/dashboard.html"


def dashboard_view(request: HttpRequest, *, model_admin: Any) -> HttpResponse:
    """The dashboard, for staff who may view payments (403 for other staff)."""
    if not model_admin.has_view_permission(request):
        raise PermissionDenied
    days = window_from(request)
    today = timezone.localdate()
    first_day = today - datetime.timedelta(days=days - 1)
    since = timezone.make_aware(datetime.datetime.combine(first_day, datetime.time.min))
    day_list = [first_day + datetime.timedelta(days=n) for n in range(days)]
    if request.GET.get("format") == exports.CSV:
        return per_day_csv(currency_reports(since, day_list), first_day, today)
    site = model_admin.admin_site.name
    opts = model_admin.opts
    context = {
        **model_admin.admin_site.each_context(request),
        "title": _("LedgePay dashboard"),
        "subtitle": None,
        "opts": opts,
        "has_view_permission": True,
        "days": days,
        "windows": [(n, f"?{urlencode({'days': n})}", n == days) for n in WINDOWS],
        "csv_url": f"?{urlencode({'days': days, 'format': exports.CSV})}",
        "first_day": first_day,
        "today": today,
        "currencies": currency_reports(since, day_list),
        "health": webhook_health(request, site),
        "reconciliation": last_reconciliation(site),
        "changelist_url": reverse(f"{site}:{opts.app_label}_{opts.model_name}_changelist"),
        "statuses": [(status, Payment.Status(status).label) for status in STATUSES],
    }
    request.current_app = site
    return TemplateResponse(request, TEMPLATE, context)


def window_from(request: HttpRequest) -> int:
    """The window the request asks for in ``?days=``; the default, with a message, for
    anything but one of :data:`WINDOWS` in ASCII digits."""
    value = request.GET.get("days")
    if value is None:
        return DEFAULT_WINDOW
    # str.isdigit() alone also takes "²" or "③", which int() refuses.
    digits = value.strip()
    if digits.isascii() and digits.isdigit() and int(digits) in WINDOWS:
        return int(digits)
    messages.warning(
        request,
        _("The window must be %(choices)s days; showing the last %(default)s days.")
        % {"choices": ", ".join(str(n) for n in WINDOWS), "default": DEFAULT_WINDOW},
    )
    return DEFAULT_WINDOW


# The business per day and currency


@dataclass
class Bar:
    """One rectangle of a chart, in the chart's drawing units, with its tooltip."""

    x: float
    y: float
    width: float
    height: float
    css_class: str
    title: str


@dataclass
class Chart:
    width: int
    height: int
    bars: list[Bar]
    #: The drawing's baseline (the zero line), from the top.
    baseline: float
    #: Labels of the highest values drawn, above and below the baseline.
    top_label: str
    bottom_label: str = ""

    @property
    def svg(self) -> SafeString:
        """The baseline and the bars as SVG elements, each bar with its tooltip.

        Built here rather than in a template loop: a 90-day window of several currencies
        draws thousands of bars.
        """
        y = f"{self.baseline:.2f}"
        parts = [
            f'<line class="ledgepay-axis" x1="0" x2="{self.width:d}" y1="{y}" y2="{y}" '
            'vector-effect="non-scaling-stroke"></line>'
        ]
        # Numbers formatted here, the class from this module, the tooltip escaped.
        parts.extend(
            f'<rect class="{escape(bar.css_class)}" x="{bar.x:.2f}" y="{bar.y:.2f}" '
            f'width="{bar.width:.2f}" height="{bar.height:.2f}">'
            f"<title>{escape(bar.title)}</title></rect>"
            for bar in self.bars
        )
        return mark_safe("".join(parts))


@dataclass
class Day:
    day: datetime.date
    volume: int = 0
    refunded: int = 0
    refunds: int = 0
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STATUSES, 0))

    @property
    def payments(self) -> int:
        return sum(self.counts.values())


@dataclass
class CurrencyReport:
    currency: str
    days: list[Day]
    volume: int = 0
    refunded: int = 0
    refunds: int = 0
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STATUSES, 0))
    money_chart: Chart | None = None
    count_chart: Chart | None = None

    @property
    def payments(self) -> int:
        return sum(self.counts.values())

    @property
    def volume_display(self) -> str:
        return format_amount(self.volume, self.currency)

    @property
    def refunded_display(self) -> str:
        return format_amount(self.refunded, self.currency)

    @property
    def net_display(self) -> str:
        return format_amount(self.volume - self.refunded, self.currency)

    @property
    def status_counts(self) -> list[tuple[str, str, int]]:
        return [(status, Payment.Status(status).label, self.counts[status]) for status in STATUSES]

    @property
    def rows(self) -> list[dict[str, Any]]:
        """The table under the charts: one row per day with anything on it, newest first."""
        return [
            {
                "day": day.day,
                "volume": format_amount(day.volume, self.currency),
                "refunded": format_amount(day.refunded, self.currency),
                "counts": [day.counts[status] for status in STATUSES],
            }
            for day in reversed(self.days)
            if day.payments or day.refunds
        ]

    @property
    def rows_html(self) -> SafeString:
        """:attr:`rows` as the table's ``<tr>`` elements, built here for the same reason as
        :attr:`Chart.svg`."""
        return mark_safe(
            "".join(
                f'<tr><th scope="row">{escape(date_format(row["day"], "SHORT_DATE_FORMAT"))}'
                f'</th><td class="nowrap">{escape(row["volume"])}</td>'
                f'<td class="nowrap">{escape(row["refunded"])}</td>'
                + "".join(f"<td>{count:d}</td>" for count in row["counts"])
                + "</tr>"
                for row in self.rows
            )
        )


#: The per-day table's columns as a CSV file: amounts in minor units, and in major units
#: from the currency's exponent, as ``ledgepay_export`` writes them.
CSV_COLUMNS = (
    "day",
    "currency",
    "succeeded_amount",
    "succeeded_major",
    "refunded_amount",
    "refunded_major",
    "refunds",
    *(f"payments_{status}" for status in STATUSES),
)


def per_day_csv(
    reports: list[CurrencyReport], first_day: datetime.date, last_day: datetime.date
) -> HttpResponse:
    """The per-day tables of ``reports`` as one CSV download: a row per currency and day
    with anything on it, in the page's order."""
    rows = (
        {
            "day": day.day.isoformat(),
            "currency": report.currency,
            "succeeded_amount": day.volume,
            "succeeded_major": str(to_major(day.volume, report.currency)),
            "refunded_amount": day.refunded,
            "refunded_major": str(to_major(day.refunded, report.currency)),
            "refunds": day.refunds,
            **{f"payments_{status}": day.counts[status] for status in STATUSES},
        }
        for report in reports
        for day in reversed(report.days)
        if day.payments or day.refunds
    )
    response = HttpResponse(
        "".join(exports.csv_lines(CSV_COLUMNS, rows)), content_type="text/csv; charset=utf-8"
    )
    name = f"ledgepay-per-day-{first_day:%Y%m%d}-{last_day:%Y%m%d}.csv"
    response["Content-Disposition"] = f'attachment; filename="{name}"'
    return response


def currency_reports(
    since: datetime.datetime, day_list: list[datetime.date]
) -> list[CurrencyReport]:
    """One report per currency with payments or refunds since ``since``, the busiest first.

    Two queries: the window's payments and its refunds, each grouped by local day and
    currency (and status) in the database.
    """
    payments = (
        Payment.objects.filter(created_at__gte=since)
        .annotate(day=TruncDate("created_at"))
        .order_by()
        .values("day", "currency", "status")
        .annotate(count=Count("id"), total=Sum("amount"))
    )
    refunds = (
        Refund.objects.filter(created_at__gte=since)
        .exclude(status=Refund.Status.FAILED)
        .annotate(day=TruncDate("created_at"))
        .order_by()
        .values("day", "currency")
        .annotate(count=Count("id"), total=Sum("amount"))
    )
    index = {day: n for n, day in enumerate(day_list)}
    reports: dict[str, CurrencyReport] = {}

    def report_of(currency: str) -> CurrencyReport:
        if currency not in reports:
            reports[currency] = CurrencyReport(currency, [Day(day) for day in day_list])
        return reports[currency]

    for row in payments:
        if row["day"] not in index or row["status"] not in STATUSES:
            continue  # A creation date ahead of this server's clock, or an unknown status.
        report = report_of(row["currency"])
        day = report.days[index[row["day"]]]
        day.counts[row["status"]] += row["count"]
        report.counts[row["status"]] += row["count"]
        if row["status"] == Payment.Status.SUCCEEDED:
            day.volume += row["total"]
            report.volume += row["total"]
    for row in refunds:
        if row["day"] not in index:
            continue
        report = report_of(row["currency"])
        day = report.days[index[row["day"]]]
        day.refunded += row["total"]
        day.refunds += row["count"]
        report.refunded += row["total"]
        report.refunds += row["count"]
    ordered = sorted(reports.values(), key=lambda r: (-r.payments, -r.refunds, r.currency))
    for report in ordered:
        report.money_chart = money_chart(report)
        report.count_chart = count_chart(report)
    return ordered


def money_chart(report: CurrencyReport) -> Chart:
    """Succeeded volume above the baseline, refunds below it, on one scale."""
    currency = report.currency
    top = max((day.volume for day in report.days), default=0)
    bottom = max((day.refunded for day in report.days), default=0)
    scale = CHART_HEIGHT / (top + bottom) if top + bottom else 0
    baseline = top * scale if top + bottom else CHART_HEIGHT
    succeeded, refunded = _("%(day)s: %(amount)s succeeded"), _("%(day)s: %(amount)s refunded")
    bars = []
    for n, (day, label) in enumerate(zip(report.days, day_labels(report), strict=True)):
        x = n * DAY_WIDTH + (DAY_WIDTH - BAR_WIDTH) / 2
        if day.volume:
            height = _visible(day.volume * scale)
            bars.append(
                Bar(
                    x,
                    baseline - height,
                    BAR_WIDTH,
                    height,
                    "ledgepay-bar-volume",
                    succeeded % {"day": label, "amount": format_amount(day.volume, currency)},
                )
            )
        if day.refunded:
            bars.append(
                Bar(
                    x,
                    baseline,
                    BAR_WIDTH,
                    _visible(day.refunded * scale),
                    "ledgepay-bar-refunded",
                    refunded % {"day": label, "amount": format_amount(day.refunded, currency)},
                )
            )
    return Chart(
        width=len(report.days) * DAY_WIDTH,
        height=CHART_HEIGHT,
        bars=bars,
        baseline=baseline,
        top_label=format_amount(top, currency),
        bottom_label=format_amount(bottom, currency) if bottom else "",
    )


def count_chart(report: CurrencyReport) -> Chart:
    """Payments per day, stacked by status."""
    top = max((day.payments for day in report.days), default=0)
    scale = CHART_HEIGHT / top if top else 0
    bars = []
    for n, (day, label) in enumerate(zip(report.days, day_labels(report), strict=True)):
        x = n * DAY_WIDTH + (DAY_WIDTH - BAR_WIDTH) / 2
        y = float(CHART_HEIGHT)
        for status in STATUSES:
            count = day.counts[status]
            if not count:
                continue
            height = count * scale
            y -= height
            bars.append(
                Bar(
                    x,
                    y,
                    BAR_WIDTH,
                    height,
                    f"ledgepay-bar-{status}",
                    ngettext(
                        "%(day)s: %(count)d payment %(status)s",
                        "%(day)s: %(count)d payments %(status)s",
                        count,
                    )
                    % {"day": label, "count": count, "status": status},
                )
            )
    return Chart(
        width=len(report.days) * DAY_WIDTH,
        height=CHART_HEIGHT,
        bars=bars,
        baseline=CHART_HEIGHT,
        top_label=ngettext("%(count)d payment", "%(count)d payments", top) % {"count": top},
    )


def day_labels(report: CurrencyReport) -> list[str]:
    """The window's days as the tooltips name them, formatted once per report."""
    return [date_format(day.day, "SHORT_DATE_FORMAT") for day in report.days]


def _visible(height: float) -> float:
    """A bar of a day with anything on it shows, however small beside the others."""
    return max(height, 1.0)


# What needs a person


def webhook_health(request: HttpRequest, site: str) -> dict[str, Any]:
    """Failed events, the oldest unprocessed one, undelivered transitions: three queries."""
    failed = WebhookEvent.objects.filter(status=WebhookEvent.Status.FAILED).count()
    oldest = (
        WebhookEvent.objects.filter(status=WebhookEvent.Status.RECEIVED)
        .order_by("received_at", "id")
        .only("id", "event_type", "object_id", "received_at")
        .first()
    )
    undelivered = Transition.objects.filter(delivered_at__isnull=True).count()
    can_view_events = request.user.has_perm("django_ledgepay.view_webhookevent")
    can_view_transitions = request.user.has_perm("django_ledgepay.view_transition")
    events_url = _url(f"{site}:django_ledgepay_webhookevent_changelist") if can_view_events else ""
    transitions_url = (
        _url(f"{site}:django_ledgepay_transition_changelist") if can_view_transitions else ""
    )
    return {
        "failed": failed,
        "failed_url": f"{events_url}?status__exact=failed" if events_url else "",
        "oldest": oldest,
        "oldest_late": oldest is not None and oldest.received_at < timezone.now() - LATE_EVENT,
        "oldest_url": (
            _url(f"{site}:django_ledgepay_webhookevent_change", oldest.pk)
            if oldest and can_view_events
            else ""
        ),
        "unprocessed_url": f"{events_url}?status__exact=received" if events_url else "",
        "undelivered": undelivered,
        "undelivered_url": f"{transitions_url}?delivery=undelivered" if transitions_url else "",
    }


def last_reconciliation(site: str) -> dict[str, Any] | None:
    """The last reconciliation and its drift: counts per kind, the first entries, and a
    link to the payments concerned. One query."""
    run = Reconciliation.objects.order_by("-started_at", "-id").first()
    if run is None:
        return None
    drift = run.drift if isinstance(run.drift, list) else []
    entries = [entry for entry in drift if isinstance(entry, dict)]
    kinds: dict[str, int] = defaultdict(int)
    for entry in entries:
        kinds[str(entry.get("kind", ""))] += 1
    payment_ids = list(
        dict.fromkeys(str(entry["payment"]) for entry in entries if entry.get("payment"))
    )
    changelist = _url(f"{site}:django_ledgepay_payment_changelist")
    linked = payment_ids[:DRIFT_LINK_LIMIT]
    return {
        "run": run,
        "entries": entries[:DRIFT_SHOWN],
        "more": max(0, len(entries) - DRIFT_SHOWN),
        "kinds": sorted(kinds.items()),
        "count": len(entries),
        "payments": len(payment_ids),
        "linked": len(linked),
        "payments_url": (
            f"{changelist}?{urlencode({'ledgepay_id__in': ','.join(linked)})}" if linked else ""
        ),
    }


def _url(name: str, *args: Any) -> str:
    """The URL of an admin page, or "" when the site does not have it."""
    try:
        return reverse(name, args=args)
    except NoReverseMatch:
        return ""
