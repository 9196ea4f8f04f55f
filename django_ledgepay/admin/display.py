"""How the admin shows values: amounts and dates on one line, JSON, links between pages,
a customer, a transition's delivery."""

from __future__ import annotations

import datetime
import json
from typing import Any

from django.contrib import admin
from django.urls import reverse
from django.utils import timezone
from django.utils.formats import date_format
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.translation import gettext_lazy as _

from django_ledgepay.currencies import format_amount
from django_ledgepay.models import Payment, Refund, Transition


def pretty_json(value: Any) -> SafeString:
    """``value`` as indented JSON in a ``<pre>``, escaped."""
    text = json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str)
    return format_html('<pre class="ledgepay-json">{}</pre>', text)


def nowrap(text: str) -> SafeString:
    """``text`` on one line, with the admin's own ``nowrap`` class: ``12.345 KWD`` split in
    two reads as two values."""
    return format_html('<span class="nowrap">{}</span>', text)


def day_and_time(moment: datetime.datetime | None) -> SafeString | None:
    """A list's date, short, in the current time zone: on one line where there is room,
    else the time under the day (never a time split in two)."""
    if moment is None:
        return None
    local = timezone.localtime(moment)
    return format_html(
        "{} {}",
        nowrap(date_format(local, "SHORT_DATE_FORMAT")),
        nowrap(date_format(local, "TIME_FORMAT")),
    )


def with_note(text: object, note: object) -> SafeString:
    """``text`` and, under it in the admin's quiet colour, ``note`` (nothing when empty): two
    values in one column, so that the lists fit 1280 px."""
    if not note:
        return format_html("{}", text)
    return format_html('{} <br><span class="quiet">{}</span>', text, note)


def with_time(text: object, moment: datetime.datetime | None, label: object = "") -> SafeString:
    """``text`` and, under it, ``moment`` as :func:`day_and_time` shows it, after ``label``."""
    time = day_and_time(moment)
    if time is not None and label:
        time = format_html("{} {}", label, time)
    return with_note(text, time)


def change_link(obj: Any, text: object) -> SafeString:
    """A link to ``obj``'s admin page (the default site's)."""
    opts = obj._meta
    url = reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=(obj.pk,))
    return format_html('<a href="{}">{}</a>', url, text)


def customer(payment: Payment) -> str:
    """The payment's customer: ``Name <email>``, or whichever of the two it has."""
    if payment.customer_name and payment.customer_email:
        return f"{payment.customer_name} <{payment.customer_email}>"
    return payment.customer_name or payment.customer_email


def delivery_state(transition: Transition) -> str:
    """Delivered, waiting, failing (with its attempts) or given up, in words."""
    if transition.delivered_at is not None:
        return str(_("delivered"))
    if not transition.attempts:
        return str(_("waiting"))
    if transition.next_attempt_at is None:
        return str(_("gave up after %(n)d attempts") % {"n": transition.attempts})
    return str(_("failing (%(n)d attempts)") % {"n": transition.attempts})


class AmountMixin:
    """An ``amount_display`` column: the amount in major units with its currency."""

    @admin.display(description=_("amount"), ordering="amount")
    def amount_display(self, obj: Payment | Refund) -> SafeString:
        return nowrap(format_amount(obj.amount, obj.currency))
