from __future__ import annotations

import datetime
import json
import re
from typing import Any

import pytest
import requests
import responses
from responses import matchers

from django.contrib import admin as django_admin
from django.contrib.auth.models import Permission
from django.contrib.messages import get_messages
from django.core import checks
from django.db import OperationalError, connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from django.utils.formats import date_format

from django_ledgepay import admin as ledgepay_admin
from django_ledgepay import services, webhooks
from django_ledgepay.exceptions import RefundError
from django_ledgepay.models import Payment, Refund, Transition, WebhookEvent
from tests.conftest import API, staff_client
from tests.factories import make_payment, make_refund, payment_data, refund_data

pytestmark = pytest.mark.django_db

API_KEY = "sk_test_tests_secret_key_123"
CHANGELIST = "/admin/django_ledgepay/payment/"
VIEW_PERMS = ("view_payment", "view_refund", "view_webhookevent")


@pytest.fixture
def viewer(django_user_model):
    """Staff who may look at everything but not refund, sync or process."""
    return staff_client(django_user_model, *VIEW_PERMS, username="viewer")


@pytest.fixture
def refunder(django_user_model):
    """Staff who may look and refund."""
    return staff_client(django_user_model, *VIEW_PERMS, "refund_payment", username="refunder")


def change_url(obj: Any) -> str:
    return reverse(f"admin:django_ledgepay_{obj._meta.model_name}_change", args=(obj.pk,))


def refund_url(payment: Payment) -> str:
    return reverse("admin:django_ledgepay_payment_refund", args=(payment.pk,))


def messages_of(response: Any) -> list[tuple[str, str]]:
    return [(m.level_tag, str(m)) for m in get_messages(response.wsgi_request)]


def text_of(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", html)).strip()


def cells(content: str, column: str) -> list[str]:
    """The text of each changelist cell of ``column``."""
    found = re.findall(rf'<td class="field-{column}[^"]*">(.*?)</td>', content, re.DOTALL)
    return [text_of(cell) for cell in found]


def readonly_value(content: str, field: str) -> str:
    """The text a change page shows for the read-only ``field``."""
    match = re.search(rf'field-{field}\b.*?<div class="readonly">(.*?)</div>', content, re.DOTALL)
    assert match, field
    return text_of(match.group(1))


def summary_rows(content: str) -> dict[str, str]:
    """The refund page's summary table, header to value."""
    table = content.split('class="ledgepay-refund-summary"', 1)[1].split("</table>", 1)[0]
    rows = re.findall(r'<th scope="row">(.*?)</th><td>(.*?)</td>', table, re.DOTALL)
    return {text_of(name): text_of(value) for name, value in rows}


def add_refund_response(api: Any, payment: Payment, amount: int, **extra: Any) -> Any:
    return api.add(
        responses.POST,
        f"{API}/refunds",
        json=refund_data(payment.ledgepay_id, amount=amount, currency=payment.currency, **extra),
    )


def refund_form(payment: Payment, amount: str, **extra: Any) -> dict[str, Any]:
    return {
        "amount": amount,
        "reason": "customer_request",
        "refunded_before": payment.amount_refunded,
        **extra,
    }


def action_post(action: str, *objects: Any, **extra: Any) -> dict[str, Any]:
    return {"action": action, "_selected_action": [obj.pk for obj in objects], **extra}


def test_admin_checks_pass():
    assert [e for e in checks.run_checks(tags=["admin"]) if (e.id or "").startswith("admin")] == []


# The payments list


def test_changelist_columns_in_major_units(admin_client):
    eur = make_payment(amount=5000, currency="EUR", customer_name="Ann Lee")
    make_refund(eur, amount=1000)
    make_refund(eur, amount=700, status=Refund.Status.FAILED)  # a failed refund is not counted
    make_payment(amount=500, currency="JPY")
    make_payment(amount=12345, currency="KWD", status=Payment.Status.PENDING)

    response = admin_client.get(CHANGELIST)

    content = response.content.decode()
    assert response.status_code == 200
    assert eur.ledgepay_id in content
    assert "50.00 EUR" in content
    assert "10.00 EUR" in content
    assert "17.00 EUR" not in content
    assert "500 JPY" in content
    assert "12.345 KWD" in content
    assert "Ann Lee &lt;customer@example.com&gt;" in content
    make_payment(customer_name="", customer_email="solo@example.org")
    assert '<td class="field-customer">solo@example.org</td>' in (
        admin_client.get(CHANGELIST).content.decode()
    )
    for column in ("status_display", "created_display", "refunded_display"):
        assert f"column-{column}" in content


def test_list_dates_are_short_and_sort(admin_client):
    make_payment(ledgepay_id="older", created_at="2024-01-15T10:30:00Z", completed_at=None)
    make_payment(ledgepay_id="newer", created_at="2024-03-01T08:05:00Z")

    content = admin_client.get(CHANGELIST, {"o": "6"}).content.decode()  # By created, up.

    assert cells(content, "created_display") == ["01/15/2024 10:30 a.m.", "03/01/2024 8:05 a.m."]
    # The status column says when a final status was reached, if LedgePay said so.
    assert cells(content, "status_display")[0] == "Succeeded"


def test_nothing_refunded_shows_zero(admin_client):
    payment = make_payment(amount=12345, currency="KWD")

    page = admin_client.get(change_url(payment)).content.decode()
    listing = admin_client.get(CHANGELIST).content.decode()

    assert readonly_value(page, "refunded_display") == "0.000 KWD"
    assert cells(listing, "refunded_display") == ["0.000 KWD"]


def test_amount_columns_do_not_wrap(admin_client):
    payment = make_payment(amount=12345, currency="KWD")
    make_refund(payment, amount=1000)

    content = admin_client.get(CHANGELIST).content.decode()

    # The admin's own "nowrap" class, as on its date columns.
    assert '<td class="field-amount_display"><span class="nowrap">12.345 KWD</span>' in content
    assert '<td class="field-refunded_display"><span class="nowrap">1.000 KWD</span>' in content
    assert 'class="sortable column-amount_display' in content
    assert 'class="sortable column-refunded_display' in content


@pytest.mark.parametrize(
    ("order", "expected"),
    [
        ("2", ["pay_small", "pay_mid", "pay_big"]),
        ("-2", ["pay_big", "pay_mid", "pay_small"]),
        ("3", ["pay_big", "pay_mid", "pay_small"]),
        ("-3", ["pay_small", "pay_mid", "pay_big"]),
    ],
)
def test_amount_columns_sort(admin_client, order, expected):
    small = make_payment(ledgepay_id="pay_small", amount=1000)
    make_payment(ledgepay_id="pay_big", amount=9000)
    mid = make_payment(ledgepay_id="pay_mid", amount=5000)
    make_refund(small, amount=900)
    make_refund(mid, amount=100)

    response = admin_client.get(CHANGELIST, {"o": order})

    assert [p.ledgepay_id for p in response.context["cl"].result_list] == expected


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("status__exact=failed", {"failed"}),
        ("currency=JPY", {"jpy"}),
        (
            "created_at__gte=2024-03-01+00:00%2B00:00&created_at__lt=2024-04-01+00:00%2B00:00",
            {"march"},
        ),
    ],
)
def test_changelist_filters(admin_client, query, expected):
    make_payment(ledgepay_id="failed", status="failed", created_at="2024-01-02T00:00:00Z")
    make_payment(ledgepay_id="jpy", currency="JPY", amount=500, created_at="2024-02-02T00:00Z")
    make_payment(ledgepay_id="march", created_at="2024-03-15T12:00:00Z")

    response = admin_client.get(f"{CHANGELIST}?{query}")

    shown = {payment.ledgepay_id for payment in response.context["cl"].result_list}
    assert shown == expected


