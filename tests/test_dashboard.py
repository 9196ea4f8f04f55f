from __future__ import annotations

import datetime
import hashlib
import itertools
import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from django.contrib.messages import get_messages
from django.urls import NoReverseMatch, reverse
from django.utils import timezone

from django_ledgepay import dashboard
from django_ledgepay.models import Payment, Reconciliation, Refund, Transition, WebhookEvent
from tests.conftest import staff_client
from tests.factories import make_payment, make_refund

pytestmark = pytest.mark.django_db

URL = "/admin/django_ledgepay/payment/dashboard/"
#: Session, user, payments per day, refunds per day, failed events, oldest unprocessed
#: event, undelivered transitions, last reconciliation.
QUERIES = 8


def at(days_ago: int, hour: int = 12) -> datetime.datetime:
    """``hour`` o'clock, local time, ``days_ago`` days before today."""
    day = timezone.localdate() - datetime.timedelta(days=days_ago)
    return timezone.make_aware(datetime.datetime.combine(day, datetime.time(hour)))


def report(response: Any, currency: str) -> dashboard.CurrencyReport:
    reports: dict[str, dashboard.CurrencyReport] = {
        r.currency: r for r in response.context["currencies"]
    }
    return reports[currency]


def messages_of(response: Any) -> list[tuple[str, str]]:
    return [(m.level_tag, str(m)) for m in get_messages(response.wsgi_request)]


_bodies = itertools.count()


def event(status: str, received_at: datetime.datetime, name: str) -> WebhookEvent:
    created = WebhookEvent.objects.create(
        event_type="payment.succeeded",
        object_id=name,
        payload={},
        body_sha256=hashlib.sha256(f"{name} {next(_bodies)}".encode()).hexdigest(),
        status=status,
    )
    # received_at is auto_now_add: set it after the insert.
    WebhookEvent.objects.filter(pk=created.pk).update(received_at=received_at)
    return created


def test_url_name():
    assert reverse("admin:django_ledgepay_payment_dashboard") == URL


# Who sees it


def test_staff_who_may_view_payments_see_it(django_user_model):
    assert staff_client(django_user_model, "view_payment").get(URL).status_code == 200


def test_staff_who_may_change_payments_see_it(django_user_model):
    # Django's "view" includes "change".
    assert staff_client(django_user_model, "change_payment").get(URL).status_code == 200


def test_other_staff_are_refused(django_user_model):
    response = staff_client(django_user_model, "view_refund", "view_webhookevent").get(URL)

    assert response.status_code == 403


def test_visitors_are_sent_to_log_in(client):
    response = client.get(URL)

    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/?next=")


def test_payments_list_links_to_it(admin_client):
    content = admin_client.get("/admin/django_ledgepay/payment/").content.decode()

    assert f'href="{URL}" class="ledgepay-dashboardlink"' in content


def test_it_looks_like_the_admin(admin_client):
    response = admin_client.get(URL)
    content = response.content.decode()

    assert response.templates[0].name == dashboard.TEMPLATE
    assert "admin/base_site.html" in [t.name for t in response.templates]
    assert 'href="/admin/django_ledgepay/payment/">Payments</a>' in content  # breadcrumbs
    assert '<link rel="stylesheet" href="/static/django_ledgepay/admin.css">' in content


def test_nothing_is_fetched_from_elsewhere(admin_client):
    make_payment(created_at=at(1))

    content = admin_client.get(URL).content.decode()

    # Charts drawn on the server, styles and scripts from this site only.
    assert "<svg" in content
    assert re.findall(r'(?:src|href)="(?:https?:)?//', content) == []
    assert "<script" not in content.split('id="content-main"', 1)[1]


# The business per day and currency


