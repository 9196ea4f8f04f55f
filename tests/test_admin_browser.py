"""The refund flow in a real browser: Debian's Chromium, driven by Playwright.

Skipped when Chromium or Playwright is missing, unless ``LEDGEPAY_REQUIRE_BROWSER=1`` (as in
CI), when that is a failure. Playwright is never asked to download a browser.
"""

from __future__ import annotations

import pytest
import responses
from responses import matchers

from django.contrib.auth.models import Permission

from django_ledgepay.models import Payment
from tests.conftest import API
from tests.factories import make_payment, make_refund, refund_data

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


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
