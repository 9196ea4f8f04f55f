"""The refund flow in a real browser: Debian's Chromium, driven by Playwright.

Skipped when Chromium or Playwright is missing, unless ``LEDGEPAY_REQUIRE_BROWSER=1`` (as in
CI), when that is a failure. Playwright is never asked to download a browser.
"""

from __future__ import annotations

import datetime
import os
import random
import re
from pathlib import Path
from typing import Any

import pytest
import responses
from responses import matchers

from django.contrib.auth.models import Permission
from django.utils import timezone

from django_ledgepay.models import (
    Payment,
    Reconciliation,
    Refund,
    RefundRequest,
    Transition,
    WebhookEvent,
)
from tests.conftest import API
from tests.factories import make_payment, make_refund, refund_data

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def ledgepay_id(prefix: str, rng: random.Random) -> str:
    """An id as long as LedgePay's and the sandbox's (``django_ledgepay/sandbox/state.py``):
    the prefix and 16 hex digits, as ``pay_7f3a9e01c2d4b5a6`` or ``re_d22d8d57cacdd2fc``."""
    return f"{prefix}_{rng.getrandbits(64):016x}"


def test_staff_issues_a_partial_refund(chromium, live_server, django_user_model):
    payment = make_payment(amount=5000, currency="EUR")
    user = django_user_model.objects.create_user("clerk", password="clerk-pw", is_staff=True)
    user.user_permissions.set(
        Permission.objects.filter(
            content_type__app_label="django_ledgepay",
            codename__in=["view_payment", "view_refund", "refund_payment"],
        )
    )
    change_path = f"/admin/django_ledgepay/payment/{payment.pk}/change/"
    refund_path = f"/admin/django_ledgepay/payment/{payment.pk}/refund/"

    # The live server runs in a thread of this process, so this mock answers its calls.
    with responses.RequestsMock() as api, chromium() as page:
        api.add(
            responses.POST,
            f"{API}/refunds",
            json=refund_data(
                payment.ledgepay_id, id="re_browser", amount=1234, status="succeeded"
            ),
            match=[
                matchers.json_params_matcher(
                    {
                        "payment_id": payment.ledgepay_id,
                        "amount": 1234,
                        "reason": "customer_request",
                    }
                )
            ],
        )

        page.goto(f"{live_server.url}/admin/login/?next={change_path}")
        page.fill("#id_username", "clerk")
        page.fill("#id_password", "clerk-pw")
        page.click("input[type=submit]")
        page.wait_for_url(f"**{change_path}")
        payment_page = page.text_content("#content") or ""

        page.click("a.refundlink")
        page.wait_for_url(f"**{refund_path}")
        default_amount = page.input_value("#id_amount")
        page.fill("#id_amount", "12.34")
        page.click("input[name=_refund]")

        page.wait_for_url(f"**{change_path}")
        success = page.text_content(".messagelist .success") or ""
        inline = page.text_content("#refunds-group") or ""
        api_calls = len(api.calls)

    assert payment.ledgepay_id in payment_page
    assert default_amount == "50.00"
    assert api_calls == 1
    assert f"Refunded 12.34 EUR of {payment.ledgepay_id}" in success
    assert "re_browser" in inline
    assert "12.34 EUR" in inline
    assert Payment.objects.get(pk=payment.pk).refundable_amount == 5000 - 1234