def test_volume_refunds_and_statuses_per_day_and_currency(admin_client):
    for amount in (5000, 2550):
        make_payment(amount=amount, currency="EUR", created_at=at(0))
    make_payment(amount=1000, currency="EUR", created_at=at(2))
    make_payment(amount=9999, currency="EUR", status=Payment.Status.FAILED, created_at=at(2))
    make_payment(amount=9999, currency="EUR", status=Payment.Status.PENDING, created_at=at(0))
    refunded = make_payment(amount=4000, currency="EUR", created_at=at(40))
    make_refund(refunded, amount=1500, created_at=at(0))
    make_refund(refunded, amount=900, status=Refund.Status.PENDING, created_at=at(2))
    make_refund(refunded, amount=700, status=Refund.Status.FAILED, created_at=at(0))
    make_payment(amount=500, currency="JPY", created_at=at(1))
    make_payment(amount=12345, currency="KWD", status=Payment.Status.CANCELED, created_at=at(3))

    response = admin_client.get(URL)

    assert response.status_code == 200
    assert [r.currency for r in response.context["currencies"]] == ["EUR", "JPY", "KWD"]
    eur = report(response, "EUR")
    assert len(eur.days) == 30
    assert eur.days[-1].day == timezone.localdate()
    today, two_days_ago = eur.days[-1], eur.days[-3]
    assert (today.volume, today.refunded, today.refunds) == (7550, 1500, 1)
    assert today.counts == {"succeeded": 2, "pending": 1, "failed": 0, "canceled": 0}
    assert (two_days_ago.volume, two_days_ago.refunded) == (1000, 900)
    assert two_days_ago.counts == {"succeeded": 1, "pending": 0, "failed": 1, "canceled": 0}
    # The payment of 40 days ago is outside the window; its refunds in it are counted.
    assert eur.counts == {"succeeded": 3, "pending": 1, "failed": 1, "canceled": 0}
    assert (eur.volume_display, eur.refunded_display, eur.net_display) == (
        "85.50 EUR",
        "24.00 EUR",
        "61.50 EUR",
    )
    assert report(response, "JPY").volume_display == "500 JPY"
    kwd = report(response, "KWD")
    assert (kwd.volume_display, kwd.counts["canceled"]) == ("0.000 KWD", 1)
    content = response.content.decode()
    for total in ("85.50 EUR", "24.00 EUR", "61.50 EUR", "500 JPY", "0.000 KWD"):
        assert total in content
    # The table per day, newest first, with the days that have anything on them.
    table = content.split('id="currency-EUR"', 1)[1].split("</tbody>", 1)[0]
    rows = re.findall(r'<tr><th scope="row">([^<]+)</th>(.*?)</tr>', table)
    assert [day for day, _ in rows] == [
        f"{timezone.localdate() - datetime.timedelta(days=n):%m/%d/%Y}" for n in (0, 2)
    ]
    assert re.findall(r"<td[^>]*>([^<]+)</td>", rows[0][1]) == [
        "75.50 EUR",
        "15.00 EUR",
        "2",
        "1",
        "0",
        "0",
    ]


@pytest.mark.parametrize("days", [7, 30, 90])
def test_window_of_7_30_or_90_days(admin_client, days):
    make_payment(created_at=at(days - 1))
    make_payment(created_at=at(days))  # The day before the window.

    response = admin_client.get(URL, {"days": days})

    eur = report(response, "EUR")
    assert response.context["days"] == days
    assert len(eur.days) == days
    assert eur.days[0].day == timezone.localdate() - datetime.timedelta(days=days - 1)
    assert eur.payments == 1
    assert f'<strong aria-current="page">{days} days</strong>' in response.content.decode()
    assert messages_of(response) == []


@pytest.mark.parametrize(
    "value",
    # Superscript two, circled three, Arabic-Indic and full-width 30: digits to
    # str.isdigit(), not to int() or not in ASCII.
    ["abc", "0", "31", "-7", "", "7.0", "1e2", "9" * 30, "²", "③", "7²", "٣٠", "３０"],
)
def test_a_window_not_offered_falls_back_to_30_days_with_a_message(admin_client, value):
    make_payment(created_at=at(1))

    response = admin_client.get(URL, {"days": value})

    assert response.status_code == 200
    assert response.context["days"] == 30
    assert len(report(response, "EUR").days) == 30
    assert messages_of(response) == [
        ("warning", "The window must be 7, 30, 90 days; showing the last 30 days.")
    ]


