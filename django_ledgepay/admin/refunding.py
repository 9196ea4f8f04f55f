"""Refunding from the payments admin: the Refund page (and its button on a payment's page),
the action that refunds selected payments in full after a confirmation page, and the action
that sends unanswered refund requests again. Each refund goes through
:func:`django_ledgepay.services.refund_payment`, with the staff member as its actor."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.db import OperationalError
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.translation import gettext_lazy as _

from django_ledgepay import reactions, services
from django_ledgepay.admin.display import customer
from django_ledgepay.admin.permissions import ACTION_LIMIT, has_model_perm
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
from django_ledgepay.models import Payment, Refund, RefundRequest, Transition

if TYPE_CHECKING:
    # The admin's classes are generic only in django-stubs, not at run time.
    PaymentAdminBase = admin.ModelAdmin[Payment]
else:
    PaymentAdminBase = admin.ModelAdmin


class RefundingAdmin(PaymentAdminBase):
    """The refund page, button and actions of a payments admin (``PaymentAdmin`` is one).

    All of them need ``django_ledgepay.refund_payment``: staff without it neither see them
    nor can post them.
    """

    refund_template = "admin/django_ledgepay/payment/refund.html"
    refund_confirmation_template = (
        "admin/django_ledgepay/payment/refund_selected_confirmation.html"
    )

    def has_refund_permission(self, request: HttpRequest, obj: Payment | None = None) -> bool:
        """``django_ledgepay.refund_payment``: the action, the button and the page."""
        return has_model_perm(request, self.opts, "refund")

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
                error = _refund_error(err)
                # Show the payment as it is now, and check the amount against it.
                payment = self.get_object(request, unquote(object_id)) or payment
                form = RefundForm(request.POST, payment=payment)
                form.full_clean()
                form.add_error(None, error)
            else:
                self.message_user(request, _refunded_message(payment, refund), messages.SUCCESS)
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
            "customer": customer(payment) or self.get_empty_value_display(),
            "amount_display": format_amount(payment.amount, payment.currency),
            "refunded_display": format_amount(payment.amount_refunded, payment.currency),
            # What is left means something only for a payment that succeeded; any other
            # shows why it cannot be refunded instead.
            "show_refundable": payment.status == Payment.Status.SUCCEEDED,
            "refundable_display": format_amount(payment.refundable_amount, payment.currency),
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
            error = _database_error(err) if isinstance(err, OperationalError) else err
            self.message_user(
                request,
                _("Could not refund %(payment)s: %(error)s")
                % {"payment": payment.ledgepay_id, "error": error},
                messages.ERROR,
            )
        else:
            self.message_user(request, _refunded_message(payment, refund), messages.SUCCESS)

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


def _refund_error(err: LedgePayError | OperationalError) -> str:
    """The refund page's error for ``err``: refused, or only not made for now."""
    if isinstance(err, OperationalError):
        return _database_error(err)
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
