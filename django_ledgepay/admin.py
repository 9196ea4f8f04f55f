"""The admin: a read-only mirror of LedgePay, with refunds for staff who may issue them.

Nothing here edits a payment, refund or event by hand: LedgePay is the source of truth.
Refunds and syncs go through :mod:`django_ledgepay.services`, never the client.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable, Iterator
from functools import partial
from typing import TYPE_CHECKING, Any

from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.admin.utils import unquote
from django.contrib.auth import get_permission_codename
from django.core.exceptions import PermissionDenied
from django.db import OperationalError, connection
from django.db.models import Exists, OuterRef, QuerySet, Subquery, Sum
from django.db.models.functions import Coalesce
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.formats import date_format
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.text import Truncator
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from django_ledgepay import dashboard, reactions, services, webhooks
from django_ledgepay.currencies import format_amount
from django_ledgepay.exceptions import (
    AuthenticationError,
    InvalidRequestError,
    LedgePayError,
    NotFoundError,
    RefundError,
    RefundsChangedError,
)
from django_ledgepay.forms import RefundForm, RefundReasonForm, unrefundable_reason
from django_ledgepay.models import (
    Payment,
    Reaction,
    Refund,
    RefundRequest,
    Transition,
    WebhookEvent,
)

if TYPE_CHECKING:
    # The admin's classes are generic only in django-stubs, not at run time.
    PaymentAdminBase = admin.ModelAdmin[Payment]
    RefundAdminBase = admin.ModelAdmin[Refund]
    WebhookEventAdminBase = admin.ModelAdmin[WebhookEvent]
    RefundInlineBase = admin.TabularInline[Refund, Payment]
    TransitionAdminBase = admin.ModelAdmin[Transition]
    TransitionInlineBase = admin.TabularInline[Transition, Payment]
    ReactionInlineBase = admin.TabularInline[Reaction, Transition]
    RefundRequestInlineBase = admin.TabularInline[RefundRequest, Payment]
else:
    PaymentAdminBase = RefundAdminBase = WebhookEventAdminBase = admin.ModelAdmin
    TransitionAdminBase = admin.ModelAdmin
    RefundInlineBase = TransitionInlineBase = admin.TabularInline
    ReactionInlineBase = RefundRequestInlineBase = admin.TabularInline

#: The most payments one action handles: each costs a call to LedgePay within the request.
#: To mirror more, ``manage.py ledgepay_sync`` pages through LedgePay's list instead.
ACTION_LIMIT = 100


def pretty_json(value: Any) -> SafeString:
    """``value`` as indented JSON in a ``<pre>``, escaped."""
    text = json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str)
    return format_html('<pre class="ledgepay-json">{}</pre>', text)


def _day_and_time(moment: datetime.datetime | None) -> SafeString | None:
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


def nowrap(text: str) -> SafeString:
    """``text`` on one line, with the admin's own ``nowrap`` class: ``12.345 KWD`` split in
    two reads as two values."""
    return format_html('<span class="nowrap">{}</span>', text)


def refunded_total() -> Coalesce:
    """The refunded total of the outer payment (its refunds that have not failed), as a
    correlated subquery: evaluated only for the rows a query returns."""
    refunds = (
        Refund.objects.filter(payment=OuterRef("pk"))
        .exclude(status=Refund.Status.FAILED)
        .order_by()
        .values("payment")
        .annotate(total=Sum("amount"))
        .values("total")
    )
    return Coalesce(Subquery(refunds), 0)


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


class ReadOnlyMixin:
    """The mirror is never edited, added to or deleted from by hand; viewing is as usual."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


def _has_model_perm(request: HttpRequest, opts: Any, action: str) -> bool:
    codename = get_permission_codename(action, opts)
    return request.user.has_perm(f"{opts.app_label}.{codename}")


class AmountMixin:
    """An ``amount_display`` column: the amount in major units with its currency."""

    @admin.display(description=_("amount"), ordering="amount")
    def amount_display(self, obj: Payment | Refund) -> SafeString:
        return nowrap(format_amount(obj.amount, obj.currency))


READ_ONLY_INLINE = "admin/django_ledgepay/payment/read_only_inline.html"