def test_days_are_local_days(admin_client, settings):
    settings.TIME_ZONE = "Pacific/Auckland"  # 12 or 13 hours ahead of UTC.
    midnight = at(0, hour=0)
    make_payment(amount=100, created_at=midnight + datetime.timedelta(minutes=30))
    make_payment(amount=200, created_at=midnight - datetime.timedelta(minutes=30))

    eur = report(admin_client.get(URL), "EUR")

    assert eur.days[-1].day == timezone.localdate()
    assert (eur.days[-1].volume, eur.days[-2].volume) == (100, 200)


def test_no_payments_in_the_window(admin_client):
    make_payment(created_at=at(45))

    response = admin_client.get(URL)

    assert response.context["currencies"] == []
    assert "No payments or refunds in the last 30 days." in response.content.decode()


def test_charts_are_drawn_to_scale(admin_client):
    make_payment(amount=4000, created_at=at(3))
    make_payment(amount=2000, created_at=at(1))
    make_refund(make_payment(amount=1000, created_at=at(60)), amount=1000, created_at=at(1))
    make_payment(status=Payment.Status.FAILED, created_at=at(1))

    eur = report(admin_client.get(URL, {"days": 7}), "EUR")

    money, count = eur.money_chart, eur.count_chart
    assert money is not None and count is not None
    volume = {bar.x: bar for bar in money.bars if bar.css_class == "ledgepay-bar-volume"}
    refunds = [bar for bar in money.bars if bar.css_class == "ledgepay-bar-refunded"]
    # One scale for both, the volume above the baseline and the refunds below it.
    assert money.height == dashboard.CHART_HEIGHT
    assert money.baseline == pytest.approx(100 * 4000 / 5000)
    assert [bar.height for bar in volume.values()] == pytest.approx([80, 40])
    assert all(bar.y + bar.height == pytest.approx(money.baseline) for bar in volume.values())
    assert len(refunds) == 1
    assert (refunds[0].y, refunds[0].height) == pytest.approx((80, 20))
    assert refunds[0].x == max(volume)  # The same day as the 20.00 EUR.
    assert [bar.title for bar in refunds] == [f"{eur.days[-2].day:%m/%d/%Y}: 10.00 EUR refunded"]
    assert (money.top_label, money.bottom_label) == ("40.00 EUR", "10.00 EUR")
    # Payments stacked by status: a day of two is full height, a day of one is half.
    assert sorted((bar.css_class, round(bar.height, 6)) for bar in count.bars) == [
        ("ledgepay-bar-failed", 50),
        ("ledgepay-bar-succeeded", 50),
        ("ledgepay-bar-succeeded", 50),
    ]
    assert count.top_label == "2 payments"


def test_the_charts_are_in_the_page(admin_client):
    make_payment(amount=4000, created_at=at(3))

    content = admin_client.get(URL, {"days": 7}).content.decode()

    svg = content.split('<svg viewBox="0 0 70 100"', 1)[1].split("</svg>", 1)[0]
    assert re.findall(r'<rect class="([\w-]+)" x="([\d.]+)" y="([\d.]+)"', svg) == [
        ("ledgepay-bar-volume", "31.50", "0.00")
    ]
    assert "40.00 EUR succeeded</title>" in svg


def test_a_bar_of_a_small_day_still_shows(admin_client):
    make_payment(amount=1_000_000, created_at=at(2))
    make_payment(amount=1, created_at=at(1))

    eur = report(admin_client.get(URL, {"days": 7}), "EUR")

    assert eur.money_chart is not None
    assert min(bar.height for bar in eur.money_chart.bars) == 1.0


