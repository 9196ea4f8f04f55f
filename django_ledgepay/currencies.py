"""ISO 4217 currencies and their minor-unit exponents, for validation and display."""

from __future__ import annotations

from decimal import ROUND_DOWN, Decimal, Inexact, InvalidOperation, Overflow, localcontext

#: Active ISO 4217 codes mapped to the number of digits after the decimal point.
EXPONENTS: dict[str, int] = {
    **dict.fromkeys(
        "AED AFN ALL AMD AOA ARS AUD AWG AZN BAM BBD BDT BGN BMD BND BOB BRL BSD BTN BWP BYN "
        "BZD CAD CDF CHF CNY COP CRC CUP CVE CZK DKK DOP DZD EGP ERN ETB EUR FJD FKP GBP GEL "
        "GHS GIP GMD GTQ GYD HKD HNL HTG HUF IDR ILS INR IRR JMD KES KGS KHR KPW KYD KZT LAK "
        "LBP LKR LRD LSL MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN MYR MZN NAD NGN NIO "
        "NOK NPR NZD PAB PEN PGK PHP PKR PLN QAR RON RSD RUB SAR SBD SCR SDG SEK SGD SHP SLE "
        "SOS SRD SSP STN SVC SYP SZL THB TJS TMT TOP TRY TTD TWD TZS UAH USD UYU UZS VES WST "
        "XCD XCG YER ZAR ZMW ZWG".split(),
        2,
    ),
    **dict.fromkeys(
        "BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX UYI VND VUV XAF XOF XPF".split(), 0
    ),
    **dict.fromkeys("BHD IQD JOD KWD LYD OMR TND".split(), 3),
    "CLF": 4,
    "UYW": 4,
}


def is_currency(code: object) -> bool:
    """Whether ``code`` is an upper-case ISO 4217 code."""
    return isinstance(code, str) and code in EXPONENTS


def exponent(currency: str) -> int:
    """Digits after the decimal point for ``currency``; 2 for a code this table lacks."""
    return EXPONENTS.get(currency.upper(), 2)


def to_major(amount: int, currency: str) -> Decimal:
    """``5000, "EUR"`` -> ``Decimal("50.00")``; ``500, "JPY"`` -> ``Decimal("500")``."""
    digits = exponent(currency)
    return Decimal(amount).scaleb(-digits).quantize(Decimal(1).scaleb(-digits))


def format_amount(amount: int, currency: str) -> str:
    """``5000, "EUR"`` -> ``"50.00 EUR"``."""
    return f"{to_major(amount, currency)} {currency}"


def to_minor(value: Decimal | str | int, currency: str) -> int:
    """Convert an amount in major units to an integer of minor units.

    Raises ValueError when the value is not a number or has more decimals than the
    currency allows (``"12.345"`` EUR); it never rounds money.
    """
    try:
        number = Decimal(str(value).strip())
    except InvalidOperation as err:
        raise ValueError(f"{value!r} is not a number.") from err
    if not number.is_finite():
        raise ValueError(f"{value!r} is not a number.")
    digits = exponent(currency)
    try:
        with localcontext() as context:
            # Exact: precision for every digit, and any rounding raises instead.
            context.prec = len(number.as_tuple().digits) + digits
            context.traps[Inexact] = True
            minor = number.scaleb(digits)
    except Overflow as err:
        raise ValueError(f"{value!r} is too large.") from err
    except Inexact as err:  # so small that it underflowed: decimals beyond the currency's
        raise ValueError(f"{currency} amounts have at most {digits} decimal places.") from err
    if minor != minor.to_integral_value(rounding=ROUND_DOWN):
        raise ValueError(f"{currency} amounts have at most {digits} decimal places.")
    return int(minor)