class RefundInline(AmountMixin, ReadOnlyMixin, RefundInlineBase):
    model = Refund
    extra = 0
    can_delete = False
    show_change_link = True
    fields = ("ledgepay_id", "amount_display", "status", "reason", "created_at")
    readonly_fields = fields
    ordering = ("-created_at", "-id")
    # Django's tabular inline without the line above each row: read-only rows need no
    # name beside their fields (it repeated them); the LedgePay id links to the refund.
    template = READ_ONLY_INLINE
    empty_text = _("No refunds.")


def _change_link(obj: Any, text: object) -> SafeString:
    """A link to ``obj``'s admin page (the default site's)."""
    opts = obj._meta
    url = reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=(obj.pk,))
    return format_html('<a href="{}">{}</a>', url, text)


class TransitionInline(ReadOnlyMixin, TransitionInlineBase):
    """The payment's audit trail: each change that sent a signal, in order."""

    model = Transition
    extra = 0
    can_delete = False
    verbose_name = _("change")
    verbose_name_plural = _("history (each change that sent a signal)")
    fields = ("created_at", "signal", "refund", "source", "event_link", "actor", "delivery")
    readonly_fields = fields
    ordering = ("created_at", "id")
    template = READ_ONLY_INLINE
    empty_text = _("No changes that sent a signal yet.")

    def get_queryset(self, request: HttpRequest) -> QuerySet[Transition]:
        return super().get_queryset(request).select_related("refund", "event", "actor")

    @admin.display(description=_("webhook event"))
    def event_link(self, transition: Transition) -> SafeString | str:
        if transition.event is None:
            return "-"
        return _change_link(transition.event, transition.event.event_type)

    @admin.display(description=_("delivered"))
    def delivery(self, transition: Transition) -> SafeString:
        return _change_link(transition, delivery_state(transition))


class RefundRequestInline(ReadOnlyMixin, RefundRequestInlineBase):
    """Every refund asked of LedgePay for the payment: who asked, and what came of it.
    One whose outcome is unknown got no answer; the next refund sends it again first."""

    model = RefundRequest
    extra = 0
    can_delete = False
    verbose_name = _("refund request")
    verbose_name_plural = _("refund requests (who asked, and what came of it)")
    fields = ("created_at", "amount_display", "reason", "actor", "source", "outcome", "refund")
    readonly_fields = fields
    ordering = ("created_at", "id")
    template = READ_ONLY_INLINE
    empty_text = _("No refund requests.")

    def get_queryset(self, request: HttpRequest) -> QuerySet[RefundRequest]:
        return super().get_queryset(request).select_related("payment", "actor", "refund")

    @admin.display(description=_("amount"))
    def amount_display(self, request: RefundRequest) -> SafeString:
        return nowrap(format_amount(request.amount, request.payment.currency))


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


def delivery_state(transition: Transition) -> str:
    """Delivered, waiting, failing (with its attempts) or given up, in words."""
    if transition.delivered_at is not None:
        return str(_("delivered"))
    if not transition.attempts:
        return str(_("waiting"))
    if transition.next_attempt_at is None:
        return str(_("gave up after %(n)d attempts") % {"n": transition.attempts})
    return str(_("failing (%(n)d attempts)") % {"n": transition.attempts})


