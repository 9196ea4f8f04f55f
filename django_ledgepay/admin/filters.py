"""The lists' own filters: currencies read from an index, payments with a refund request
still unanswered, transitions by delivery."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from django.contrib import admin
from django.db import connection
from django.db.models import Exists, OuterRef, QuerySet
from django.http import HttpRequest
from django.utils.translation import gettext_lazy as _

from django_ledgepay.models import RefundRequest


class CurrencyListFilter(admin.AllValuesFieldListFilter):
    """The currencies in use, as Django's filter lists them, without reading every row.

    ``SELECT DISTINCT currency`` reads the whole table on every page of the list; this
    walks the currency index instead, one probe per currency (a "loose index scan", in a
    recursive query). A model admin whose queryset is filtered (one shop's payments, say)
    gets Django's own query, so that it lists only the currencies of the rows it shows.
    """

    def __init__(
        self,
        field: Any,
        request: HttpRequest,
        params: Any,
        model: Any,
        model_admin: Any,
        field_path: str,
    ) -> None:
        super().__init__(field, request, params, model, model_admin, field_path)
        # A column of the list's own table, never NULL, on a database with recursive queries.
        local = field.model is model and not field.null
        fast = local and connection.vendor in ("postgresql", "sqlite")
        if fast and not self.lookup_choices.query.where:
            # Django only iterates its choices (in choices() and for the counts).
            self.lookup_choices = _LazyList(lambda: _distinct_values(model, field))  # type: ignore[assignment]


class _LazyList:
    """A list computed on first use: the filter's choices are read only if shown."""

    def __init__(self, load: Callable[[], list[Any]]) -> None:
        self._load = load
        self._values: list[Any] | None = None

    def __iter__(self) -> Iterator[Any]:
        if self._values is None:
            self._values = self._load()
        return iter(self._values)


def _distinct_values(model: Any, field: Any) -> list[Any]:
    """The distinct values of the NOT NULL ``field``, sorted: one probe of an index that
    starts with the field per value."""
    quote = connection.ops.quote_name
    table, column = quote(model._meta.db_table), quote(field.column)
    sql = (
        f"WITH RECURSIVE found (value) AS ("
        f"SELECT MIN({column}) FROM {table} "
        f"UNION ALL SELECT (SELECT MIN({column}) FROM {table} WHERE {column} > found.value) "
        f"FROM found WHERE found.value IS NOT NULL"
        f") SELECT value FROM found WHERE value IS NOT NULL"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql)
        return [row[0] for row in cursor.fetchall()]


class UnresolvedRefundFilter(admin.SimpleListFilter):
    title = _("refund requests")
    parameter_name = "refund_request"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, Any]]:
        return [("unknown", _("Unresolved (no answer yet)"))]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if self.value() == "unknown":
            unknown = RefundRequest.objects.filter(
                payment=OuterRef("pk"), outcome=RefundRequest.Outcome.UNKNOWN
            )
            return queryset.filter(Exists(unknown))
        return queryset


class DeliveryFilter(admin.SimpleListFilter):
    title = _("delivery")
    parameter_name = "delivery"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, Any]]:
        return [
            ("undelivered", _("Not delivered")),
            ("failing", _("Failing")),
            ("given_up", _("Given up")),
            ("delivered", _("Delivered")),
        ]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        if value == "undelivered":
            return queryset.filter(delivered_at__isnull=True)
        if value == "failing":
            return queryset.filter(delivered_at__isnull=True, attempts__gt=0)
        if value == "given_up":
            return queryset.filter(
                delivered_at__isnull=True, attempts__gt=0, next_attempt_at__isnull=True
            )
        if value == "delivered":
            return queryset.filter(delivered_at__isnull=False)
        return queryset