def test_changelist_offers_the_filters(admin_client):
    make_payment(currency="JPY", amount=500)

    response = admin_client.get(CHANGELIST)

    titles = {str(spec.title) for spec in response.context["cl"].filter_specs}
    assert titles == {"status", "currency", "created at", "refund requests"}


@pytest.mark.parametrize("term", ["pay_findme", "ann@example.org", "Ann Lee", "Blue teapot"])
def test_changelist_search(admin_client, term):
    make_payment(
        ledgepay_id="pay_findme",
        customer_email="ann@example.org",
        customer_name="Ann Lee",
        description="Blue teapot",
    )
    make_payment(ledgepay_id="pay_other", customer_email="bob@example.org", customer_name="Bob")

    response = admin_client.get(CHANGELIST, {"q": term})

    assert [p.ledgepay_id for p in response.context["cl"].result_list] == ["pay_findme"]


def build_payments(count: int) -> None:
    for index in range(count):
        payment = make_payment(
            currency=("EUR", "JPY", "KWD")[index % 3], customer_name=f"Customer {index}"
        )
        make_refund(payment, amount=100)
        if index % 2:
            make_refund(payment, amount=50, status=Refund.Status.PENDING)


def changelist_queries(client: Client) -> int:
    with CaptureQueriesContext(connection) as queries:
        response = client.get(CHANGELIST)
    assert response.status_code == 200
    return len(queries)


def test_changelist_query_count_does_not_grow_with_rows(admin_client):
    build_payments(5)
    few = changelist_queries(admin_client)
    build_payments(195)
    many = changelist_queries(admin_client)

    assert few == many
    response = admin_client.get(CHANGELIST)
    rows = response.context["cl"].result_list
    assert len(rows) == 100  # list_per_page
    assert {row.amount_refunded for row in rows} == {100, 150}


def test_changelist_query_count_is_the_same_for_a_staff_member(refunder):
    build_payments(5)
    few = changelist_queries(refunder)
    build_payments(195)
    assert changelist_queries(refunder) == few


# Read-only mirror


def test_payment_cannot_be_added_changed_or_deleted(admin_client):
    payment = make_payment(description="Original")
    add = admin_client.get(f"{CHANGELIST}add/")
    change = admin_client.post(change_url(payment), {"description": "Edited", "amount": 1})
    delete = admin_client.post(f"{CHANGELIST}{payment.pk}/delete/", {"post": "yes"})
    page = admin_client.get(change_url(payment))

    assert add.status_code == 403
    assert change.status_code == 403
    assert delete.status_code == 403
    payment.refresh_from_db()
    assert (payment.description, payment.amount) == ("Original", 5000)
    assert page.status_code == 200
    assert not page.context["has_change_permission"]
    assert 'name="_save"' not in page.content.decode()
    assert "delete_selected" not in admin_client.get(CHANGELIST).content.decode()


def test_payment_page_shows_amounts_refunds_and_metadata(admin_client):
    payment = make_payment(amount=5000, metadata={"order_id": "12345", "note": "<b>x</b>"})
    refund = make_refund(payment, amount=1234, reason=Refund.Reason.DUPLICATE)

    response = admin_client.get(change_url(payment))

    content = response.content.decode()
    assert response.status_code == 200
    assert refund.ledgepay_id in content
    assert "12.34 EUR" in content  # refunded, and the refund in the inline
    assert "37.66 EUR" in content  # left to refund
    assert "&quot;order_id&quot;: &quot;12345&quot;" in content
    assert "&lt;b&gt;x&lt;/b&gt;" in content
    assert "<b>x</b>" not in content
    inline = response.context["inline_admin_formsets"][0]
    assert not inline.has_add_permission
    assert not inline.has_change_permission
    assert not inline.has_delete_permission


def test_viewer_sees_the_mirror(viewer):
    payment = make_payment()
    assert viewer.get(CHANGELIST).status_code == 200
    assert viewer.get(change_url(payment)).status_code == 200


def test_staff_without_view_permission_sees_nothing(django_user_model):
    client = staff_client(django_user_model)
    payment = make_payment()
    assert client.get(CHANGELIST).status_code == 403
    assert client.get(change_url(payment)).status_code == 403


# The "Refund" button


def test_refund_button_shown_with_permission(admin_client, refunder):
    payment = make_payment()
    for client in (admin_client, refunder):
        content = client.get(change_url(payment)).content.decode()
        assert f'href="{refund_url(payment)}"' in content


def test_refund_button_hidden_without_permission(viewer):
    payment = make_payment()
    response = viewer.get(change_url(payment))
    assert response.status_code == 200
    assert refund_url(payment) not in response.content.decode()
    assert "historylink" in response.content.decode()


@pytest.mark.parametrize("status", ["pending", "failed", "canceled"])
def test_refund_button_hidden_when_not_succeeded(admin_client, status):
    payment = make_payment(status=status)
    assert refund_url(payment) not in admin_client.get(change_url(payment)).content.decode()


def test_refund_button_hidden_when_refunded_in_full(admin_client):
    payment = make_payment(amount=5000)
    make_refund(payment, amount=5000)
    assert refund_url(payment) not in admin_client.get(change_url(payment)).content.decode()


# The refund page


def test_refund_url_name():
    payment = make_payment()
    assert refund_url(payment) == f"{CHANGELIST}{payment.pk}/refund/"


def test_refund_page_defaults_to_the_rest(refunder):
    payment = make_payment(amount=5000)
    make_refund(payment, amount=1000)

    response = refunder.get(refund_url(payment))

    content = response.content.decode()
    assert response.status_code == 200
    assert response.templates[0].name == "admin/django_ledgepay/payment/refund.html"
    assert 'name="amount" value="40.00"' in content
    assert 'name="refunded_before" value="1000"' in content
    assert 'name="csrfmiddlewaretoken"' in content
    assert 'class="breadcrumbs"' in content
    assert f'href="{change_url(payment)}"' in content  # breadcrumb back to the payment
    assert "Amount (EUR)" in content
    assert API_KEY not in content
    assert response.context["site_header"]  # admin_site.each_context


@pytest.mark.parametrize(
    ("amount", "currency", "initial"),
    [(5000, "EUR", "50.00"), (500, "JPY", "500"), (12345, "KWD", "12.345")],
)
def test_refund_page_default_uses_the_currency_exponent(refunder, amount, currency, initial):
    payment = make_payment(amount=amount, currency=currency)
    content = refunder.get(refund_url(payment)).content.decode()
    assert f'name="amount" value="{initial}"' in content


def test_refund_page_needs_the_permission(viewer, api):
    payment = make_payment()
    get = viewer.get(refund_url(payment))
    post = viewer.post(refund_url(payment), refund_form(payment, "10.00"))
    assert get.status_code == 403
    assert post.status_code == 403
    assert len(api.calls) == 0
    assert not payment.refunds.exists()