def stylesheet_rules() -> dict[tuple[str, str], dict[str, str]]:
    """The app's admin.css as ``{(media query or "", selector): {property: value}}``."""
    css = (
        Path(dashboard.__file__).parent / "static" / "django_ledgepay" / "admin.css"
    ).read_text()
    css = re.sub(r"/\*.*?\*/", "", css, flags=re.DOTALL)
    rules: dict[tuple[str, str], dict[str, str]] = {}

    def read(text: str, media: str) -> None:
        start = 0
        while (opening := text.find("{", start)) >= 0:
            depth, end = 1, opening + 1
            while depth:
                depth += {"{": 1, "}": -1}.get(text[end], 0)
                end += 1
            head, body = text[start:opening].strip(), text[opening + 1 : end - 1]
            if head.startswith("@media"):
                read(body, " ".join(head.split()))
            else:
                for selector in head.split(","):
                    declarations = rules.setdefault((media, " ".join(selector.split())), {})
                    for declaration in body.split(";"):
                        if ":" in declaration:
                            name, value = declaration.split(":", 1)
                            declarations[name.strip()] = value.strip()
            start = end

    read(css, "")
    return rules


def test_refunds_are_drawn_in_a_colour_of_their_own_in_both_themes():
    rules = stylesheet_rules()
    dark_system = "@media (prefers-color-scheme: dark)"
    refunded = "--ledgepay-refunded"
    light = {
        rules[("", ".ledgepay-dashboard")].get(refunded),
        rules.get(("", 'html[data-theme="light"] .ledgepay-dashboard'), {}).get(refunded),
    }
    dark = {
        rules.get((dark_system, ".ledgepay-dashboard"), {}).get(refunded),
        rules.get(("", 'html[data-theme="dark"] .ledgepay-dashboard'), {}).get(refunded),
    }

    assert rules[("", ".ledgepay-dashboard")]["--ledgepay-failed"] == "var(--error-fg)"
    # One colour per theme, whether the system or the admin's toggle chose it.
    assert len(light) == len(dark) == 1 and None not in light | dark, (light, dark)
    assert light != dark
    # Not failed payments' red: neither the variable nor the admin's light or dark value.
    assert not light & {"var(--error-fg)", "#ba2121", "#e35f5f"}
    assert not dark & {"var(--error-fg)", "#ba2121", "#e35f5f"}
    assert rules[("", ".ledgepay-bar-refunded")]["fill"] == f"var({refunded})"
    assert rules[("", ".ledgepay-bar-failed")]["fill"] == "var(--ledgepay-failed)"


# What needs a person


def test_webhook_health(admin_client):
    event(WebhookEvent.Status.FAILED, at(1), "failed_one")
    event(WebhookEvent.Status.FAILED, at(2), "failed_two")
    event(WebhookEvent.Status.PROCESSED, at(9), "processed")
    event(WebhookEvent.Status.RECEIVED, at(1), "newer")
    oldest = event(WebhookEvent.Status.RECEIVED, at(3), "oldest")
    payment = make_payment()
    Transition.objects.create(signal="payment_succeeded", payment=payment, source="webhook")
    Transition.objects.create(
        signal="payment_succeeded", payment=payment, source="webhook", delivered_at=at(0)
    )

    response = admin_client.get(URL)

    health = response.context["health"]
    assert (health["failed"], health["oldest"], health["undelivered"]) == (2, oldest, 1)
    content = response.content.decode()
    assert 'href="/admin/django_ledgepay/webhookevent/?status__exact=failed">2</a>' in content
    assert f'href="/admin/django_ledgepay/webhookevent/{oldest.pk}/change/"' in content
    assert "received 3\xa0days" in content or "received 2\xa0days" in content
    failed_list = admin_client.get(health["failed_url"])
    assert {e.object_id for e in failed_list.context["cl"].result_list} == {
        "failed_one",
        "failed_two",
    }
    undelivered_list = admin_client.get(health["undelivered_url"])
    assert [t.delivered_at for t in undelivered_list.context["cl"].result_list] == [None]