@admin.register(Payment)
class PaymentAdmin(AmountMixin, ReadOnlyMixin, PaymentAdminBase):
    # Fits 1280 px beside both sidebars: the status column says when the payment reached
    # its status (a completed column of its own pushed the dates behind a scroll).
    list_display = (
        "ledgepay_id",
        "amount_display",
        "refunded_display",
        "status_display",
        "customer",
        "created_display",
    )
    list_filter = (
        "status",
        ("currency", CurrencyListFilter),
        "created_at",
        UnresolvedRefundFilter,
    )
    search_fields = ("ledgepay_id", "customer_email", "customer_name", "description")
    readonly_fields = (
        "amount_display",
        "refunded_display",
        "refundable_display",
        "metadata_display",
    )
    fieldsets = (
        (
            None,
            {
                "fields": (
                    "ledgepay_id",
                    "status",
                    "amount_display",
                    "refunded_display",
                    "refundable_display",
                    "description",
                )
            },
        ),
        (_("Customer"), {"fields": ("customer_email", "customer_name")}),
        (
            _("Checkout"),
            {"fields": ("checkout_url", "success_url", "cancel_url", "metadata_display")},
        ),
        (_("Dates"), {"fields": ("created_at", "completed_at", "updated_at")}),
    )
    inlines = (RefundInline, RefundRequestInline, TransitionInline)
    actions = ("refund_payments", "resolve_refund_requests", "sync_payments")
    refund_template = "admin/django_ledgepay/payment/refund.html"
    refund_confirmation_template = (
        "admin/django_ledgepay/payment/refund_selected_confirmation.html"
    )

    def get_queryset(self, request: HttpRequest) -> QuerySet[Payment]:
        # The refunded total comes with each row (no query per row in the list), as a
        # subquery per row rather than a join: the list's count, its filters and its
        # page then never read the refunds, and only the rows shown compute their total.
        return super().get_queryset(request).annotate(annotated_amount_refunded=refunded_total())

    # Columns and fields

    @admin.display(description=_("refunded"), ordering="annotated_amount_refunded")
    def refunded_display(self, payment: Payment) -> SafeString:
        return nowrap(format_amount(payment.amount_refunded, payment.currency))

    @admin.display(description=_("left to refund"))
    def refundable_display(self, payment: Payment) -> str:
        return format_amount(payment.refundable_amount, payment.currency)

    @admin.display(description=_("customer"), ordering="customer_email")
    def customer(self, payment: Payment) -> str:
        if payment.customer_name and payment.customer_email:
            return f"{payment.customer_name} <{payment.customer_email}>"
        return payment.customer_name or payment.customer_email

    @admin.display(description=_("status"), ordering="status")
    def status_display(self, payment: Payment) -> SafeString:
        """The status and, once final, when it was reached."""
        completed = _day_and_time(payment.completed_at)
        if completed is None:
            return format_html("{}", payment.get_status_display())
        return format_html(
            '{} <br><span class="quiet">{}</span>', payment.get_status_display(), completed
        )

    @admin.display(description=_("created"), ordering="created_at")
    def created_display(self, payment: Payment) -> SafeString | None:
        return _day_and_time(payment.created_at)

    @admin.display(description=_("completed"), ordering="completed_at")
    def completed_display(self, payment: Payment) -> SafeString | None:
        return _day_and_time(payment.completed_at)

    @admin.display(description=_("metadata"))
    def metadata_display(self, payment: Payment) -> SafeString:
        return pretty_json(payment.metadata)

    # Permissions

    def has_refund_permission(self, request: HttpRequest, obj: Payment | None = None) -> bool:
        """``django_ledgepay.refund_payment``: the action, the button and the page."""
        return _has_model_perm(request, self.opts, "refund")

    def has_sync_permission(self, request: HttpRequest, obj: Payment | None = None) -> bool:
        """``django_ledgepay.change_payment``: a sync writes to the mirror and sends signals."""
        return _has_model_perm(request, self.opts, "change")

    # The change page's "Refund" button

    def render_change_form(
        self,
        request: HttpRequest,
        context: dict[str, Any],
        add: bool = False,
        change: bool = False,
        form_url: str = "",
        obj: Payment | None = None,
    ) -> HttpResponse:
        context["can_refund"] = (
            obj is not None
            and obj.refundable_amount > 0
            and self.has_refund_permission(request, obj)
        )
        return super().render_change_form(request, context, add, change, form_url, obj)

    # The refund page

    def get_urls(self) -> list[URLPattern]:
        info = (self.opts.app_label, self.opts.model_name)
        urls = [
            path(
                "dashboard/",
                self.admin_site.admin_view(partial(dashboard.dashboard_view, model_admin=self)),
                name="{}_{}_dashboard".format(*info),
            ),
            path(
                "<path:object_id>/refund/",
                self.admin_site.admin_view(self.refund_view),
                name="{}_{}_refund".format(*info),
            ),
        ]
        return urls + super().get_urls()

    def refund_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """Refund part or all of one payment; the form checks the amount before any call."""
        # The page shows the payment and its customer: seeing it takes the view permission.
        if not (self.has_refund_permission(request) and self.has_view_permission(request)):
            raise PermissionDenied
        payment = self.get_object(request, unquote(object_id))
        if payment is None:
            raise Http404(_("There is no payment with this id."))
        form = RefundForm(request.POST if request.method == "POST" else None, payment=payment)
        if request.method == "POST" and form.is_valid():
            try:
                with reactions.origin(Transition.Source.ADMIN, actor=request.user):
                    refund = self._refund_once(
                        payment,
                        amount=form.cleaned_data["amount"],
                        reason=form.cleaned_data["reason"],
                        refunded_before=form.cleaned_data["refunded_before"],
                    )
            except (LedgePayError, OperationalError) as err:
                error = self._refund_error(err)
                # Show the payment as it is now, and check the amount against it.
                payment = self.get_object(request, unquote(object_id)) or payment
                form = RefundForm(request.POST, payment=payment)
                form.full_clean()
                form.add_error(None, error)
            else:
                self.message_user(
                    request, self._refunded_message(payment, refund), messages.SUCCESS
                )
                change_url = f"{self.admin_site.name}:{self.opts.app_label}_payment_change"
                return HttpResponseRedirect(reverse(change_url, args=(payment.pk,)))
        if form.is_bound:
            # Submitted again, the form stands for the refunds shown on this page.
            data = request.POST.copy()
            data["refunded_before"] = str(payment.amount_refunded)
            form.data = data
        unrefundable = unrefundable_reason(payment)
        # The note "Please correct ..." is for mistakes in what was typed, not for a payment
        # that cannot be refunded or a LedgePay that could not be reached.
        field_errors = 0 if unrefundable else sum(1 for f in form.visible_fields() if f.errors)
        context = {
            **self.admin_site.each_context(request),
            "title": _("Refund %(payment)s") % {"payment": payment.ledgepay_id},
            "subtitle": None,
            "opts": self.opts,
            "payment": payment,
            "original": payment,
            "form": form,
            "field_errors": field_errors,
            "unrefundable_reason": unrefundable,
            "customer": self.customer(payment) or self.get_empty_value_display(),
            "amount_display": format_amount(payment.amount, payment.currency),
            "refunded_display": format_amount(payment.amount_refunded, payment.currency),
            # What is left means something only for a payment that succeeded; any other
            # shows why it cannot be refunded instead.
            "show_refundable": payment.status == Payment.Status.SUCCEEDED,
            "refundable_display": self.refundable_display(payment),
            "has_view_permission": self.has_view_permission(request, payment),
            "media": self.media + form.media,
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, self.refund_template, context)

    def _refund_once(
        self, payment: Payment, *, amount: int, reason: str, refunded_before: int
    ) -> Refund:
        """Refund unless the payment's refunds changed since the form was drawn.

        refund_payment() compares them under the payment's row lock, held through the
        refund, so of two submits of the same form the second finds the first's refund and
        refunds nothing.
        """
        try:
            return services.refund_payment(
                payment, amount=amount, reason=reason, expected_refunded=refunded_before
            )
        except RefundsChangedError as err:
            raise RefundError(
                str(
                    _(
                        "The payment's refunds changed since this page was loaded "
                        "(%(was)s refunded then, %(now)s now); check the amount and "
                        "submit again."
                    )
                    % {
                        "was": format_amount(err.expected, payment.currency),
                        "now": format_amount(err.refunded, payment.currency),
                    }
                )
            ) from err

    @staticmethod
    def _refund_error(err: LedgePayError | OperationalError) -> str:
        """The refund page's error for ``err``: refused, or only not made for now."""
        if isinstance(err, OperationalError):
            return PaymentAdmin._database_error(err)
        if isinstance(err, RefundError):
            return str(err)
        if isinstance(err, (InvalidRequestError, AuthenticationError, NotFoundError)):
            # LedgePay answered with a 4xx: the same request would be refused again.
            return str(_("LedgePay refused the refund: %(error)s") % {"error": err})
        # No answer, a 5xx or the rate limit: the refund may have been made or not. The
        # idempotency key comes from the payment's refunds and the amount, so the same
        # amount submitted again gets LedgePay's first refund back rather than a second.
        return str(
            _(
                "The refund could not be made now: %(error)s Submitting the same amount "
                "again is safe: it will not refund twice."
            )
            % {"error": err}
        )

    @staticmethod
    def _database_error(err: OperationalError) -> str:
        # Another refund of the payment at the same moment (at PostgreSQL's stricter
        # isolation levels), or a lock that timed out. LedgePay may have acted: its webhooks
        # bring any refund it made into the mirror.
        return str(
            _(
                "The database could not complete the refund (another refund of this payment "
                "at the same moment, or a busy database): %(error)s. Load the payment again: "
                "its refunds show what was made."
            )
            % {"error": err}
        )

    @staticmethod
    def _refunded_message(payment: Payment, refund: Refund) -> str:
        return str(
            _("Refunded %(amount)s of %(payment)s (refund %(refund)s, %(status)s).")
            % {
                "amount": format_amount(refund.amount, refund.currency),
                "payment": payment.ledgepay_id,
                "refund": refund.ledgepay_id,
                "status": refund.status,
            }
        )

    # Actions

    @admin.action(description=_("Refund selected payments in full"), permissions=("refund",))
    def refund_payments(
        self, request: HttpRequest, queryset: QuerySet[Payment]
    ) -> TemplateResponse | None:
        """Show what will be refunded and what skipped; on ``post=yes``, refund the rest of
        each eligible payment, with one message per payment."""
        if queryset.count() > ACTION_LIMIT:
            self.message_user(
                request,
                _("Select at most %(limit)s payments to refund at once.")
                % {"limit": ACTION_LIMIT},
                messages.ERROR,
            )
            return None
        payments = list(queryset)
        reason_form = RefundReasonForm(request.POST if request.POST.get("post") else None)
        if request.POST.get("post") == "yes" and reason_form.is_valid():
            reason = reason_form.cleaned_data["reason"]
            for payment in payments:
                self._refund_in_full(request, payment, reason)
            return None
        eligible = [
            (payment, format_amount(payment.refundable_amount, payment.currency))
            for payment in payments
            if not unrefundable_reason(payment)
        ]
        skipped = [
            (payment, unrefundable_reason(payment))
            for payment in payments
            if unrefundable_reason(payment)
        ]
        context = {
            **self.admin_site.each_context(request),
            "title": _("Refund selected payments in full"),
            "subtitle": None,
            "opts": self.opts,
            "payments": payments,
            "eligible": eligible,
            "skipped": skipped,
            "reason_form": reason_form,
            "action_checkbox_name": ACTION_CHECKBOX_NAME,
            # The action was posted to the list with its filters: back to the same list.
            "changelist_url": request.get_full_path(),
            "media": self.media,
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, self.refund_confirmation_template, context)

    def _refund_in_full(self, request: HttpRequest, payment: Payment, reason: str) -> None:
        skip = unrefundable_reason(payment)
        if skip:
            self.message_user(
                request,
                _("Skipped %(payment)s: %(reason)s.")
                % {"payment": payment.ledgepay_id, "reason": skip},
                messages.WARNING,
            )
            return
        try:
            with reactions.origin(Transition.Source.ADMIN, actor=request.user):
                refund = services.refund_payment(payment, reason=reason)
        except RefundError as err:
            self.message_user(
                request,
                _("Skipped %(payment)s: %(error)s")
                % {"payment": payment.ledgepay_id, "error": err},
                messages.WARNING,
            )
        except (LedgePayError, OperationalError) as err:
            error = self._database_error(err) if isinstance(err, OperationalError) else err
            self.message_user(
                request,
                _("Could not refund %(payment)s: %(error)s")
                % {"payment": payment.ledgepay_id, "error": error},
                messages.ERROR,
            )
        else:
            self.message_user(request, self._refunded_message(payment, refund), messages.SUCCESS)

    @admin.action(description=_("Resolve unanswered refund requests now"), permissions=("refund",))
    def resolve_refund_requests(self, request: HttpRequest, queryset: QuerySet[Payment]) -> None:
        """Send each selected payment's unknown refund requests again, with their own keys."""
        payments = list(
            queryset.filter(refund_requests__outcome=RefundRequest.Outcome.UNKNOWN).distinct()[
                : ACTION_LIMIT + 1
            ]
        )
        if len(payments) > ACTION_LIMIT:
            self.message_user(
                request,
                _("Select at most %(limit)s payments at once.") % {"limit": ACTION_LIMIT},
                messages.ERROR,
            )
            return
        if not payments:
            self.message_user(
                request, _("None of the selected payments has an unresolved refund request.")
            )
            return
        for payment in payments:
            try:
                with reactions.origin(Transition.Source.ADMIN, actor=request.user):
                    resolved = services.resolve_refund_requests(payment)
            except (LedgePayError, OperationalError) as err:
                self.message_user(
                    request,
                    _("Could not resolve %(payment)s: %(error)s")
                    % {"payment": payment.ledgepay_id, "error": err},
                    messages.ERROR,
                )
                continue
            made = sum(1 for r in resolved if r.outcome == RefundRequest.Outcome.MADE)
            self.message_user(
                request,
                _("%(payment)s: %(made)d refund request(s) made, %(refused)d refused.")
                % {
                    "payment": payment.ledgepay_id,
                    "made": made,
                    "refused": len(resolved) - made,
                },
                messages.SUCCESS,
            )

    @admin.action(description=_("Sync from LedgePay"), permissions=("sync",))
    def sync_payments(self, request: HttpRequest, queryset: QuerySet[Payment]) -> None:
        """Fetch each selected payment from LedgePay and apply it to the mirror.

        Only the selection: mirroring everything is ``manage.py ledgepay_sync``'s job, which
        pages through LedgePay's list rather than asking for payments one by one.
        """
        if queryset.count() > ACTION_LIMIT:
            self.message_user(
                request,
                _(
                    "Select at most %(limit)s payments to sync; for more, run "
                    "“manage.py ledgepay_sync”."
                )
                % {"limit": ACTION_LIMIT},
                messages.ERROR,
            )
            return
        synced = 0
        for payment in queryset:
            before = payment.status
            try:
                with reactions.origin(Transition.Source.ADMIN, actor=request.user):
                    fresh = services.sync_payment(payment)
            except LedgePayError as err:
                self.message_user(
                    request,
                    _("Could not sync %(payment)s: %(error)s")
                    % {"payment": payment.ledgepay_id, "error": err},
                    messages.ERROR,
                )
                continue
            synced += 1
            if fresh.status != before:
                self.message_user(
                    request,
                    _("Payment %(payment)s is now %(status)s (was %(before)s).")
                    % {"payment": payment.ledgepay_id, "status": fresh.status, "before": before},
                    messages.INFO,
                )
        if synced:
            self.message_user(
                request,
                ngettext(
                    "Synced %(count)d payment from LedgePay.",
                    "Synced %(count)d payments from LedgePay.",
                    synced,
                )
                % {"count": synced},
                messages.SUCCESS,
            )