def test_refund_page_needs_the_view_permission_too(django_user_model, api):
    # The page shows the customer: refunding without seeing payments is not a thing.
    payment = make_payment(customer_email="ann@example.com")
    blind = staff_client(django_user_model, "refund_payment", username="blind")
    get = blind.get(refund_url(payment))
    post = blind.post(refund_url(payment), refund_form(payment, "10.00"))
    assert (get.status_code, post.status_code) == (403, 403)
    assert b"ann@example.com" not in get.content
    assert len(api.calls) == 0


def test_refund_page_needs_staff(client, django_user_model):
    payment = make_payment()
    user = django_user_model.objects.create_user("shopper", password="pw")
    user.user_permissions.set(Permission.objects.filter(codename="refund_payment"))
    client.force_login(user)
    response = client.get(refund_url(payment))
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")


def test_refund_page_unknown_payment_is_404(admin_client):
    assert admin_client.get(f"{CHANGELIST}987654/refund/").status_code == 404
    assert admin_client.get(f"{CHANGELIST}not-a-pk/refund/").status_code == 404


def test_refund_page_is_csrf_protected(django_user_model, api):
    payment = make_payment()
    user = django_user_model.objects.create_superuser("root", password="pw")
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    response = client.post(refund_url(payment), refund_form(payment, "10.00"))
    assert response.status_code == 403
    assert len(api.calls) == 0


def test_partial_refund(refunder, api):
    payment = make_payment(amount=5000)
    call = api.add(
        responses.POST,
        f"{API}/refunds",
        json=refund_data(payment.ledgepay_id, id="re_partial", amount=1234, reason="duplicate"),
        match=[
            matchers.json_params_matcher(
                {"payment_id": payment.ledgepay_id, "amount": 1234, "reason": "duplicate"}
            )
        ],
    )

    response = refunder.post(
        refund_url(payment), refund_form(payment, "12.34", reason="duplicate")
    )

    assert response.status_code == 302
    assert response["Location"] == change_url(payment)
    assert call.call_count == 1
    refund = payment.refunds.get()
    assert (refund.ledgepay_id, refund.amount, refund.reason) == ("re_partial", 1234, "duplicate")
    assert messages_of(response) == [
        ("success", f"Refunded 12.34 EUR of {payment.ledgepay_id} (refund re_partial, pending).")
    ]
    page = refunder.get(response["Location"]).content.decode()
    assert "re_partial" in page


def test_refund_of_the_default_rest(admin_client, api):
    payment = make_payment(amount=5000)
    make_refund(payment, amount=1000)
    call = add_refund_response(api, payment, 4000)

    response = admin_client.post(refund_url(payment), refund_form(payment, "40.00"))

    assert response.status_code == 302
    assert json.loads(call.calls[0].request.body)["amount"] == 4000
    assert payment.refundable_amount == 0


@pytest.mark.parametrize(
    ("currency", "amount", "typed", "minor"),
    [
        ("JPY", 5000, "1500", 1500),
        ("KWD", 12345, "1.234", 1234),
        ("EUR", 5000, "0.01", 1),
        ("EUR", 5000, " 12.5 ", 1250),
        ("EUR", 5000, "12.", 1200),
        ("EUR", 5000, ".5", 50),
        ("EUR", 5000, "1.000", 100),
    ],
)
def test_refund_converts_with_the_currency_exponent(
    admin_client, api, currency, amount, typed, minor
):
    payment = make_payment(amount=amount, currency=currency)
    call = add_refund_response(api, payment, minor)

    response = admin_client.post(refund_url(payment), refund_form(payment, typed))

    assert response.status_code == 302
    assert json.loads(call.calls[0].request.body)["amount"] == minor


DIGITS = "Enter an amount in digits, such as 12.34."


@pytest.mark.parametrize(
    ("currency", "typed", "error"),
    [
        ("EUR", "50.01", "That is more than what is left to refund (50.00 EUR)."),
        ("EUR", "0", "Enter an amount greater than zero."),
        ("EUR", "0.00", "Enter an amount greater than zero."),
        ("EUR", "-5", "Enter an amount greater than zero."),
        ("EUR", "12.345", "EUR amounts have at most 2 decimal places."),
        ("JPY", "1.5", "JPY amounts are whole numbers: no decimals."),
        ("KWD", "1.2345", "KWD amounts have at most 3 decimal places."),
        (
            "EUR",
            "99999999999999999999999",
            "That is more than what is left to refund (50.00 EUR).",
        ),
        ("EUR", "0.000000000000000000001", "EUR amounts have at most 2 decimal places."),
        ("EUR", "1e999999999", DIGITS),
        ("EUR", "1e-999999999", DIGITS),
        ("EUR", "abc", DIGITS),
        ("EUR", "12,34", DIGITS),
        ("EUR", "NaN", DIGITS),
        ("EUR", "Infinity", DIGITS),
        ("JPY", "1_000", "Enter an amount in digits, such as 1234."),
        ("EUR", "\uff11\uff12.\uff13\uff14", DIGITS),  # Full-width digits.
        ("EUR", "\u0967\u0968.\u0969\u096a", DIGITS),  # Devanagari digits.
        ("EUR", "1.2.3", DIGITS),
        ("EUR", "", "This field is required."),
    ],
)
def test_refund_form_errors_make_no_call(refunder, api, currency, typed, error):
    payment = make_payment(amount=5000, currency=currency)

    response = refunder.post(refund_url(payment), refund_form(payment, typed))

    assert response.status_code == 200
    assert response.context["form"].errors["amount"] == [error]
    assert "errornote" in response.content.decode()
    assert "Please correct the error below." in response.content.decode()
    assert len(api.calls) == 0
    assert not payment.refunds.exists()


@pytest.mark.parametrize(
    ("currency", "amount", "help_text"),
    [
        ("JPY", 5000, "In JPY, in whole units (no decimals); at most 5000 JPY."),
        ("EUR", 5000, "In EUR, with at most 2 decimal places; at most 50.00 EUR."),
        ("KWD", 12345, "In KWD, with at most 3 decimal places; at most 12.345 KWD."),
    ],
)
def test_refund_page_help_text_fits_the_currency(refunder, currency, amount, help_text):
    payment = make_payment(amount=amount, currency=currency)
    content = refunder.get(refund_url(payment)).content.decode()
    assert f'<div class="help" id="id_amount_helptext"><div>{help_text}</div></div>' in content


def test_refund_page_reasons_have_plain_labels(refunder):
    content = refunder.get(refund_url(make_payment())).content.decode()
    assert '<option value="customer_request" selected>Customer request</option>' in content
    assert '<option value="fraudulent">Fraudulent</option>' in content


def test_refund_form_rejects_an_unknown_reason(refunder, api):
    payment = make_payment()
    response = refunder.post(refund_url(payment), refund_form(payment, "1.00", reason="greed"))
    assert response.status_code == 200
    assert "reason" in response.context["form"].errors
    assert len(api.calls) == 0


def test_refund_form_without_its_hidden_state_makes_no_call(refunder, api):
    payment = make_payment()
    data = refund_form(payment, "1.00")
    del data["refunded_before"]
    response = refunder.post(refund_url(payment), data)
    assert response.status_code == 200
    assert "load the refund page again" in response.content.decode()
    assert len(api.calls) == 0


