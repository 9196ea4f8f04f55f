from __future__ import annotations

import pytest

from django.core.exceptions import ValidationError

from django_ledgepay.currencies import to_minor
from django_ledgepay.forms import MajorUnitsField, RefundForm, example_amount
from tests.factories import make_payment

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    ("currency", "example"),
    [("JPY", "1234"), ("EUR", "12.34"), ("KWD", "12.345"), ("CLF", "12.3456")],
)
def test_the_example_amount_has_the_currencys_decimals(currency, example):
    assert example_amount(currency) == example
    to_minor(example, currency)  # An amount the currency takes.


@pytest.mark.parametrize(
    ("currency", "example"),
    [("JPY", "1234"), ("EUR", "12.34"), ("KWD", "12.345")],
)
@pytest.mark.parametrize("typed", ["1_000", "abc", "1e3"])
def test_a_refund_in_other_than_digits_is_shown_an_amount_of_its_currency(
    currency, example, typed
):
    payment = make_payment(amount=50000, currency=currency, status="succeeded")
    form = RefundForm(
        {"amount": typed, "reason": "duplicate", "refunded_before": "0"}, payment=payment
    )

    assert not form.is_valid()
    assert form.errors["amount"] == [f"Enter an amount in digits, such as {example}."]
    accepted = RefundForm(
        {"amount": example, "reason": "duplicate", "refunded_before": "0"}, payment=payment
    )
    assert accepted.is_valid(), accepted.errors


def test_the_field_alone_shows_an_amount_of_two_decimals():
    field = MajorUnitsField()

    with pytest.raises(ValidationError, match=r"such as 12\.34\."):
        field.clean("abc")