def test_all_well(admin_client):
    event(WebhookEvent.Status.PROCESSED, at(1), "processed")

    response = admin_client.get(URL)

    health = response.context["health"]
    assert (health["failed"], health["oldest"], health["undelivered"]) == (0, None, 0)
    content = response.content.decode()
    assert "None: every event received has been processed." in content
    assert "ledgepay-alert" not in content.split('class="module ledgepay-drift"')[0]


def test_no_links_to_lists_the_user_cannot_see(django_user_model):
    event(WebhookEvent.Status.FAILED, at(1), "failed")
    Transition.objects.create(signal="payment_succeeded", payment=make_payment(), source="api")

    response = staff_client(django_user_model, "view_payment").get(URL)

    health = response.context["health"]
    assert (health["failed"], health["undelivered"]) == (1, 1)
    assert (health["failed_url"], health["undelivered_url"]) == ("", "")
    assert "/admin/django_ledgepay/webhookevent/" not in response.content.decode()


def test_without_an_admin_for_transitions_there_is_no_link(admin_client, monkeypatch):
    Transition.objects.create(signal="payment_succeeded", payment=make_payment(), source="api")

    def without_transitions(name: str, *args: Any, **kwargs: Any) -> str:
        if "transition" in name:
            raise NoReverseMatch(name)
        return reverse(name, *args, **kwargs)

    monkeypatch.setattr("django_ledgepay.dashboard.reverse", without_transitions)

    response = admin_client.get(URL)

    assert response.status_code == 200
    assert response.context["health"]["undelivered"] == 1
    assert response.context["health"]["undelivered_url"] == ""


def test_no_reconciliation_yet(admin_client):
    response = admin_client.get(URL)

    assert response.context["reconciliation"] is None
    assert "No reconciliation has run yet" in response.content.decode()


def test_last_reconciliation_and_its_drift(admin_client):
    drifting = [make_payment(ledgepay_id=f"pay_drift_{n}") for n in range(3)]
    make_payment(ledgepay_id="pay_fine")
    Reconciliation.objects.create(
        started_at=at(5), since=at(40), until=at(5), outcome="drift", drift=[{"kind": "x"}]
    )
    last = Reconciliation.objects.create(
        started_at=at(1),
        since=at(31),
        until=at(1),
        outcome=Reconciliation.Outcome.DRIFT,
        checked=120,
        drift=[
            {"kind": "status", "payment": "pay_drift_0", "detail": "pending here"},
            {"kind": "status", "payment": "pay_drift_1", "detail": "failed here"},
            {"kind": "amount", "payment": "pay_drift_2", "detail": "5000 here, 4000 there"},
            {"kind": "missing", "payment": "pay_not_mirrored", "detail": "not mirrored"},
            {"kind": "unlisted", "payment": None, "detail": "a second with 150 payments"},
        ],
    )

    response = admin_client.get(URL)

    drift = response.context["reconciliation"]
    assert drift["run"] == last
    assert drift["kinds"] == [("amount", 1), ("missing", 1), ("status", 2), ("unlisted", 1)]
    assert (drift["count"], drift["payments"]) == (5, 4)
    content = response.content.decode()
    assert "Show the 4 payments concerned" in content
    assert "5000 here, 4000 there" in content
    query = parse_qs(urlsplit(drift["payments_url"]).query)
    assert query == {"ledgepay_id__in": ["pay_drift_0,pay_drift_1,pay_drift_2,pay_not_mirrored"]}
    listed = admin_client.get(drift["payments_url"]).context["cl"].result_list
    assert sorted(p.ledgepay_id for p in listed) == sorted(p.ledgepay_id for p in drifting)