@pytest.mark.parametrize(
    ("status", "reason"),
    [("pending", "it is still pending"), ("failed", "it failed"), ("canceled", "it was canceled")],
)
def test_refund_page_for_an_unrefundable_payment(refunder, api, status, reason):
    payment = make_payment(status=status)

    get = refunder.get(refund_url(payment))
    post = refunder.post(refund_url(payment), refund_form(payment, "10.00"))

    content = get.content.decode()
    assert get.status_code == 200
    assert f"This payment cannot be refunded: {reason}." in content
    assert 'name="_refund"' not in content
    assert "Left to refund" not in content  # "0.00 EUR" would say nothing of why
    assert summary_rows(content)["Refunded"] == "0.00 EUR"
    assert post.status_code == 200
    assert post.context["form"].non_field_errors() == [
        f"This payment cannot be refunded: {reason}."
    ]
    assert "Please correct" not in post.content.decode()
    assert len(api.calls) == 0


def test_a_status_this_version_does_not_know_is_not_refundable(refunder, api):
    payment = make_payment(status="disputed")
    content = refunder.get(refund_url(payment)).content.decode()
    assert "This payment cannot be refunded: it has not succeeded." in content
    assert 'name="_refund"' not in content


BACK_LINK = '<a href="{url}" class="closelink ledgepay-back">Back to the payment</a>'


@pytest.mark.parametrize("refunded", [0, 1000, 5000])
@pytest.mark.parametrize("status", ["succeeded", "pending", "failed", "canceled"])
def test_refund_page_links_back_to_the_payment(refunder, status, refunded):
    payment = make_payment(status=status, amount=5000)
    if refunded:
        make_refund(payment, amount=refunded)

    content = refunder.get(refund_url(payment)).content.decode()

    assert BACK_LINK.format(url=change_url(payment)) in content
    assert ("Left to refund" in content) == (status == "succeeded")


def test_refund_page_of_a_payment_refunded_in_full(refunder):
    payment = make_payment(amount=5000)
    make_refund(payment, amount=5000)

    content = refunder.get(refund_url(payment)).content.decode()

    assert summary_rows(content)["Left to refund"] == "0.00 EUR"
    assert "This payment cannot be refunded: it is already refunded in full." in content


@pytest.mark.parametrize(
    ("name", "email", "shown"),
    [
        ("", "eur1@example.com", "eur1@example.com"),
        ("Ann Lee", "", "Ann Lee"),
        ("Ann Lee", "ann@example.com", "Ann Lee <ann@example.com>"),
        ("", "", "-"),
    ],
)
def test_refund_page_shows_the_customer_as_the_list_does(refunder, name, email, shown):
    payment = make_payment(customer_name=name, customer_email=email)
    content = refunder.get(refund_url(payment)).content.decode()
    assert summary_rows(content)["Customer"] == shown.replace("<", "&lt;").replace(">", "&gt;")


def test_double_submit_of_the_rest_refunds_once(refunder, api):
    payment = make_payment(amount=5000)
    call = add_refund_response(api, payment, 5000)
    data = refund_form(payment, "50.00")

    first = refunder.post(refund_url(payment), data)
    second = refunder.post(refund_url(payment), data)

    assert first.status_code == 302
    assert second.status_code == 200
    assert second.context["form"].non_field_errors() == [
        "This payment cannot be refunded: it is already refunded in full."
    ]
    assert call.call_count == 1
    assert payment.refunds.count() == 1


def test_double_submit_of_a_part_refunds_once(refunder, api):
    payment = make_payment(amount=5000)
    call = add_refund_response(api, payment, 1000)
    data = refund_form(payment, "10.00")  # fits twice in what is left

    first = refunder.post(refund_url(payment), data)
    second = refunder.post(refund_url(payment), data)

    assert first.status_code == 302
    assert second.status_code == 200
    assert "changed since this page was loaded" in second.content.decode()
    assert "0.00 EUR refunded then, 10.00 EUR now" in second.content.decode()
    assert call.call_count == 1
    assert payment.refunds.count() == 1


def test_refund_made_elsewhere_meanwhile_stops_the_form(refunder, api):
    payment = make_payment(amount=5000)
    page = refunder.get(refund_url(payment))
    refunded_before = page.context["form"]["refunded_before"].value()
    data = {"amount": "10.00", "reason": "other", "refunded_before": refunded_before}
    make_refund(payment, amount=1000)  # a webhook, say, between drawing and submitting

    response = refunder.post(refund_url(payment), data)

    content = response.content.decode()
    assert response.status_code == 200
    assert "changed since this page was loaded" in content
    assert len(api.calls) == 0
    # The page now shows the payment as it is, and submitting it again is deliberate.
    assert "<td>40.00 EUR</td>" in content
    assert 'name="refunded_before" value="1000"' in content
    call = add_refund_response(api, payment, 1000)
    again = {**data, "refunded_before": response.context["form"]["refunded_before"].value()}
    assert refunder.post(refund_url(payment), again).status_code == 302
    assert call.call_count == 1
    assert payment.amount_refunded == 2000


def test_refund_refused_by_the_service_is_a_form_error(refunder, api, monkeypatch):
    payment = make_payment()

    def refuse(*args, **kwargs):
        raise RefundError(f"Payment {payment.ledgepay_id} is already refunded in full.")

    monkeypatch.setattr(services, "refund_payment", refuse)
    response = refunder.post(refund_url(payment), refund_form(payment, "10.00"))

    assert response.status_code == 200
    assert response.context["form"].non_field_errors() == [
        f"Payment {payment.ledgepay_id} is already refunded in full."
    ]
    assert messages_of(response) == []


def test_refund_refused_by_ledgepay_shows_its_message(refunder, api):
    payment = make_payment()
    api.add(
        responses.POST,
        f"{API}/refunds",
        status=400,
        json={
            "error": {
                "type": "invalid_request_error",
                "message": f"Refunds are disabled for key {API_KEY}.",
            }
        },
    )

    response = refunder.post(refund_url(payment), refund_form(payment, "10.00"))

    content = response.content.decode()
    assert response.status_code == 200
    assert "LedgePay refused the refund: Refunds are disabled for key [redacted]." in content
    assert API_KEY not in content
    assert not payment.refunds.exists()


@pytest.mark.parametrize(
    ("status", "message"),
    [
        (401, "Invalid API key. (HTTP 401)"),
        (404, "No such payment. (HTTP 404)"),
    ],
)
def test_refund_refused_by_ledgepay_is_not_an_input_error(refunder, api, status, message):
    payment = make_payment()
    error = {"error": {"message": message.split(" (")[0]}}
    api.add(responses.POST, f"{API}/refunds", status=status, json=error)

    response = refunder.post(refund_url(payment), refund_form(payment, "10.00"))

    content = response.content.decode()
    assert response.context["form"].non_field_errors() == [
        f"LedgePay refused the refund: {message}"
    ]
    assert "Please correct" not in content
    assert "errornote" not in content