@admin.register(Refund)
class RefundAdmin(AmountMixin, ReadOnlyMixin, RefundAdminBase):
    list_display = (
        "ledgepay_id",
        "payment_link",
        "amount_display",
        "status",
        "reason",
        "created_display",
    )
    list_filter = ("status", "reason", ("currency", CurrencyListFilter), "created_at")
    search_fields = ("ledgepay_id", "payment__ledgepay_id", "payment__customer_email")
    list_select_related = ("payment",)
    fields = (
        "ledgepay_id",
        "payment_link",
        "amount_display",
        "status",
        "reason",
        "created_at",
        "updated_at",
    )
    readonly_fields = ("payment_link", "amount_display")

    @admin.display(description=_("payment"), ordering="payment__ledgepay_id")
    def payment_link(self, refund: Refund) -> SafeString:
        url = reverse(
            f"{self.admin_site.name}:{self.opts.app_label}_payment_change",
            args=(refund.payment_id,),
        )
        return format_html('<a href="{}">{}</a>', url, refund.payment.ledgepay_id)

    @admin.display(description=_("created"), ordering="created_at")
    def created_display(self, refund: Refund) -> SafeString | None:
        # Short, and breaking between day and time: the list fits 1280 px.
        return _day_and_time(refund.created_at)


@admin.register(WebhookEvent)
class WebhookEventAdmin(ReadOnlyMixin, WebhookEventAdminBase):
    list_display = (
        "event_type",
        "object_id",
        "status",
        "attempts",
        "received_at",
        "processed_at",
        "error_excerpt",
    )
    list_filter = ("status", "event_type", "received_at")
    search_fields = ("object_id", "event_type")
    fields = (
        "event_type",
        "object_id",
        "status",
        "attempts",
        "received_at",
        "processed_at",
        "error",
        "payload_display",
        "body_sha256",
    )
    readonly_fields = ("payload_display",)
    actions = ("process_events",)

    @admin.display(description=_("error"))
    def error_excerpt(self, event: WebhookEvent) -> str:
        return Truncator(event.error).chars(80)

    @admin.display(description=_("payload"))
    def payload_display(self, event: WebhookEvent) -> SafeString:
        return pretty_json(event.payload)

    def has_process_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        """``django_ledgepay.change_webhookevent``: applying an event changes the mirror."""
        return _has_model_perm(request, self.opts, "change")

    @admin.action(description=_("Process selected events again"), permissions=("process",))
    def process_events(self, request: HttpRequest, queryset: QuerySet[WebhookEvent]) -> None:
        if queryset.count() > ACTION_LIMIT:
            self.message_user(
                request,
                _(
                    "Select at most %(limit)s events to process at once; for more, run "
                    "“manage.py ledgepay_reprocess”."
                )
                % {"limit": ACTION_LIMIT},
                messages.ERROR,
            )
            return
        counts: dict[str, int] = {}
        for event in queryset:
            webhooks.process_event(event)
            counts[event.status] = counts.get(event.status, 0) + 1
            if event.status == WebhookEvent.Status.FAILED:
                self.message_user(
                    request,
                    _("Event %(event)s (%(type)s) failed: %(error)s")
                    % {"event": event.pk, "type": event.event_type, "error": event.error},
                    messages.ERROR,
                )
        summary = ", ".join(f"{count} {status}" for status, count in sorted(counts.items()))
        total = sum(counts.values())
        self.message_user(
            request,
            ngettext(
                "Processed %(count)d event again: %(summary)s.",
                "Processed %(count)d events again: %(summary)s.",
                total,
            )
            % {"count": total, "summary": summary},
            messages.SUCCESS if WebhookEvent.Status.FAILED not in counts else messages.WARNING,
        )