def test_drift_link_and_list_are_cut_short(admin_client, monkeypatch):
    monkeypatch.setattr(dashboard, "DRIFT_LINK_LIMIT", 2)
    monkeypatch.setattr(dashboard, "DRIFT_SHOWN", 3)
    Reconciliation.objects.create(
        since=at(31),
        until=at(1),
        outcome=Reconciliation.Outcome.DRIFT,
        drift=[{"kind": "status", "payment": f"pay_{n}"} for n in range(5)],
    )

    response = admin_client.get(URL)

    drift = response.context["reconciliation"]
    assert (drift["linked"], drift["payments"], len(drift["entries"]), drift["more"]) == (
        2,
        5,
        3,
        2,
    )
    content = response.content.decode()
    assert "Show the first 2 of the 5 payments concerned" in content
    assert "and 2 more" in content


def test_a_reconciliation_that_could_not_read_ledgepay(admin_client):
    Reconciliation.objects.create(
        since=at(31),
        until=at(1),
        outcome=Reconciliation.Outcome.FAILED,
        error="LedgePay could not be reached",
    )

    content = admin_client.get(URL).content.decode()

    assert "LedgePay could not be read: LedgePay could not be reached" in content


# Bounded queries


def fill(payments: int) -> None:
    for n in range(payments):
        payment = make_payment(
            currency=("EUR", "USD", "JPY")[n % 3],
            status=list(Payment.Status)[n % 4],
            created_at=at(n % 40),
        )
        if n % 2:
            make_refund(payment, amount=100, created_at=at(n % 35))
        event(list(WebhookEvent.Status)[n % 4], at(n % 20), f"evt_{n}")
        Transition.objects.create(
            signal="payment_succeeded",
            payment=payment,
            source="webhook",
            delivered_at=None if n % 5 else at(0),
        )
    Reconciliation.objects.create(
        since=at(31),
        until=at(1),
        outcome="drift",
        drift=[{"kind": "status", "payment": f"pay_{n}"} for n in range(payments)],
    )


@pytest.mark.parametrize("days", [7, 90])
def test_queries_are_a_fixed_number(admin_client, django_assert_num_queries, days):
    with django_assert_num_queries(QUERIES):
        assert admin_client.get(URL, {"days": days}).status_code == 200
    fill(60)
    with django_assert_num_queries(QUERIES):
        response = admin_client.get(URL, {"days": days})
    assert len(response.context["currencies"]) == 3


def test_queries_for_staff_are_a_fixed_number(django_user_model, django_assert_num_queries):
    client = staff_client(django_user_model, "view_payment", "view_webhookevent")
    fill(6)
    # And the user's permissions, read once.
    with django_assert_num_queries(QUERIES + 2):
        assert client.get(URL).status_code == 200
    fill(30)
    with django_assert_num_queries(QUERIES + 2):
        assert client.get(URL).status_code == 200


def test_the_aggregates_are_grouped_in_the_database(admin_client, django_assert_num_queries):
    fill(12)

    with django_assert_num_queries(QUERIES) as captured:
        admin_client.get(URL)

    grouped = [q["sql"] for q in captured.captured_queries if "GROUP BY" in q["sql"]]
    assert len(grouped) == 2
    for sql in grouped:
        # Filtered on the indexed creation time, never ordered (which would group by more).
        assert '."created_at" >= ' in sql
        assert "ORDER BY" not in sql


def test_a_drift_that_is_not_a_list_shows_as_none(admin_client):
    Reconciliation.objects.create(
        since=at(31), until=at(1), outcome=Reconciliation.Outcome.DRIFT, drift={"kind": "x"}
    )

    response = admin_client.get(URL)

    assert response.status_code == 200
    assert response.context["reconciliation"]["count"] == 0


@pytest.mark.parametrize(("minutes", "late"), [(2, False), (11, True)])
def test_an_event_unprocessed_for_ten_minutes_is_late(admin_client, minutes, late):
    event(
        WebhookEvent.Status.RECEIVED,
        timezone.now() - datetime.timedelta(minutes=minutes),
        "waiting",
    )

    response = admin_client.get(URL)

    assert response.context["health"]["oldest_late"] is late
    row = response.content.decode().split("Oldest unprocessed event")[0].rsplit("<tr", 1)[1]
    assert ("ledgepay-alert" in row) is late