SAFE_AGAIN = "Submitting the same amount again is safe: it will not refund twice."


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (
            {"body": requests.ConnectionError("refused")},
            "Could not reach LedgePay for POST /refunds: ConnectionError.",
        ),
        ({"status": 500, "json": {"error": {"message": "Boom."}}}, "Boom. (HTTP 500)"),
        ({"status": 429, "json": {"error": {"message": "Slow down."}}}, "Slow down. (HTTP 429)"),
    ],
)
def test_refund_not_made_for_now_is_not_a_refusal(refunder, api, answer, error):
    payment = make_payment()
    api.add(responses.POST, f"{API}/refunds", **answer)

    response = refunder.post(refund_url(payment), refund_form(payment, "10.00"))

    content = response.content.decode()
    assert response.status_code == 200
    assert response.context["form"].non_field_errors() == [
        f"The refund could not be made now: {error} {SAFE_AGAIN}"
    ]
    assert "refused" not in content
    assert "Please correct" not in content
    assert 'name="amount" value="10.00"' in content  # ready to submit again
    assert not payment.refunds.exists()


def test_refund_page_shows_a_database_failure_instead_of_a_500(refunder, api, monkeypatch):
    # At PostgreSQL's stricter isolation levels a concurrent refund fails to serialize.
    def clash(*args: Any, **kwargs: Any) -> Any:
        raise OperationalError("could not serialize access due to concurrent update")

    monkeypatch.setattr(services, "refund_payment", clash)
    payment = make_payment()

    response = refunder.post(refund_url(payment), refund_form(payment, "10.00"))

    assert response.status_code == 200
    [error] = response.context["form"].non_field_errors()
    assert error.startswith("The database could not complete the refund")
    assert "could not serialize access" in error
    assert len(api.calls) == 0


def test_refund_action_reports_a_database_failure_per_payment(refunder, api, monkeypatch):
    def clash(*args: Any, **kwargs: Any) -> Any:
        raise OperationalError("database is locked")

    monkeypatch.setattr(services, "refund_payment", clash)
    payment = make_payment(ledgepay_id="pay_busy")

    response = refunder.post(
        CHANGELIST, action_post("refund_payments", payment, post="yes", reason="other")
    )

    assert response.status_code == 302
    [(level, text)] = messages_of(response)
    assert level == "error"
    assert text.startswith("Could not refund pay_busy: The database could not complete")


def test_refund_submitted_again_after_a_lost_answer_refunds_once(refunder, api):
    # What the message promises: the same amount sent again carries the same key, so
    # LedgePay answers with the refund it may have made instead of making another.
    payment = make_payment(amount=5000)
    api.add(responses.POST, f"{API}/refunds", body=requests.ConnectionError("reset"))
    data = refund_form(payment, "10.00")

    failed = refunder.post(refund_url(payment), data)
    api.replace(
        responses.POST,
        f"{API}/refunds",
        json=refund_data(payment.ledgepay_id, id="re_again", amount=1000),
    )
    again = {**data, "refunded_before": failed.context["form"]["refunded_before"].value()}
    succeeded = refunder.post(refund_url(payment), again)

    assert SAFE_AGAIN in failed.content.decode()
    assert succeeded.status_code == 302
    assert len({call.request.headers["Idempotency-Key"] for call in api.calls}) == 1
    assert list(payment.refunds.values_list("ledgepay_id", flat=True)) == ["re_again"]


# The refund_payments action


def test_refund_action_not_offered_without_permission(viewer, api):
    make_payment()
    response = viewer.get(CHANGELIST)
    assert "refund_payments" not in response.content.decode()
    assert "sync_payments" not in response.content.decode()


def test_refund_action_offered_with_permission(refunder, admin_client):
    make_payment()
    assert "refund_payments" in refunder.get(CHANGELIST).content.decode()
    assert "refund_payments" in admin_client.get(CHANGELIST).content.decode()
    assert "Refund selected payments in full" in admin_client.get(CHANGELIST).content.decode()


def test_refund_action_post_without_permission_does_nothing(viewer, api):
    payment = make_payment()
    for extra in ({}, {"post": "yes"}):
        response = viewer.post(CHANGELIST, action_post("refund_payments", payment, **extra))
        assert response.status_code in (200, 302)
    assert len(api.calls) == 0
    assert not payment.refunds.exists()


@pytest.fixture
def selection():
    """A mix: two payments with something left, one pending, one refunded in full."""
    full = make_payment(ledgepay_id="pay_full", amount=5000, created_at="2024-01-04T00:00Z")
    part = make_payment(ledgepay_id="pay_part", amount=5000, created_at="2024-01-03T00:00Z")
    make_refund(part, amount=2000)
    pending = make_payment(
        ledgepay_id="pay_pending", status="pending", created_at="2024-01-02T00:00Z"
    )
    done = make_payment(ledgepay_id="pay_done", amount=5000, created_at="2024-01-01T00:00Z")
    make_refund(done, amount=5000)
    return full, part, pending, done


def test_refund_action_asks_first(refunder, api, selection):
    response = refunder.post(CHANGELIST, action_post("refund_payments", *selection, index=0))

    content = response.content.decode()
    assert response.status_code == 200
    assert [(p.ledgepay_id, amount) for p, amount in response.context["eligible"]] == [
        ("pay_full", "50.00 EUR"),
        ("pay_part", "30.00 EUR"),
    ]
    assert [(p.ledgepay_id, reason) for p, reason in response.context["skipped"]] == [
        ("pay_pending", "it is still pending"),
        ("pay_done", "it is already refunded in full"),
    ]
    assert "refund 30.00 EUR" in content
    assert "it is already refunded in full" in content
    assert 'name="post" value="yes"' in content
    assert 'name="action" value="refund_payments"' in content
    for payment in selection:
        assert f'name="_selected_action" value="{payment.pk}"' in content
    assert len(api.calls) == 0


def test_refund_action_with_nothing_to_refund_only_goes_back(refunder, api, selection):
    _, _, pending, done = selection
    response = refunder.post(
        f"{CHANGELIST}?currency=EUR", action_post("refund_payments", pending, done, index=0)
    )

    content = response.content.decode()
    assert response.status_code == 200
    assert "None of these payments can be refunded:" in content
    assert "will be skipped" not in content
    assert "it is still pending" in content
    assert "it is already refunded in full" in content
    assert f'<a href="{CHANGELIST}?currency=EUR" class="button cancel-link">Go back</a>' in (
        content
    )
    assert "No, take me back" not in content
    assert 'name="post"' not in content
    assert 'type="submit"' not in content.split('id="content"', 1)[1]
    assert len(api.calls) == 0


def test_refund_action_with_one_unrefundable_payment(refunder, api, selection):
    pending = selection[2]
    response = refunder.post(CHANGELIST, action_post("refund_payments", pending, index=0))
    content = response.content.decode()
    assert "This payment cannot be refunded:" in content
    assert ">Go back</a>" in content


def test_refund_action_confirmation_can_go_back(refunder, api, selection):
    response = refunder.post(CHANGELIST, action_post("refund_payments", *selection, index=0))
    content = response.content.decode()
    assert "These 2 payments will be skipped:" in content
    assert f'<a href="{CHANGELIST}" class="button cancel-link">No, take me back</a>' in content
    assert "Go back" not in content


