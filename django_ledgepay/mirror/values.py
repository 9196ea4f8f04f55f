"""LedgePay's objects read into the mirror's field values, and times as LedgePay writes them.

Pure reading: what a payment or refund object says, well-typed and fitting its column, with
anything missing, null, blank or ill-typed left out.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Mapping
from typing import Any

from django.utils import timezone
from django.utils.dateparse import parse_datetime

from django_ledgepay.exceptions import (
    APIError,
    InvalidRequestError,
)
from django_ledgepay.models import (
    MAX_AMOUNT,
    Payment,
    Refund,
)

logger = logging.getLogger("django_ledgepay.services")


class IncompleteDataError(APIError):
    """LedgePay's data lacks what is needed to record an object seen for the first time."""


def payment_values(data: Mapping[str, Any]) -> dict[str, Any]:
    """The model fields a LedgePay payment object carries, skipping absent or ill-typed ones.

    A field that is missing, null or blank is left out, so a partial answer never blanks
    what the mirror already knows.
    """
    values = _money_values(data)
    if data.get("status") in Payment.Status.values:
        values["status"] = data["status"]
    for field in ("description", "checkout_url", "success_url", "cancel_url"):
        if isinstance(data.get(field), str) and data[field]:
            values[field] = data[field]
    customer = data.get("customer")
    if isinstance(customer, Mapping):
        for key, field in (("email", "customer_email"), ("name", "customer_name")):
            if isinstance(customer.get(key), str) and customer[key]:
                values[field] = customer[key]
    if isinstance(data.get("metadata"), Mapping) and data["metadata"]:
        values["metadata"] = dict(data["metadata"])
    for field in ("created_at", "completed_at"):
        moment = parse_time(data.get(field))
        if moment is not None:
            values[field] = moment
    return _fitting(Payment, values)


def refund_values(data: Mapping[str, Any]) -> dict[str, Any]:
    """The model fields a LedgePay refund object carries, as :func:`payment_values` does."""
    values = _money_values(data)
    if data.get("status") in Refund.Status.values:
        values["status"] = data["status"]
    if data.get("reason") in Refund.Reason.values:
        values["reason"] = data["reason"]
    moment = parse_time(data.get("created_at"))
    if moment is not None:
        values["created_at"] = moment
    return _fitting(Refund, values)


def _fitting(model: type[Payment] | type[Refund], values: dict[str, Any]) -> dict[str, Any]:
    """``values`` without the strings longer than their column: a database error would
    otherwise turn one odd answer into a sync that fails or a webhook retried forever."""
    for field, value in list(values.items()):
        limit = getattr(model._meta.get_field(field), "max_length", None)
        if isinstance(value, str) and limit is not None and len(value) > limit:
            logger.warning("Skipped LedgePay's %s: longer than %d characters.", field, limit)
            del values[field]
    return values


def _money_values(data: Mapping[str, Any]) -> dict[str, Any]:
    """``amount`` (a positive int of minor units) and ``currency``, where well-typed."""
    values: dict[str, Any] = {}
    amount = data.get("amount")
    if isinstance(amount, int) and not isinstance(amount, bool) and 0 < amount <= MAX_AMOUNT:
        values["amount"] = amount
    currency = data.get("currency")
    if isinstance(currency, str) and len(currency) == 3:
        values["currency"] = currency.upper()
    return values


def parse_time(value: object) -> datetime.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        moment = parse_datetime(value)
    except ValueError:
        return None
    if moment is None:
        return None
    if timezone.is_naive(moment):
        moment = timezone.make_aware(moment, datetime.timezone.utc)
    try:
        moment = moment.astimezone(datetime.timezone.utc)
    except OverflowError:  # Year 1 or 9999 pushed out of range by its offset.
        return None
    # The first and last years are refused too: a database or a driver working in another
    # zone could not read them back. No real LedgePay time is near either.
    return moment if datetime.MINYEAR < moment.year < datetime.MAXYEAR else None


def created_second(item: Mapping[str, Any]) -> datetime.datetime | None:
    moment = parse_time(item.get("created_at"))
    return moment.replace(microsecond=0) if moment is not None else None


def item_id(item: Mapping[str, Any]) -> str:
    value = item.get("id")
    return value if isinstance(value, str) else ""


def iso_z(moment: datetime.datetime) -> str:
    """``moment`` in UTC as LedgePay writes times, ``2024-01-15T10:32:15Z`` (the year in four
    digits, which strftime's ``%Y`` does not give before the year 1000 on glibc)."""
    utc = moment.astimezone(datetime.timezone.utc).replace(microsecond=0, tzinfo=None)
    return f"{utc.isoformat()}Z"


def api_time(value: datetime.datetime | str | None, param: str) -> str | None:
    if value is None:
        return None
    moment = parse_time(value) if isinstance(value, str) else value
    if not isinstance(moment, datetime.datetime):
        raise InvalidRequestError(f"{param} must be a datetime or ISO 8601 string.", param=param)
    if timezone.is_naive(moment):
        moment = timezone.make_aware(moment, datetime.timezone.utc)
    try:
        return iso_z(moment)
    except OverflowError as err:
        raise InvalidRequestError(f"{param} is out of range.", param=param) from err


def ledgepay_id_of(payment_or_ledgepay_id: Payment | str) -> str:
    if isinstance(payment_or_ledgepay_id, Payment):
        return payment_or_ledgepay_id.ledgepay_id
    return payment_or_ledgepay_id