def test_amounts_stay_on_one_line_in_the_list(chromium, live_server, django_user_model):
    for index in range(3):
        payment = make_payment(
            amount=12345,
            currency="KWD",
            customer_name=f"Maria-Alexandra Konstantinopoulou-Vasquez {index}",
            customer_email=f"maria.alexandra.konstantinopoulou.{index}@example.com",
            created_at="2024-01-15T10:30:00Z",
            completed_at="2024-01-15T10:31:00Z",
        )
        make_refund(payment, amount=1000)
    django_user_model.objects.create_superuser("root", password="root-pw")

    with chromium() as page:
        page.set_viewport_size({"width": 1280, "height": 800})
        page.goto(f"{live_server.url}/admin/login/?next=/admin/django_ledgepay/payment/")
        page.fill("#id_username", "root")
        page.fill("#id_password", "root-pw")
        page.click("input[type=submit]")
        page.wait_for_selector("#result_list")
        # Text laid out on several lines has a box per line.
        lines = page.eval_on_selector_all(
            "td.field-amount_display, td.field-refunded_display",
            """cells => cells.map(cell => {
                const walker = document.createTreeWalker(cell, NodeFilter.SHOW_TEXT);
                const range = document.createRange();
                range.selectNodeContents(walker.nextNode());
                return [cell.textContent, range.getClientRects().length];
            })""",
        )

    assert sorted(text for text, _ in lines) == ["1.000 KWD"] * 3 + ["12.345 KWD"] * 3
    assert {count for _, count in lines} == {1}, lines


# The dashboard and the payments list: layout, themes and the documentation's screenshots.
# Each screenshot is saved in LEDGEPAY_SCREENSHOTS (a directory; LEDGEPAY_SCREENSHOTS=docs
# retakes the documentation's), or in the test's temporary directory.


@pytest.fixture
def screenshots(tmp_path: Path) -> Path:
    directory = Path(os.environ.get("LEDGEPAY_SCREENSHOTS") or tmp_path)
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def log_in(page: Any, live_server: Any, path: str) -> None:
    page.goto(f"{live_server.url}/admin/login/?next={path}")
    page.fill("#id_username", "root")
    page.fill("#id_password", "root-pw")
    page.click("input[type=submit]")
    page.wait_for_url(f"**{path}")