def test_refund_action_confirmed(refunder, api, selection):
    full, part, pending, done = selection
    add_refund_response(api, full, 5000, id="re_full")
    add_refund_response(api, part, 3000, id="re_part")

    response = refunder.post(
        CHANGELIST, action_post("refund_payments", *selection, post="yes", reason="fraudulent")
    )

    assert response.status_code == 302
    bodies = [json.loads(call.request.body) for call in api.calls]
    assert bodies == [
        {"payment_id": "pay_full", "amount": 5000, "reason": "fraudulent"},
        {"payment_id": "pay_part", "amount": 3000, "reason": "fraudulent"},
    ]
    assert messages_of(response) == [
        ("success", "Refunded 50.00 EUR of pay_full (refund re_full, pending)."),
        ("success", "Refunded 30.00 EUR of pay_part (refund re_part, pending)."),
        ("warning", "Skipped pay_pending: it is still pending."),
        ("warning", "Skipped pay_done: it is already refunded in full."),
    ]
    assert Payment.objects.get(pk=part.pk).refundable_amount == 0


def test_refund_action_confirmed_twice_refunds_once(refunder, api, selection):
    full, part, *_ = selection
    add_refund_response(api, full, 5000)
    add_refund_response(api, part, 3000)
    data = action_post("refund_payments", full, part, post="yes", reason="customer_request")

    first = refunder.post(CHANGELIST, data, follow=True)  # shows, so uses up, its messages
    second = refunder.post(CHANGELIST, data)

    assert "Refunded 50.00 EUR of pay_full" in first.content.decode()

    assert len(api.calls) == 2
    assert messages_of(second) == [
        ("warning", "Skipped pay_full: it is already refunded in full."),
        ("warning", "Skipped pay_part: it is already refunded in full."),
    ]


def test_refund_action_reports_a_failure_and_goes_on(refunder, api, selection):
    full, part, *_ = selection
    api.add(
        responses.POST,
        f"{API}/refunds",
        status=400,
        json={"error": {"message": f"Payment is disputed; key {API_KEY}."}},
        match=[matchers.json_params_matcher({"payment_id": "pay_full"}, strict_match=False)],
    )
    add_refund_response(api, part, 3000, id="re_part")

    response = refunder.post(
        CHANGELIST, action_post("refund_payments", full, part, post="yes", reason="other")
    )

    assert messages_of(response) == [
        ("error", "Could not refund pay_full: Payment is disputed; key [redacted]. (HTTP 400)"),
        ("success", "Refunded 30.00 EUR of pay_part (refund re_part, pending)."),
    ]
    assert not full.refunds.exists()


def test_refund_action_skips_what_the_service_refuses(refunder, api, selection, monkeypatch):
    full = selection[0]

    def refuse(*args, **kwargs):
        raise RefundError("Payment pay_full is already refunded in full.")

    monkeypatch.setattr(services, "refund_payment", refuse)
    response = refunder.post(
        CHANGELIST, action_post("refund_payments", full, post="yes", reason="other")
    )
    assert messages_of(response) == [
        ("warning", "Skipped pay_full: Payment pay_full is already refunded in full.")
    ]


def test_refund_action_rejects_an_unknown_reason(refunder, api, selection):
    response = refunder.post(
        CHANGELIST, action_post("refund_payments", selection[0], post="yes", reason="greed")
    )
    assert response.status_code == 200  # the confirmation again, with the error
    assert response.context["reason_form"].errors["reason"]
    assert len(api.calls) == 0


# The sync_payments action


def test_sync_action_needs_change_permission(viewer, django_user_model):
    make_payment()
    syncer = staff_client(django_user_model, "view_payment", "change_payment", username="syncer")
    assert "sync_payments" not in viewer.get(CHANGELIST).content.decode()
    assert "Sync from LedgePay" in syncer.get(CHANGELIST).content.decode()


def test_sync_action_post_without_permission_does_nothing(viewer, api):
    payment = make_payment(status="pending")
    viewer.post(CHANGELIST, action_post("sync_payments", payment, index=0))
    assert len(api.calls) == 0


def test_sync_action_syncs_the_selected_payments(admin_client, api):
    moved = make_payment(ledgepay_id="pay_moved", status="pending")
    same = make_payment(ledgepay_id="pay_same")
    gone = make_payment(ledgepay_id="pay_gone", status="pending")
    make_payment(ledgepay_id="pay_unselected", status="pending")
    api.add(
        responses.GET,
        f"{API}/payments/pay_moved",
        json=payment_data(id="pay_moved", status="succeeded"),
    )
    api.add(
        responses.GET,
        f"{API}/payments/pay_same",
        json=payment_data(id="pay_same", status="succeeded"),
    )
    api.add(
        responses.GET,
        f"{API}/payments/pay_gone",
        status=404,
        json={"error": {"message": "No such payment: pay_gone"}},
    )

    response = admin_client.post(
        CHANGELIST, action_post("sync_payments", moved, same, gone, index=0)
    )

    assert response.status_code == 302
    assert sorted(call.request.url.rsplit("/", 1)[1] for call in api.calls) == [
        "pay_gone",
        "pay_moved",
        "pay_same",
    ]
    assert Payment.objects.get(pk=moved.pk).status == "succeeded"
    assert sorted(messages_of(response)) == [
        ("error", "Could not sync pay_gone: No such payment: pay_gone (HTTP 404)"),
        ("info", "Payment pay_moved is now succeeded (was pending)."),
        ("success", "Synced 2 payments from LedgePay."),
    ]


@pytest.mark.parametrize(
    ("action", "message"),
    [
        (
            "sync_payments",
            "Select at most 100 payments to sync; for more, run “manage.py ledgepay_sync”.",
        ),
        ("refund_payments", "Select at most 100 payments to refund at once."),
    ],
)
def test_actions_have_a_limit(admin_client, api, action, message):
    Payment.objects.bulk_create(
        Payment(ledgepay_id=f"pay_{index}", amount=100, currency="EUR", status="succeeded")
        for index in range(ledgepay_admin.ACTION_LIMIT + 1)
    )
    response = admin_client.post(
        CHANGELIST,
        {"action": action, "select_across": "1", "index": 0, "_selected_action": [1]},
    )
    assert response.status_code == 302
    assert len(api.calls) == 0
    assert messages_of(response) == [("error", message)]


def test_sync_action_that_fetches_nothing_says_only_so(admin_client, api):
    payment = make_payment(ledgepay_id="pay_down", status="pending")
    api.add(responses.GET, f"{API}/payments/pay_down", status=401, json={})

    response = admin_client.post(CHANGELIST, action_post("sync_payments", payment, index=0))

    assert [level for level, _ in messages_of(response)] == ["error"]
    assert API_KEY not in messages_of(response)[0][1]
    assert Payment.objects.get(pk=payment.pk).status == "pending"


# Refunds


def test_refund_changelist(admin_client):
    payment = make_payment(amount=100000, currency="JPY")
    refund = make_refund(payment, amount=1500, currency="JPY", reason="duplicate")

    response = admin_client.get("/admin/django_ledgepay/refund/")

    content = response.content.decode()
    assert response.status_code == 200
    assert refund.ledgepay_id in content
    assert f'<a href="{change_url(payment)}">{payment.ledgepay_id}</a>' in content
    assert "1500 JPY" in content
    # The reason under the status: the list fits 1280 px with ids as long as LedgePay's.
    assert cells(content, "status_display") == ["Succeeded Duplicate"]
    assert "column-reason" not in content
    assert "delete_selected" not in content


