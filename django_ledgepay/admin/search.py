"""Searching the lists on indexes: a LedgePay id or a customer's e-mail address by its start,
an order id exactly. Any other text is searched for as Django does, in every row.

Django's search looks for each word anywhere in each of ``search_fields``
(``UPPER(...) LIKE '%word%'``), which no index answers: at a million payments, every search
reads every row. Here a search first tries conditions that an index answers, in turn; the
first that finds a row is the result. Only when none does is the search Django's own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

from django.db.models import Q, QuerySet, TextField
from django.db.models.fields.json import KT
from django.db.models.functions import Cast
from django.db.models.lookups import Exact
from django.http import HttpRequest

from django_ledgepay.models import Payment, Refund

if TYPE_CHECKING:
    from django.contrib import admin


def payment_match(term: str) -> Q:
    """The payments ``term`` names, each condition on an index: a LedgePay id by its start
    (as typed: ids are lower case), a customer's e-mail address by its start (in any case),
    an order id exactly (``metadata["order_id"]`` as text, so 12 or "12", with or without a
    ``#`` before it)."""
    return (
        Q(ledgepay_id__startswith=term)
        | Q(customer_email__istartswith=term)
        | Q(Exact(Cast(KT("metadata__order_id"), TextField()), term.removeprefix("#")))
    )


def payments_matching(term: str) -> Q:
    """The rows whose payment ``term`` names (:func:`payment_match`), for the refunds and the
    transitions: one subquery, which PostgreSQL joins on the payment's foreign key."""
    return Q(payment__in=Payment.objects.filter(payment_match(term)).values("pk"))


def refunds_matching(term: str) -> Q:
    """The transitions of the refunds whose LedgePay id starts with ``term``."""
    return Q(refund__in=Refund.objects.filter(ledgepay_id__startswith=term).values("pk"))


class IndexedSearchMixin:
    """A model admin whose search tries :meth:`indexed_searches` first.

    Each condition is tried in turn (one ``EXISTS`` query each, on an index) and the first
    that finds a row is the result; when none does, Django searches ``search_fields`` as
    usual, reading every row.
    """

    def indexed_searches(self, term: str) -> Sequence[Q]:
        """The conditions tried for ``term`` (stripped, never empty), in turn."""
        return ()

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Any], search_term: str
    ) -> tuple[QuerySet[Any], bool]:
        term = search_term.strip()
        for condition in self.indexed_searches(term) if term else ():
            found = queryset.filter(condition)
            if found.exists():
                return found, False
        model_admin = cast("admin.ModelAdmin[Any]", super())
        return model_admin.get_search_results(request, queryset, search_term)
