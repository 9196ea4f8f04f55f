"""Forms for the admin's refund pages. Amounts are typed in major units and checked here,
before any call to LedgePay."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any, cast

from django import forms
from django.core.exceptions import ValidationError
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from django_ledgepay.currencies import exponent, format_amount, to_major, to_minor
from django_ledgepay.models import Payment, Refund


def unrefundable_reason(payment: Payment) -> str:
    """Why ``payment`` cannot be refunded, or ``""`` when something is left to refund."""
    if payment.status == Payment.Status.PENDING:
        return str(_("it is still pending"))
    if payment.status == Payment.Status.FAILED:
        return str(_("it failed"))
    if payment.status == Payment.Status.CANCELED:
        return str(_("it was canceled"))
    if payment.status != Payment.Status.SUCCEEDED:
        return str(_("it has not succeeded"))
    if payment.refundable_amount <= 0:
        return str(_("it is already refunded in full"))
    return ""


def example_amount(currency: str) -> str:
    """An amount as typed in ``currency``, with as many decimals as it has: ``12.34`` EUR,
    ``1234`` JPY, ``12.345`` KWD."""
    digits = exponent(currency)
    return "1234" if digits == 0 else "12." + "3456789"[:digits]


class MajorUnitsField(forms.DecimalField):
    """An amount typed in major units: ASCII digits with an optional decimal point, as on a
    receipt. Python's Decimal would also take ``1_000``, ``1e3`` or digits of other scripts.

    ``example`` is the amount its error shows, with the currency's decimals (see
    :func:`example_amount`)."""

    default_error_messages = {
        "invalid": _("Enter an amount in digits, such as %(example)s."),
    }
    pattern = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)")

    def __init__(self, *, example: str = "12.34", **kwargs: Any) -> None:
        self.example = example
        super().__init__(**kwargs)

    def to_python(self, value: Any) -> Any:
        if isinstance(value, str) and value.strip() and not self.pattern.fullmatch(value.strip()):
            raise self.invalid()
        try:
            return super().to_python(value)
        except ValidationError as err:
            if err.code == "invalid":
                raise self.invalid() from err
            raise

    def invalid(self) -> ValidationError:
        return ValidationError(
            self.error_messages["invalid"], code="invalid", params={"example": self.example}
        )


class RefundReasonForm(forms.Form):
    reason = forms.ChoiceField(
        label=_("Reason"), choices=Refund.Reason.choices, initial=Refund.Reason.CUSTOMER_REQUEST
    )


class RefundForm(RefundReasonForm):
    """One refund of ``payment``: ``cleaned_data["amount"]`` is an int of minor units.

    ``refunded_before`` carries what was refunded when the page was drawn; the view compares
    it under the payment's row lock, so a form submitted twice refunds once.
    """

    amount = MajorUnitsField(
        label=_("Amount"),
        widget=forms.TextInput(attrs={"inputmode": "decimal", "autocomplete": "off"}),
    )
    refunded_before = forms.IntegerField(
        min_value=0,
        widget=forms.HiddenInput,
        error_messages={
            "required": _("The form was incomplete: load the refund page again."),
            "invalid": _("The form was incomplete: load the refund page again."),
            "min_value": _("The form was incomplete: load the refund page again."),
        },
    )

    field_order = ("amount", "reason")

    def __init__(self, *args: Any, payment: Payment, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.payment = payment
        currency = payment.currency
        digits = exponent(currency)
        self.fields["amount"].label = _("Amount (%(currency)s)") % {"currency": currency}
        left = format_amount(self.refundable, currency)
        if digits == 0:
            help_text = _("In %(currency)s, in whole units (no decimals); at most %(left)s.") % {
                "currency": currency,
                "left": left,
            }
        else:
            help_text = ngettext(
                "In %(currency)s, with at most %(digits)s decimal place; at most %(left)s.",
                "In %(currency)s, with at most %(digits)s decimal places; at most %(left)s.",
                digits,
            ) % {"currency": currency, "digits": digits, "left": left}
        self.fields["amount"].help_text = help_text
        cast(MajorUnitsField, self.fields["amount"]).example = example_amount(currency)
        self.fields["amount"].initial = to_major(self.refundable, currency)
        self.fields["refunded_before"].initial = payment.amount_refunded

    @property
    def refundable(self) -> int:
        return self.payment.refundable_amount

    def clean_amount(self) -> int:
        value: Decimal = self.cleaned_data["amount"]
        currency = self.payment.currency
        if value <= 0:
            raise ValidationError(_("Enter an amount greater than zero."), code="min_value")
        # Compared in major units first, so an absurdly large number gets this message.
        if self.refundable and value > to_major(self.refundable, currency):
            raise ValidationError(
                _("That is more than what is left to refund (%(left)s).")
                % {"left": format_amount(self.refundable, currency)},
                code="max_value",
            )
        try:
            return to_minor(value, currency)
        except ValueError as err:
            digits = exponent(currency)
            if digits == 0:
                message = _("%(currency)s amounts are whole numbers: no decimals.") % {
                    "currency": currency
                }
            else:
                message = ngettext(
                    "%(currency)s amounts have at most %(digits)s decimal place.",
                    "%(currency)s amounts have at most %(digits)s decimal places.",
                    digits,
                ) % {"currency": currency, "digits": digits}
            raise ValidationError(message, code="decimal_places") from err

    def clean(self) -> dict[str, Any] | None:
        cleaned = super().clean()
        reason = unrefundable_reason(self.payment)
        if reason:
            raise ValidationError(
                _("This payment cannot be refunded: %(reason)s.") % {"reason": reason},
                code="not_refundable",
            )
        return cleaned
