from __future__ import annotations

import pytest

from django.db import IntegrityError

from django_ledgepay.models import Payment, Refund, WebhookEvent
from tests.factories import make_payment, make_refund

pytestmark = pytest.mark.django_db


def test_amount_refunded_counts_refunds_that_have_not_failed():
    payment = make_payment(amount=5000)
    make_refund(payment, amount=1000, status=Refund.Status.SUCCEEDED)
    make_refund(payment, amount=500, status=Refund.Status.PENDING)
    make_refund(payment, amount=2000, status=Refund.Status.FAILED)
    assert payment.amount_refunded == 1500
    assert payment.refundable_amount == 3500


def test_annotation_gives_the_same_numbers_in_one_query(django_assert_num_queries):
    first, second = make_payment(amount=5000), make_payment(amount=300, currency="JPY")
    make_refund(first, amount=1000)
    make_refund(first, amount=4000, status=Refund.Status.FAILED)
    with django_assert_num_queries(1):
        payments = {p.pk: p for p in Payment.objects.with_amount_refunded()}
        totals = {pk: (p.amount_refunded, p.refundable_amount) for pk, p in payments.items()}
    assert totals == {first.pk: (1000, 4000), second.pk: (0, 300)}


@pytest.mark.parametrize("status", ["pending", "failed", "canceled"])
def test_only_succeeded_payments_are_refundable(status):
    assert make_payment(status=status).refundable_amount == 0


def test_amounts_must_be_positive():
    with pytest.raises(IntegrityError):
        make_payment(amount=0)


def test_str_shows_major_units():
    payment = make_payment(ledgepay_id="pay_1", amount=1234, currency="KWD")
    assert str(payment) == "pay_1 (1.234 KWD, succeeded)"
    refund = make_refund(payment, ledgepay_id="re_1", amount=500)
    assert str(refund) == "re_1 (0.500 KWD, succeeded)"
    event = WebhookEvent(event_type="payment.succeeded", object_id="pay_1", status="processed")
    assert str(event) == "payment.succeeded pay_1 (processed)"
    assert event.is_processed


def test_refund_permission_exists():
    from django.contrib.auth.models import Permission

    assert Permission.objects.filter(
        content_type__app_label="django_ledgepay", codename="refund_payment"
    ).exists()


def test_refund_reasons_have_plain_labels():
    assert [(value, str(label)) for value, label in Refund.Reason.choices] == [
        ("customer_request", "Customer request"),
        ("duplicate", "Duplicate"),
        ("fraudulent", "Fraudulent"),
        ("other", "Other"),
    ]