def shop_month() -> None:
    """Four weeks of a small shop: payments in EUR, USD and JPY, some refunded, a few
    failed or canceled, two still pending; a failed and an unprocessed webhook event, an
    undelivered transition and a reconciliation that found drift."""
    rng = random.Random(13)
    now = timezone.now()
    names = ["Ann Lee", "Jean Dupont", "Maria Konstantinopoulou", "Li Wei", "Sam Okafor"]
    first = None
    for index in range(160):
        currency = ("EUR", "EUR", "EUR", "USD", "JPY")[index % 5]
        roll = rng.random()
        status = (
            Payment.Status.SUCCEEDED
            if roll < 0.82
            else Payment.Status.FAILED
            if roll < 0.92
            else Payment.Status.CANCELED
        )
        created = now - datetime.timedelta(days=rng.randrange(28), hours=rng.randrange(12))
        payment = make_payment(
            amount=rng.randrange(900, 24000),
            currency=currency,
            status=status,
            customer_name=names[index % len(names)],
            customer_email=f"{names[index % len(names)].split()[0].lower()}@example.com",
            created_at=created,
            completed_at=created + datetime.timedelta(seconds=40),
        )
        first = first or payment
        if status == Payment.Status.SUCCEEDED and index % 6 == 0:
            make_refund(
                payment,
                amount=max(1, payment.amount // 2),
                created_at=created + datetime.timedelta(days=1),
            )
    for _ in range(2):
        make_payment(status=Payment.Status.PENDING, created_at=now)
    WebhookEvent.objects.create(
        event_type="payment.succeeded",
        object_id="pay_lost",
        payload={},
        body_sha256="f" * 64,
        status=WebhookEvent.Status.FAILED,
        error="LedgePay could not be reached",
    )
    WebhookEvent.objects.create(
        event_type="refund.succeeded",
        object_id="re_waiting",
        payload={},
        body_sha256="e" * 64,
        status=WebhookEvent.Status.RECEIVED,
    )
    assert first is not None
    Transition.objects.create(
        signal=Transition.Signal.PAYMENT_SUCCEEDED,
        payment=first,
        source=Transition.Source.WEBHOOK,
        attempts=2,
        error="shop.receivers.mark_paid: OperationalError",
    )
    Reconciliation.objects.create(
        started_at=now - datetime.timedelta(hours=3),
        finished_at=now - datetime.timedelta(hours=3),
        since=now - datetime.timedelta(days=30),
        until=now - datetime.timedelta(hours=3),
        outcome=Reconciliation.Outcome.DRIFT,
        checked=162,
        drift=[
            {
                "kind": "status",
                "payment": first.ledgepay_id,
                "detail": "pending here, succeeded at LedgePay",
            },
            {"kind": "missing", "payment": "pay_7f3a9e01c2d4b5a6", "detail": "not mirrored"},
        ],
    )


def assert_stays_on_the_page(requests: list[str], live_server: Any) -> None:
    """Every request the page made went to the live server: no CDN, no font, no script."""
    assert requests
    assert [url for url in requests if not url.startswith(live_server.url)] == []


def test_dashboard_in_light_and_dark_theme(chromium, live_server, django_user_model, screenshots):
    shop_month()
    django_user_model.objects.create_superuser("root", password="root-pw")
    path = "/admin/django_ledgepay/payment/dashboard/"
    themes = {}

    with chromium() as page:
        requests: list[str] = []
        page.on("request", lambda request: requests.append(request.url))
        page.set_viewport_size({"width": 1280, "height": 900})
        log_in(page, live_server, "/admin/django_ledgepay/payment/")
        page.click("a.ledgepay-dashboardlink")
        page.wait_for_url(f"**{path}")
        page.wait_for_selector("#currency-EUR svg rect")
        for theme in ("light", "dark"):
            # The admin's theme follows the system's preference: no reload needed.
            page.emulate_media(color_scheme=theme)
            themes[theme] = page.evaluate(
                """() => {
                    const style = (selector, property) =>
                        getComputedStyle(document.querySelector(selector))[property];
                    const chart = document.querySelector('#currency-EUR .ledgepay-money svg');
                    const box = chart.getBoundingClientRect();
                    return {
                        body: style('body', 'backgroundColor'),
                        text: style('#currency-EUR .ledgepay-volume', 'color'),
                        volume: style('#currency-EUR rect.ledgepay-bar-volume', 'fill'),
                        refunded: style('#currency-EUR rect.ledgepay-bar-refunded', 'fill'),
                        failed: style('#currency-EUR rect.ledgepay-bar-failed', 'fill'),
                        chart: [box.width, box.height],
                        bars: chart.querySelectorAll('rect').length,
                        currencies: [...document.querySelectorAll('.ledgepay-currency h2')]
                            .map(h => h.textContent),
                        health: document.querySelector('.ledgepay-health').innerText,
                        drift: document.querySelector('.ledgepay-drift').innerText,
                        overflow: document.documentElement.scrollWidth > innerWidth,
                    };
                }"""
            )
            page.screenshot(path=str(screenshots / f"dashboard-{theme}.png"), full_page=True)
        page.click("a.ledgepay-drift-payments")
        page.wait_for_selector("#result_list")
        drift_rows = page.locator("#result_list tbody tr").count()

    light, dark = themes["light"], themes["dark"]
    # The admin's own colours, which its dark theme redefines (base.css, dark_mode.css).
    assert light["body"] == "rgb(255, 255, 255)"
    assert dark["body"] == "rgb(18, 18, 18)"
    assert light["volume"] == "rgb(65, 120, 147)"  # --link-fg
    assert dark["volume"] == "rgb(129, 212, 250)"
    assert light["failed"] == "rgb(186, 33, 33)"  # --error-fg
    # Refunds in a colour of their own (admin.css), not failed payments' red.
    assert light["refunded"] == "rgb(126, 87, 168)"
    assert dark["refunded"] == "rgb(195, 165, 230)"
    assert light["text"] != dark["text"]
    for theme in (light, dark):
        assert theme["currencies"][0] == "EUR"  # The busiest first.
        assert sorted(theme["currencies"]) == ["EUR", "JPY", "USD"]
        assert theme["bars"] > 10
        assert theme["chart"][0] > 300 and theme["chart"][1] > 100
        assert "Failed events\t1" in theme["health"]
        assert "re_waiting" in theme["health"]
        assert "Undelivered transitions\t1" in theme["health"]
        assert "Show the 2 payments concerned" in theme["drift"]
        assert not theme["overflow"]
    assert drift_rows == 1  # The one of the two the mirror holds.
    assert_stays_on_the_page(requests, live_server)


def test_payment_list_and_page_at_1280_px(chromium, live_server, django_user_model, screenshots):
    rng = random.Random(1280)
    now = timezone.now()
    # The first payment's history as the app writes it: paid by a webhook, then refunded
    # by root from the admin.
    paid_at = now + datetime.timedelta(seconds=40)
    refunded_at = paid_at + datetime.timedelta(minutes=1)
    customers = [
        ("Maria-Alexandra Konstantinopoulou-Vasquez", "maria.konstantinopoulou@example.com"),
        ("Jean Dupont", "jean.dupont@example.fr"),
        ("", "shopper@example.com"),
        ("Li Wei", "li.wei@example.cn"),
    ]
    for index, (currency, amount) in enumerate(
        [("EUR", 12990), ("KWD", 12345), ("JPY", 2200), ("USD", 899), ("EUR", 4550)]
    ):
        name, email = customers[index % len(customers)]
        created = now - datetime.timedelta(hours=index * 7)
        payment = make_payment(
            ledgepay_id=ledgepay_id("pay", rng),
            amount=amount,
            currency=currency,
            customer_name=name,
            customer_email=email,
            status=Payment.Status.PENDING if index == 4 else Payment.Status.SUCCEEDED,
            created_at=created,
            completed_at=None if index == 4 else created + datetime.timedelta(seconds=40),
        )
        if index == 0:
            refunded = payment
            refund = make_refund(
                payment,
                ledgepay_id="re_d22d8d57cacdd2fc",
                amount=2500,
                created_at=refunded_at,
            )
    root = django_user_model.objects.create_superuser("root", password="root-pw")
    event = WebhookEvent.objects.create(
        event_type="payment.succeeded",
        object_id=refunded.ledgepay_id,
        payload={"event": "payment.succeeded", "data": {"id": refunded.ledgepay_id}},
        body_sha256="0" * 64,
        status=WebhookEvent.Status.PROCESSED,
    )
    RefundRequest.objects.create(
        payment=refunded,
        amount=2500,
        reason="customer_request",
        idempotency_key="admin-refund-1",
        source=Transition.Source.ADMIN,
        actor=root,
        outcome=RefundRequest.Outcome.MADE,
        refund=refund,
        created_at=refunded_at,
        resolved_at=refunded_at,
    )
    for signal, source, at, of in [
        ("payment_succeeded", Transition.Source.WEBHOOK, paid_at, None),
        ("refund_created", Transition.Source.ADMIN, refunded_at, refund),
    ]:
        Transition.objects.create(
            signal=signal,
            payment=refunded,
            refund=of,
            source=source,
            event=event if of is None else None,
            actor=root if source == Transition.Source.ADMIN else None,
            created_at=at,
            delivered_at=at,
        )

    with chromium() as page:
        page.set_viewport_size({"width": 1280, "height": 720})
        log_in(page, live_server, "/admin/django_ledgepay/payment/")
        page.wait_for_selector("#result_list")
        layout = page.evaluate(
            """() => {
                const results = document.querySelector('.results');
                const right = selector =>
                    document.querySelector(selector).getBoundingClientRect().right;
                return {
                    scroll: results.scrollWidth,
                    width: results.clientWidth,
                    results: results.getBoundingClientRect().right,
                    created: right('#result_list th.column-created_display'),
                    status: right('#result_list th.column-status_display'),
                    completed: document.querySelector('td.field-status_display .quiet')
                        .getBoundingClientRect().right,
                    viewport: innerWidth,
                };
            }"""
        )
        page.screenshot(path=str(screenshots / "admin-payments.png"))

        page.click(f"#result_list a:text-is('{refunded.ledgepay_id}')")
        page.wait_for_url(f"**/admin/django_ledgepay/payment/{refunded.pk}/change/")
        rows = page.eval_on_selector_all(
            "#refunds-group tbody tr",
            "rows => rows.map(row => [...row.cells].map(cell => cell.innerText.trim()))",
        )
        label = page.text_content(".field-refundable_display label") or ""
        asked, history = (
            page.eval_on_selector_all(
                f"#{group}-group tbody tr",
                "rows => rows.map(row => [...row.cells].map(cell => cell.innerText.trim()))",
            )
            for group in ("refund_requests", "transitions")
        )
        page.screenshot(path=str(screenshots / "admin-payment.png"), full_page=True)
        page.click("#refunds-group td.field-ledgepay_id a")
        page.wait_for_url(f"**/admin/django_ledgepay/refund/{refund.pk}/change/")
        page.goto(f"{live_server.url}/admin/django_ledgepay/refund/")
        refunds_layout = page.evaluate(
            """() => {
                const results = document.querySelector('.results');
                return [results.scrollWidth, results.clientWidth];
            }"""
        )

    # Nothing behind a horizontal scroll: the created date and, under each final status,
    # when it was reached, are on screen.
    assert layout["viewport"] == 1280
    assert layout["scroll"] <= layout["width"], layout
    assert layout["created"] <= layout["results"] <= layout["viewport"], layout
    assert layout["completed"] <= layout["status"] <= layout["results"], layout
    scroll, width = refunds_layout
    assert scroll <= width  # The refunds list too.
    # One line per refund, its fields only: no name of the refund above it; the payment
    # page says "Left to refund", as the Refund page does.
    assert len(rows) == 1
    assert rows[0][:2] == [refund.ledgepay_id, "25.00 EUR"]
    assert label == "Left to refund:"
    # Who asked for the refund, and the payment's history in order with who did what: one
    # line each, their fields only, as for the refunds.
    assert [row[1:] for row in asked] == [
        ["25.00 EUR", "Customer request", "root", "Admin", "Made", str(refund)]
    ]
    assert [row[1:] for row in history] == [
        ["Payment Succeeded", "-", "Webhook", "payment.succeeded", "-", "delivered"],
        ["Refund Created", str(refund), "Admin", "-", "root", "delivered"],
    ]


def test_refunds_transitions_and_events_lists_at_1280_px(chromium, live_server, django_user_model):
    """With ids as long as LedgePay's, each list shows every column within 1280 px beside
    both sidebars: the refunds' created date, the transitions' delivery (and next attempt),
    the events' processed time and error."""
    rng = random.Random(1281)
    now = timezone.now()
    clerk = django_user_model.objects.create_user(
        "maria.konstantinopoulou@example.com", is_staff=True
    )
    django_user_model.objects.create_superuser("root", password="root-pw")
    error = (
        "LedgePay could not be reached: HTTPSConnectionPool(host='api.ledgepay.com', "
        "port=443): Read timed out. (read timeout=10)"
    )
    ids = []
    for index, (currency, amount) in enumerate(
        [("EUR", 1299000), ("KWD", 12345), ("JPY", 220000), ("USD", 89900)]
    ):
        created = now - datetime.timedelta(hours=index * 5)
        payment = make_payment(
            ledgepay_id=ledgepay_id("pay", rng),
            amount=amount,
            currency=currency,
            created_at=created,
            completed_at=created + datetime.timedelta(seconds=40),
        )
        refund = make_refund(
            payment,
            ledgepay_id=ledgepay_id("re", rng),
            amount=amount - 1,
            reason=("customer_request", "fraudulent", "duplicate", "other")[index],
            status=(Refund.Status.SUCCEEDED, Refund.Status.PENDING)[index % 2],
            created_at=created + datetime.timedelta(hours=1),
        )
        ids += [payment.ledgepay_id, refund.ledgepay_id]
        failed = index % 2 == 1
        event = WebhookEvent.objects.create(
            event_type="refund.succeeded" if index % 3 else "payment.canceled",
            object_id=refund.ledgepay_id,
            payload={},
            body_sha256=f"{index:064x}",
            status=WebhookEvent.Status.FAILED if failed else WebhookEvent.Status.PROCESSED,
            attempts=3 if failed else 1,
            processed_at=None if failed else created + datetime.timedelta(hours=1),
            error=error if failed else "",
        )
        Transition.objects.create(
            signal=Transition.Signal.REFUND_SUCCEEDED,
            payment=payment,
            refund=refund,
            source=Transition.Source.API if failed else Transition.Source.ADMIN,
            event=event,
            actor=None if failed else clerk,
            created_at=created,
            attempts=index + 3,
            next_attempt_at=now + datetime.timedelta(minutes=5) if index < 3 else None,
            error="shop.receivers.mark_refunded: OperationalError",
        )
    lists = {
        "refund": ("created_display",),
        "transition": ("delivery",),
        "webhookevent": ("status_display", "error_excerpt"),
    }
    layouts = {}

    with chromium() as page:
        page.set_viewport_size({"width": 1280, "height": 720})
        log_in(page, live_server, "/admin/django_ledgepay/payment/")
        for model, columns in lists.items():
            page.goto(f"{live_server.url}/admin/django_ledgepay/{model}/")
            page.wait_for_selector("#result_list")
            layouts[model] = page.evaluate(
                """columns => {
                    const results = document.querySelector('.results');
                    const right = element => element.getBoundingClientRect().right;
                    const rights = selector =>
                        [...document.querySelectorAll(selector)].map(right);
                    return {
                        viewport: innerWidth,
                        scroll: results.scrollWidth,
                        width: results.clientWidth,
                        results: right(results),
                        text: document.querySelector('#result_list').innerText,
                        headers: columns.map(c => right(
                            document.querySelector(`#result_list th.column-${c}`))),
                        cells: columns.flatMap(c => rights(`#result_list td.field-${c}`)),
                        notes: columns.flatMap(c =>
                            [...document.querySelectorAll(`#result_list td.field-${c} .quiet`)]
                                .map(note => [note.innerText, right(note)])),
                    };
                }""",
                list(columns),
            )

    for model, layout in layouts.items():
        # Nothing behind a horizontal scroll, and each column named above on screen.
        assert layout["viewport"] == 1280
        assert layout["scroll"] <= layout["width"], (model, layout)
        assert layout["results"] <= layout["viewport"], (model, layout)
        assert layout["cells"], (model, layout)
        for edge in layout["headers"] + layout["cells"]:
            assert edge <= layout["results"], (model, layout)
        for _, edge in layout["notes"]:
            assert edge <= layout["results"], (model, layout)
    # The ids shown whole, as long as LedgePay's.
    assert {len(id_) for id_ in ids} == {19, 20}
    refunds, transitions, events = (layouts[model]["text"] for model in lists)
    assert all(id_ in refunds for id_ in ids)
    assert all(id_ in transitions for id_ in ids[::2])
    assert all(id_ in events for id_ in ids[1::2])
    # The events' processed time, under the status of each event processed; the next
    # attempt of each transition that is failing, under its delivery.
    processed = [text for text, _ in layouts["webhookevent"]["notes"]]
    assert len(processed) == 2 and all(re.search(r"\d:\d\d", text) for text in processed)
    next_attempts = [text for text, _ in layouts["transition"]["notes"]]
    assert len(next_attempts) == 3
    assert all(text.startswith("next attempt") for text in next_attempts)
    assert "LedgePay could not be reached" in events