def test_refund_changelist_query_count(admin_client):
    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            admin_client.get("/admin/django_ledgepay/refund/")
        return len(captured)

    build_payments(3)
    few = queries()
    build_payments(30)
    assert queries() == few


def test_refund_is_read_only(admin_client):
    refund = make_refund(make_payment(), amount=1000)
    assert admin_client.get("/admin/django_ledgepay/refund/add/").status_code == 403
    assert admin_client.post(change_url(refund), {"amount": 1}).status_code == 403
    assert admin_client.post(f"{change_url(refund)}delete/", {"post": "yes"}).status_code == 403
    page = admin_client.get(change_url(refund))
    assert page.status_code == 200
    assert "10.00 EUR" in page.content.decode()
    refund.refresh_from_db()
    assert refund.amount == 1000


# Webhook events


EVENTS = "/admin/django_ledgepay/webhookevent/"


def make_event(payload: dict[str, Any], **fields: Any) -> WebhookEvent:
    data = payload.get("data", {})
    defaults: dict[str, Any] = {
        "event_type": payload.get("event", ""),
        "object_id": data.get("id", ""),
        "payload": payload,
        "body_sha256": f"{WebhookEvent.objects.count():064d}",
    }
    return WebhookEvent.objects.create(**{**defaults, **fields})


def short(moment: datetime.datetime) -> str:
    """``moment`` as the lists show a date: short, day then time."""
    local = timezone.localtime(moment)
    return f"{date_format(local, 'SHORT_DATE_FORMAT')} {date_format(local, 'TIME_FORMAT')}"


def test_event_changelist(admin_client):
    processed_at = datetime.datetime(2024, 1, 15, 10, 31, tzinfo=datetime.timezone.utc)
    make_event(
        {"event": "payment.succeeded", "data": {"id": "pay_evt"}},
        status="failed",
        attempts=3,
        error="Could not reach LedgePay. " * 10,
    )
    make_event(
        {"event": "refund.succeeded", "data": {"id": "re_d22d8d57cacdd2fc"}},
        status="processed",
        attempts=1,
        processed_at=processed_at,
    )

    response = admin_client.get(EVENTS)

    content = response.content.decode()
    assert response.status_code == 200
    assert "Could not reach LedgePay. Could not" in content
    assert "Could not reach LedgePay. " * 10 not in content  # an excerpt
    # The object's id under the event's type, when the event was processed under its
    # status: the list fits 1280 px with ids as long as LedgePay's.
    assert cells(content, "status_display") == [
        f"Processed {short(processed_at)}",
        "Failed",
    ]
    assert "refund.succeeded re_d22d8d57cacdd2fc" in text_of(content)
    assert "payment.succeeded pay_evt" in text_of(content)
    for column in ("event_display", "attempts", "received_display", "error_excerpt"):
        assert f"column-{column}" in content
    for column in ("object_id", "processed_at", "received_at"):
        assert f"column-{column}" not in content


# Transitions


def test_transition_changelist(admin_client):
    payment = make_payment(ledgepay_id="pay_7f3a9e01c2d4b5a6")
    next_attempt_at = datetime.datetime(2024, 1, 15, 10, 36, tzinfo=datetime.timezone.utc)
    for attempts, next_attempt, delivered in [
        (2, next_attempt_at, None),
        (10, None, None),
        (1, None, next_attempt_at),
    ]:
        Transition.objects.create(
            signal=Transition.Signal.PAYMENT_SUCCEEDED,
            payment=payment,
            source=Transition.Source.WEBHOOK,
            attempts=attempts,
            next_attempt_at=next_attempt,
            delivered_at=delivered,
        )

    content = admin_client.get("/admin/django_ledgepay/transition/").content.decode()

    # When a failing transition is tried next, under its delivery: the list fits 1280 px
    # with ids as long as LedgePay's.
    assert cells(content, "delivery") == [
        f"failing (2 attempts) next attempt {short(next_attempt_at)}",
        "gave up after 10 attempts",
        "delivered",
    ]
    assert 'class="sortable column-delivery' in content
    assert "column-next_attempt_at" not in content
    assert f">{payment.ledgepay_id}</a>" in content


def test_event_payload_shown_readably_and_escaped(admin_client):
    event = make_event(
        {"event": "payment.succeeded", "data": {"id": "pay_x", "description": "<script>x()"}}
    )

    response = admin_client.get(change_url(event))

    content = response.content.decode()
    assert response.status_code == 200
    assert '<pre class="ledgepay-json">{\n  &quot;data&quot;: {\n' in content
    assert "&lt;script&gt;x()" in content
    assert "<script>x()" not in content


def test_event_is_read_only(admin_client):
    event = make_event({"event": "payment.succeeded", "data": {"id": "pay_x"}})
    assert admin_client.get(f"{EVENTS}add/").status_code == 403
    assert admin_client.post(change_url(event), {"status": "processed"}).status_code == 403
    assert admin_client.post(f"{change_url(event)}delete/", {"post": "yes"}).status_code == 403
    event.refresh_from_db()
    assert event.status == "received"


def test_process_action_needs_permission(viewer, django_user_model):
    event = make_event({"event": "payment.succeeded", "data": {"id": "pay_x"}})
    processor = staff_client(
        django_user_model, "view_webhookevent", "change_webhookevent", username="processor"
    )
    assert "process_events" not in viewer.get(EVENTS).content.decode()
    assert "Process selected events again" in processor.get(EVENTS).content.decode()
    viewer.post(EVENTS, action_post("process_events", event, index=0))
    event.refresh_from_db()
    assert event.attempts == 0


def test_process_action_applies_the_events_again(admin_client, api):
    payment = make_payment(ledgepay_id="pay_late", status="pending")
    good = make_event(
        {
            "event": "payment.succeeded",
            "data": {"id": "pay_late", "amount": 5000, "currency": "EUR"},
        },
        status="failed",
        attempts=1,
        error="boom",
    )
    bad = make_event(
        {"event": "refund.created", "data": {"id": "re_orphan", "payment_id": "pay_unknown"}},
        status="failed",
        attempts=1,
    )
    api.add(
        responses.GET,
        f"{API}/payments/pay_unknown",
        status=404,
        json={"error": {"message": "No such payment: pay_unknown"}},
    )

    response = admin_client.post(EVENTS, action_post("process_events", good, bad, index=0))

    good.refresh_from_db()
    bad.refresh_from_db()
    payment.refresh_from_db()
    assert payment.status == "succeeded"
    assert (good.status, good.attempts, good.error) == ("processed", 2, "")
    assert (bad.status, bad.attempts) == ("failed", 2)
    assert "No such payment: pay_unknown" in bad.error
    assert sorted(messages_of(response)) == [
        ("error", f"Event {bad.pk} (refund.created) failed: {bad.error}"),
        ("warning", "Processed 2 events again: 1 failed, 1 processed."),
    ]


