from __future__ import annotations

from decimal import Decimal

import pytest

from django_ledgepay.currencies import (
    EXPONENTS,
    exponent,
    format_amount,
    is_currency,
    to_major,
    to_minor,
)


@pytest.mark.parametrize(
    ("currency", "digits"),
    [("EUR", 2), ("USD", 2), ("JPY", 0), ("KRW", 0), ("KWD", 3), ("BHD", 3), ("CLF", 4)],
)
def test_exponent(currency, digits):
    assert exponent(currency) == digits


def test_exponent_ignores_case_and_defaults_to_two():
    assert exponent("jpy") == 0
    assert exponent("XYZ") == 2


@pytest.mark.parametrize(
    ("code", "known"),
    [("EUR", True), ("JPY", True), ("KWD", True), ("eur", False), ("XYZ", False)],
)
def test_is_currency(code, known):
    assert is_currency(code) is known


@pytest.mark.parametrize("code", [None, 978, b"EUR", ["EUR"], ""])
def test_is_currency_refuses_non_strings(code):
    assert is_currency(code) is False


def test_exponents_are_upper_case_codes():
    assert all(len(code) == 3 and code.isupper() for code in EXPONENTS)
    assert set(EXPONENTS.values()) == {0, 2, 3, 4}


@pytest.mark.parametrize(
    ("amount", "currency", "major"),
    [
        (5000, "EUR", Decimal("50.00")),
        (1, "EUR", Decimal("0.01")),
        (0, "EUR", Decimal("0.00")),
        (500, "JPY", Decimal("500")),
        (12345, "KWD", Decimal("12.345")),
        (1, "KWD", Decimal("0.001")),
        (-250, "EUR", Decimal("-2.50")),
    ],
)
def test_to_major(amount, currency, major):
    result = to_major(amount, currency)

    assert result == major
    assert str(result) == str(major)  # with every decimal place of the currency


@pytest.mark.parametrize(
    ("amount", "currency", "text"),
    [
        (5000, "EUR", "50.00 EUR"),
        (5, "EUR", "0.05 EUR"),
        (500, "JPY", "500 JPY"),
        (12345, "KWD", "12.345 KWD"),
        (10, "KWD", "0.010 KWD"),
        (123456789, "EUR", "1234567.89 EUR"),
    ],
)
def test_format_amount(amount, currency, text):
    assert format_amount(amount, currency) == text


@pytest.mark.parametrize(
    ("value", "currency", "minor"),
    [
        ("50", "EUR", 5000),
        ("50.00", "EUR", 5000),
        ("50.5", "EUR", 5050),
        ("0.01", "EUR", 1),
        (" 25.00 ", "EUR", 2500),
        (Decimal("12.34"), "EUR", 1234),
        (Decimal("12.340"), "EUR", 1234),
        (7, "EUR", 700),
        ("500", "JPY", 500),
        ("500.0", "JPY", 500),
        (Decimal("500"), "JPY", 500),
        ("12.345", "KWD", 12345),
        ("0.001", "KWD", 1),
        ("1e2", "EUR", 10000),
        ("12345678901234567890123456789.01", "EUR", 1234567890123456789012345678901),
    ],
)
def test_to_minor(value, currency, minor):
    result = to_minor(value, currency)

    assert result == minor
    assert type(result) is int


@pytest.mark.parametrize(
    ("value", "currency"),
    [
        ("12.345", "EUR"),
        ("0.001", "EUR"),
        (Decimal("0.005"), "EUR"),
        ("500.5", "JPY"),
        ("0.1", "JPY"),
        ("12.3456", "KWD"),
        ("1e-3", "EUR"),
        ("1e-999999999", "EUR"),
        ("12345678901234567890123456789.015", "EUR"),
    ],
)
def test_to_minor_refuses_more_decimals_than_the_currency_has(value, currency):
    with pytest.raises(ValueError, match=currency):
        to_minor(value, currency)


@pytest.mark.parametrize(
    "value",
    [
        "NaN",
        "nan",
        "sNaN",
        "-NaN",
        "inf",
        "-Infinity",
        Decimal("NaN"),
        Decimal("Infinity"),
        "",
        "   ",
        "abc",
        "12,50",
        "1.2.3",
        "€12",
        "12 EUR",
        "0x10",
        None,
        True,
        "1e999999999",
        "-1e999999999",
        Decimal("9e999999999"),
    ],
)
def test_to_minor_refuses_what_is_not_a_finite_number(value):
    with pytest.raises(ValueError):
        to_minor(value, "EUR")


@pytest.mark.parametrize(
    ("amount", "currency"), [(0, "EUR"), (1, "EUR"), (987654, "JPY"), (1000001, "KWD")]
)
def test_to_minor_undoes_to_major(amount, currency):
    assert to_minor(to_major(amount, currency), currency) == amount