class ReactionInline(ReadOnlyMixin, ReactionInlineBase):
    """Each receiver's delivery: when it succeeded, or its attempts and last traceback."""

    model = Reaction
    extra = 0
    can_delete = False
    fields = ("receiver", "succeeded_at", "attempts", "last_attempt_at", "traceback")
    readonly_fields = fields

    @admin.display(description=_("last error"))
    def traceback(self, reaction: Reaction) -> SafeString | str:
        if not reaction.error:
            return ""
        return format_html('<pre class="ledgepay-traceback">{}</pre>', reaction.error)


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


@admin.register(Transition)
class TransitionAdmin(ReadOnlyMixin, TransitionAdminBase):
    list_display = (
        "created_at",
        "signal",
        "payment_link",
        "source",
        "actor",
        "delivery",
        "next_attempt_at",
    )
    list_filter = (DeliveryFilter, "signal", "source", "created_at")
    search_fields = ("payment__ledgepay_id", "refund__ledgepay_id")
    list_select_related = ("payment", "actor")
    fields = (
        "signal",
        "payment_link",
        "refund",
        "source",
        "event",
        "actor",
        "created_at",
        "delivered_at",
        "attempts",
        "next_attempt_at",
        "error_display",
    )
    readonly_fields = ("payment_link", "error_display")
    inlines = (ReactionInline,)
    actions = ("deliver_transitions",)

    @admin.display(description=_("payment"), ordering="payment__ledgepay_id")
    def payment_link(self, transition: Transition) -> SafeString:
        return _change_link(transition.payment, transition.payment.ledgepay_id)

    @admin.display(description=_("delivery"))
    def delivery(self, transition: Transition) -> str:
        return delivery_state(transition)

    @admin.display(description=_("error"))
    def error_display(self, transition: Transition) -> SafeString | str:
        if not transition.error:
            return ""
        return format_html('<pre class="ledgepay-traceback">{}</pre>', transition.error)

    def has_deliver_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        """``django_ledgepay.change_transition``: delivering runs the project's receivers."""
        return _has_model_perm(request, self.opts, "change")

    @admin.action(description=_("Deliver selected transitions again"), permissions=("deliver",))
    def deliver_transitions(self, request: HttpRequest, queryset: QuerySet[Transition]) -> None:
        if queryset.count() > ACTION_LIMIT:
            self.message_user(
                request,
                _(
                    "Select at most %(limit)s transitions at once; for more, run "
                    "“manage.py ledgepay_deliver --all”."
                )
                % {"limit": ACTION_LIMIT},
                messages.ERROR,
            )
            return
        delivered = 0
        for transition_id in queryset.filter(delivered_at__isnull=True).values_list(
            "pk", flat=True
        ):
            outcome = reactions.deliver(transition_id)
            if outcome.delivered:
                delivered += 1
            elif outcome.transition is not None:
                self.message_user(
                    request,
                    _("Transition %(id)s: %(receivers)s raised again; see its error.")
                    % {"id": transition_id, "receivers": ", ".join(outcome.failed)},
                    messages.ERROR,
                )
        self.message_user(
            request,
            ngettext(
                "Delivered %(count)d transition.",
                "Delivered %(count)d transitions.",
                delivered,
            )
            % {"count": delivered},
            messages.SUCCESS,
        )