def test_process_action_calls_process_event_per_event(admin_client, monkeypatch):
    events = [
        make_event({"event": "payment.succeeded", "data": {"id": f"pay_{n}"}}) for n in range(3)
    ]
    seen: list[int] = []

    def process(event: WebhookEvent) -> None:
        seen.append(event.pk)
        event.status = WebhookEvent.Status.PROCESSED

    monkeypatch.setattr(webhooks, "process_event", process)
    response = admin_client.post(EVENTS, action_post("process_events", *events, index=0))

    assert sorted(seen) == sorted(event.pk for event in events)
    assert messages_of(response) == [("success", "Processed 3 events again: 3 processed.")]


def test_process_action_message_for_one_event(admin_client, monkeypatch):
    event = make_event({"event": "payment.succeeded", "data": {"id": "pay_one"}})

    def process(event: WebhookEvent) -> None:
        event.status = WebhookEvent.Status.PROCESSED

    monkeypatch.setattr(webhooks, "process_event", process)
    response = admin_client.post(EVENTS, action_post("process_events", event, index=0))

    assert messages_of(response) == [("success", "Processed 1 event again: 1 processed.")]


def test_process_action_has_a_limit(admin_client, monkeypatch):
    WebhookEvent.objects.bulk_create(
        WebhookEvent(
            event_type="payment.succeeded",
            object_id=f"pay_{index}",
            payload={"event": "payment.succeeded", "data": {"id": f"pay_{index}"}},
            body_sha256=f"{index:064d}",
        )
        for index in range(ledgepay_admin.ACTION_LIMIT + 1)
    )
    seen: list[int] = []
    monkeypatch.setattr(webhooks, "process_event", lambda event: seen.append(event.pk))

    response = admin_client.post(
        EVENTS,
        {"action": "process_events", "select_across": "1", "index": 0, "_selected_action": [1]},
    )

    assert response.status_code == 302
    assert seen == []
    assert messages_of(response) == [
        (
            "error",
            "Select at most 100 events to process at once; for more, run "
            "“manage.py ledgepay_reprocess”.",
        )
    ]


# The lists at scale, the refunds inline and the payment page's wording (issues 13 and 14)


def test_changelist_counts_and_filters_without_reading_the_refunds(admin_client):
    build_payments(4)

    with CaptureQueriesContext(connection) as queries:
        response = admin_client.get(CHANGELIST, {"currency": "EUR"})

    rows = response.context["cl"].result_list
    assert {row.amount_refunded for row in rows} == {100, 150}
    sql = [q["sql"] for q in queries.captured_queries if "django_ledgepay_" in q["sql"]]
    counts = [s for s in sql if "COUNT(" in s]
    assert counts and all("django_ledgepay_refund" not in s for s in counts)
    # The page's query computes each row's total in a subquery, not a join of the tables.
    page = [s for s in sql if "LIMIT" in s or "ORDER BY" in s and "COUNT(" not in s]
    assert any("django_ledgepay_refund" in s for s in page)
    assert all("JOIN" not in s for s in sql)
    assert not any("DISTINCT" in s for s in sql)


def test_currency_filter_lists_the_currencies_in_use(admin_client):
    for currency in ("KWD", "EUR", "JPY", "EUR"):
        make_refund(make_payment(currency=currency, amount=5000), amount=100)

    payments = admin_client.get(CHANGELIST)
    refunds = admin_client.get("/admin/django_ledgepay/refund/")

    def currencies(response: Any) -> list[str]:
        spec = next(s for s in response.context["cl"].filter_specs if s.title == "currency")
        return [str(choice["display"]) for choice in spec.choices(response.context["cl"])]

    assert currencies(payments) == ["All", "EUR", "JPY", "KWD"]
    assert currencies(refunds) == ["All", "EUR", "JPY", "KWD"]
    counted = admin_client.get(CHANGELIST, {"_facets": "True"})
    assert currencies(counted) == ["All", "EUR (2)", "JPY (1)", "KWD (1)"]


def test_currency_filter_of_a_narrowed_list_lists_only_its_currencies(rf, admin_user):
    make_payment(currency="EUR", customer_email="mine@example.com")
    make_payment(currency="JPY", amount=500, customer_email="theirs@example.com")

    class OneCustomerAdmin(ledgepay_admin.PaymentAdmin):
        def get_queryset(self, request: Any) -> Any:
            return super().get_queryset(request).filter(customer_email="mine@example.com")

    model_admin = OneCustomerAdmin(Payment, django_admin.site)
    request = rf.get(CHANGELIST)
    request.user = admin_user
    changelist = model_admin.get_changelist_instance(request)

    spec = next(s for s in changelist.filter_specs if s.title == "currency")
    assert [str(c["display"]) for c in spec.choices(changelist)] == ["All", "EUR"]


def test_refunds_inline_has_one_line_per_refund(admin_client):
    payment = make_payment(amount=5000)
    first = make_refund(payment, amount=1234, created_at="2024-01-15T11:00:00Z")
    second = make_refund(payment, amount=100, created_at="2024-01-16T11:00:00Z")

    content = admin_client.get(change_url(payment)).content.decode()

    inline = content.split('id="refunds-group"', 1)[1].split("</fieldset>", 1)[0]
    assert 'class="original"' not in inline
    assert str(first) not in inline  # The refund's name, above its row in Django's inline.
    assert inline.count('<tr class="form-row"') == 2
    for refund in (second, first):  # Newest first.
        assert f'<a href="{change_url(refund)}">{refund.ledgepay_id}</a>' in inline
    assert inline.index(second.ledgepay_id) < inline.index(first.ledgepay_id)


def test_the_payment_pages_lists_say_when_they_are_empty(admin_client):
    content = admin_client.get(change_url(make_payment())).content.decode()

    for group, empty in [
        ("refunds", "No refunds."),
        ("refund_requests", "No refund requests."),
        ("transitions", "No changes that sent a signal yet."),
    ]:
        inline = content.split(f'id="{group}-group"', 1)[1].split("</fieldset>", 1)[0]
        assert empty in inline
        assert '<tr class="form-row"' not in inline


def test_payment_page_says_left_to_refund_as_the_refund_page_does(admin_client):
    payment = make_payment(amount=5000)
    make_refund(payment, amount=1234)

    page = admin_client.get(change_url(payment)).content.decode()
    refund_page = admin_client.get(refund_url(payment)).content.decode()

    assert "Left to refund:</label>" in page
    assert "Refundable" not in page
    assert summary_rows(refund_page)["Left to refund"] == readonly_value(
        page, "refundable_display"
    )


def test_status_column_says_when_the_status_was_reached(admin_client):
    make_payment(
        status=Payment.Status.SUCCEEDED,
        created_at="2024-01-15T10:30:00Z",
        completed_at="2024-01-15T10:31:00Z",
    )
    make_payment(status=Payment.Status.PENDING, created_at="2024-01-15T10:00:00Z")

    content = admin_client.get(CHANGELIST).content.decode()

    assert cells(content, "status_display") == ["Succeeded 01/15/2024 10:31 a.m.", "Pending"]
    # A date breaks between its day and its time, never inside either.
    assert (
        '<span class="nowrap">01/15/2024</span> <span class="nowrap">10:30 a.m.</span>' in content
    )


def test_refund_list_dates_are_short(admin_client):
    make_refund(make_payment(), amount=100, created_at="2024-01-15T10:30:00Z")

    content = admin_client.get("/admin/django_ledgepay/refund/").content.decode()

    assert cells(content, "created_display") == ["01/15/2024 10:30 a.m."]
