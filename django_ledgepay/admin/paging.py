"""Counting a list at any size: exactly up to :data:`COUNT_LIMIT` rows, past it PostgreSQL's
estimate, so that no page of a list counts a million rows."""

from __future__ import annotations

import json
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar, Final

from django.core.paginator import Paginator
from django.db import connections
from django.db.models import QuerySet

#: Up to this many rows, a list's count is exact; past it, it is PostgreSQL's estimate.
COUNT_LIMIT: Final = 10_000

if TYPE_CHECKING:
    # Generic in django-stubs only, not at run time.
    PaginatorBase = Paginator[Any]
else:
    PaginatorBase = Paginator


class EstimatedCountPaginator(PaginatorBase):
    """Django's paginator, whose count on PostgreSQL reads at most :data:`COUNT_LIMIT` + 1
    rows: exact up to the limit, else the planner's estimate of the rows (from the table's
    statistics, which ``ANALYZE`` and autovacuum keep).

    Two queries, whatever the size: the planner's estimate (``EXPLAIN``, nothing read), then
    the count of at most ``COUNT_LIMIT + 1`` rows. Django's paginator counts every row, and
    its list counts the whole table a second time for "N results (M total)": set
    ``show_full_result_count = False`` beside this class. Other databases count every row.
    """

    @cached_property
    def count(self) -> int:
        rows = self.object_list
        if not isinstance(rows, QuerySet) or connections[rows.db].vendor != "postgresql":
            return super().count
        unordered = rows.order_by()
        estimate = planned_rows(unordered)
        counted = unordered.values("pk")[: COUNT_LIMIT + 1].count()
        return counted if counted <= COUNT_LIMIT else max(counted, estimate)


def planned_rows(queryset: QuerySet[Any]) -> int:
    """How many rows PostgreSQL's planner expects ``queryset`` to return (``EXPLAIN``, which
    plans the query without running it)."""
    plan = json.loads(queryset.explain(format="json"))
    return int(plan[0]["Plan"]["Plan Rows"])


class EstimatedCountMixin:
    """A list that never counts every row: :class:`EstimatedCountPaginator`, and no second
    count of the whole table for "N results (M total)" (the search note says "Show all"
    instead)."""

    paginator: ClassVar[type] = EstimatedCountPaginator
    show_full_result_count: ClassVar[bool] = False
