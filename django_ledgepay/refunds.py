"""Refunding: each request recorded before LedgePay is called, checked under the payment's
lock, and one whose answer was lost resolved before anything new."""

from __future__ import annotations

import datetime
import logging
import time
import uuid
from collections.abc import Mapping
from typing import Any, Final

from django.db import transaction
from django.db.models import Sum
from django.db.models.functions import Coalesce
from django.utils import timezone

from django_ledgepay import transitions
from django_ledgepay.client import (
    BACKOFF_CAP,
    RATE_LIMIT_WAIT_CAP,
    get_client,
)
from django_ledgepay.conf import conf
from django_ledgepay.currencies import format_amount
from django_ledgepay.exceptions import (
    APIError,
    InvalidRequestError,
    LedgePayError,
    LedgePayUnavailableError,
    NotFoundError,
    RefundError,
    RefundsChangedError,
    RefundUnresolvedError,
)
from django_ledgepay.mirror.orm import RefusedNews, apply_refund, fetch_payment
from django_ledgepay.mirror.values import refund_values
from django_ledgepay.models import (
    Payment,
    Refund,
    RefundRequest,
)
from django_ledgepay.payments import MAX_IDEMPOTENCY_KEY_LENGTH, check_idempotency_key

logger = logging.getLogger("django_ledgepay.services")


def refund_payment(
    payment_or_ledgepay_id: Payment | str,
    *,
    amount: int | None = None,
    reason: str = Refund.Reason.CUSTOMER_REQUEST,
    idempotency_key: str | None = None,
    expected_refunded: int | None = None,
) -> Refund:
    """Refund ``amount`` minor units of a succeeded payment, or all that is left when None.

    The request is recorded (:class:`~django_ledgepay.models.RefundRequest`) with its
    idempotency key before LedgePay is called. A call that ends without an answer leaves
    it unknown; the next refund of the payment first sends it again with its own key, and a
    call for the same amount (or again for the rest) returns the refund it made instead of
    making a second one, whatever webhooks arrived in between. So retrying a call that
    failed is safe without a key of your own. While LedgePay stays unreachable, that next
    call raises RefundUnresolvedError and sends nothing new.

    The payment's row is locked while the refundable amount is checked, so two clicks
    cannot refund twice: the second waits, then sees less left (a request still in flight
    counts as refunded). A refund that cannot be made raises RefundError before any call.
    Pass ``idempotency_key`` to tie the refund to a request of yours (``f"return-{rma.pk}"``):
    a repeated call with it never refunds twice.

    ``expected_refunded`` is what the caller saw refunded already (a form's hidden field):
    when the payment's refunds add up to something else, under the lock, RefundError is
    raised and nothing is refunded, so a form submitted twice refunds once.
    """
    if idempotency_key is not None:
        check_idempotency_key(idempotency_key)
    if reason not in Refund.Reason.values:
        raise RefundError(f"reason must be one of {', '.join(Refund.Reason.values)}.")
    if amount is not None and (not isinstance(amount, int) or isinstance(amount, bool)):
        raise RefundError("amount must be an integer of minor units, or None for the rest.")
    if isinstance(payment_or_ledgepay_id, str) and not (
        Payment.objects.filter(ledgepay_id=payment_or_ledgepay_id).exists()
    ):
        fetch_payment(payment_or_ledgepay_id)
    where = transitions.current_origin()
    deadline = time.monotonic() + IN_FLIGHT_WAIT
    while True:
        try:
            return _try_refund(
                payment_or_ledgepay_id,
                amount=amount,
                reason=reason,
                idempotency_key=idempotency_key,
                expected_refunded=expected_refunded,
                where=where,
            )
        except _InFlight as err:
            # The same refund is being sent by another call (a second click): wait for it,
            # then look again, as a second click waiting for a row lock would.
            if time.monotonic() >= deadline:
                raise err.error from None
            time.sleep(IN_FLIGHT_POLL)


#: How long a refund waits for the same refund, being sent by another call, to finish.
IN_FLIGHT_WAIT: Final = 30.0


IN_FLIGHT_POLL: Final = 0.05


class _InFlight(Exception):
    def __init__(self, error: RefundUnresolvedError) -> None:
        self.error = error


def _try_refund(
    payment_or_ledgepay_id: Payment | str,
    *,
    amount: int | None,
    reason: str,
    idempotency_key: str | None,
    expected_refunded: int | None,
    where: transitions.Origin,
) -> Refund:
    refused: RefundError | _InFlight | None = None
    with transaction.atomic():
        try:
            payment = _locked_payment(payment_or_ledgepay_id)
            # What an earlier call left unknown is settled before anything new is asked.
            _resolve_unknown(payment, amount=amount, reason=reason)
            if idempotency_key is None:
                # A request whose caller never got its answer, resolved now or by another call
                # since (a refund of the same payment, resolve_refund_requests, a reconcile):
                # a keyless call for the same refund is that caller's retry.
                for request in payment.refund_requests.filter(
                    outcome=RefundRequest.Outcome.MADE, answered=False, reason=reason
                ).order_by("pk"):
                    if _asks_for(request, amount, reason):
                        return _answer_request(request)
            else:
                earlier = RefundRequest.objects.filter(idempotency_key=idempotency_key).first()
                if earlier is not None and earlier.refund is not None:
                    return _answer_request(earlier)  # The same request, made already.
            request = _new_refund_request(
                payment,
                amount=amount,
                reason=reason,
                idempotency_key=idempotency_key,
                expected_refunded=expected_refunded,
                where=where,
            )
        except (RefundError, _InFlight) as err:
            # Refused before anything new was written: what was settled above (an earlier
            # request resolved, an attempt recorded) is committed all the same, or the next
            # call would find it unknown again and be refused again.
            refused = err
    if refused is not None:
        raise refused
    # The request is committed before the call, marked as being sent: if this process
    # dies during the call, the next refund of the payment resolves it once the mark is
    # older than any call can take.
    try:
        outcome = _send_refund_request(request, payment, answered=True)
    except BaseException:
        # Anything else (the database failing while the answer is recorded): no longer
        # being sent, so the next call resolves it at once instead of after the lease.
        RefundRequest.objects.filter(pk=request.pk, outcome=RefundRequest.Outcome.UNKNOWN).update(
            sending_since=None
        )
        raise
    if isinstance(outcome, LedgePayError):
        raise outcome  # Refused (the request is recorded so), or no answer (it stays unknown).
    return outcome


def resolve_refund_requests(payment_or_ledgepay_id: Payment | str) -> list[RefundRequest]:
    """Send each unknown refund request of the payment again with its own key and record
    what LedgePay answers; return them. RefundUnresolvedError while LedgePay cannot be
    reached (the requests stay unknown)."""
    with transaction.atomic():
        payment = _locked_payment(payment_or_ledgepay_id)
        return _resolve_unknown(payment)


def _answer_request(request: RefundRequest) -> Refund:
    """The refund ``request`` made, recorded as handed to a caller."""
    assert request.refund is not None
    if not request.answered:
        RefundRequest.objects.filter(pk=request.pk).update(answered=True)
        request.answered = True
    return request.refund


def _asks_for(request: RefundRequest, amount: int | None, reason: str) -> bool:
    """Whether a call for ``amount`` (None: the rest) and ``reason`` asks what ``request``
    asked: the same amount, or the rest again."""
    if request.reason != reason:
        return False
    return request.whole if amount is None else request.amount == amount and not request.whole


def sending_lease() -> datetime.timedelta:
    """The longest one refund call can take, its retries and waits included: a request
    marked as being sent for longer than this was left by a process that died."""
    attempts = conf.LEDGEPAY_MAX_RETRIES + 1
    per_attempt = 2 * conf.LEDGEPAY_TIMEOUT + max(BACKOFF_CAP, RATE_LIMIT_WAIT_CAP)
    return datetime.timedelta(seconds=attempts * per_attempt + 30)


def _resolve_unknown(
    payment: Payment, *, amount: int | None = None, reason: str | None = None
) -> list[RefundRequest]:
    """Send the payment's unknown refund requests again (under the payment's lock) and
    return those resolved now. A request another call is sending is left to it, unless it
    is what this call asks again (same amount and reason): then RefundUnresolvedError."""
    abandoned = timezone.now() - sending_lease()
    unknown = RefundRequest.objects.filter(
        payment=payment, outcome=RefundRequest.Outcome.UNKNOWN
    ).order_by("pk")
    resolved = []
    for request in unknown:
        if request.sending_since is not None and request.sending_since > abandoned:
            if reason is not None and _asks_for(request, amount, reason):
                raise _InFlight(
                    RefundUnresolvedError(
                        f"A refund of {format_amount(request.amount, payment.currency)} of "
                        f"payment {payment.ledgepay_id} is being sent right now; wait for "
                        "it and load the payment again. Nothing new was sent."
                    )
                )
            continue  # In flight elsewhere; its amount is held back from what is left.
        outcome = _send_refund_request(request, payment)
        if isinstance(outcome, LedgePayError) and request.outcome == RefundRequest.Outcome.UNKNOWN:
            raise RefundUnresolvedError(
                f"A refund of payment {payment.ledgepay_id} "
                f"({format_amount(request.amount, payment.currency)}) is being resolved: "
                f"LedgePay gave no answer it could use ({outcome}). Nothing new was sent; try "
                "again once LedgePay can be reached.",
                http_status=outcome.http_status,
            ) from outcome
        resolved.append(request)
    return resolved


def _new_refund_request(
    payment: Payment,
    *,
    amount: int | None,
    reason: str,
    idempotency_key: str | None,
    expected_refunded: int | None,
    where: transitions.Origin,
) -> RefundRequest:
    """Check the refund under the payment's lock and record its request."""
    if payment.status != Payment.Status.SUCCEEDED:
        raise RefundError(f"Payment {payment.ledgepay_id} is {payment.status}, not succeeded.")
    refunded = payment.amount_refunded
    if expected_refunded is not None and refunded != expected_refunded:
        raise RefundsChangedError(
            f"The refunds of payment {payment.ledgepay_id} changed: {refunded} refunded "
            f"now, {expected_refunded} expected (minor units). Check and try again.",
            expected=expected_refunded,
            refunded=refunded,
        )
    in_flight = RefundRequest.objects.filter(
        payment=payment, outcome=RefundRequest.Outcome.UNKNOWN
    ).aggregate(total=Coalesce(Sum("amount"), 0))["total"]
    refundable = max(0, payment.amount - refunded - in_flight)
    if refundable == 0:
        if in_flight:
            raise RefundError(
                f"Payment {payment.ledgepay_id} has a refund in progress for all that is "
                "left; wait for it and load the payment again."
            )
        raise RefundError(f"Payment {payment.ledgepay_id} is already refunded in full.")
    whole = amount is None
    if amount is None:
        amount = refundable
    if not 1 <= amount <= refundable:
        raise RefundError(
            f"The refund must be between 1 and {refundable} (minor units), not {amount}."
        )
    key = idempotency_key or f"refund-{payment.ledgepay_id}-{uuid.uuid4().hex}"
    if len(key) > MAX_IDEMPOTENCY_KEY_LENGTH:
        key = f"refund-{uuid.uuid4().hex}"
    request, created = RefundRequest.objects.get_or_create(
        idempotency_key=key,
        defaults={
            "payment": payment,
            "amount": amount,
            "whole": whole,
            "reason": reason,
            "source": where.source,
            "actor": where.actor,
            "sending_since": timezone.now(),
        },
    )
    if not created:
        request.sending_since = timezone.now()
        request.save(update_fields=["sending_since"])
    # The payment's row is written under its lock: under REPEATABLE READ or SERIALIZABLE a
    # refund waiting for that lock then fails to serialize, instead of reading a snapshot
    # without this request and asking again.
    Payment.objects.filter(pk=payment.pk).update(updated_at=timezone.now())
    return request


def _send_refund_request(
    request: RefundRequest, payment: Payment, *, answered: bool = False
) -> Refund | LedgePayError:
    """Send ``request`` with its key and record what came of it: the refund LedgePay made
    (``answered`` when its own caller gets it now); or the error, with the request refused
    (a 4xx: the same request would be refused again) or still unknown (no answer, a 5xx,
    the rate limit: LedgePay may have acted or not). Each record is its own transaction
    when called outside one."""
    params = {
        "payment_id": payment.ledgepay_id,
        "amount": request.amount,
        "reason": request.reason,
    }
    try:
        data = get_client().create_refund(params, idempotency_key=request.idempotency_key)
        if not isinstance(data.get("id"), str) or not data["id"]:
            raise APIError("LedgePay's answer to the refund has no id.")
        _check_refund_answer(data, params, payment.currency)
    except (InvalidRequestError, NotFoundError) as err:
        _record_attempt(
            request, outcome=RefundRequest.Outcome.REFUSED, error=str(err), resolved=True
        )
        return err
    except LedgePayUnavailableError as err:
        # The circuit breaker sent nothing. A request never sent before made nothing at
        # LedgePay: it is refused, and leaves nothing unresolved; one sent before stays
        # unknown, to be sent again once LedgePay answers.
        RefundRequest.objects.filter(pk=request.pk).update(error=str(err), sending_since=None)
        request.error, request.sending_since = str(err), None
        if request.attempts == 0:
            _record_attempt(
                request, outcome=RefundRequest.Outcome.REFUSED, error=str(err), resolved=True
            )
        return err
    except LedgePayError as err:
        # Unknown still, and no longer being sent: the next call resolves it at once.
        _record_attempt(request, error=str(err))
        return err
    sent = {"amount": request.amount, "currency": payment.currency, "reason": request.reason}
    try:
        with transaction.atomic():
            locked = Payment.objects.select_for_update().get(pk=payment.pk)
            refund, _ = apply_refund(data, payment=locked, known=sent)
            # A resend by another call leaves the refund for the caller's retry to collect.
            _record_attempt(
                request,
                outcome=RefundRequest.Outcome.MADE,
                refund=refund,
                answered=answered,
                error="",
                resolved=True,
            )
    except RefusedNews as refused:
        # LedgePay's answer cannot be true of the mirror (past the payment's amount, say):
        # not recorded; the request stays unknown, shown in the admin.
        _record_attempt(request, error=refused.note)
        return APIError(refused.note)
    return refund


def _check_refund_answer(data: Mapping[str, Any], asked: Mapping[str, Any], currency: str) -> None:
    """APIError when LedgePay's answer names another payment, amount or currency than the
    request: it is not recorded as the refund made (that would put a refund of another
    amount, or of another payment, in the mirror); the request stays unknown, shown in the
    admin, and is sent again with its key by the next refund of the payment."""
    expected = {**asked, "currency": currency}
    said = refund_values(data)  # Ill-typed values are left out: what was sent fills them.
    if isinstance(data.get("payment_id"), str):
        said["payment_id"] = data["payment_id"]
    wrong = [
        f"{name} {said[name]!r} instead of {expected[name]!r}"
        for name in ("payment_id", "amount", "currency")
        if name in said and said[name] != expected[name]
    ]
    if wrong:
        message = f"LedgePay's answer to the refund ({data['id']}) says {', '.join(wrong)}."
        logger.error(
            "%s Not recorded; the refund request stays unresolved.",
            message,
            extra={"ledgepay_refund": data["id"], "ledgepay_payment": asked["payment_id"]},
        )
        raise APIError(message)


def _record_attempt(request: RefundRequest, *, resolved: bool = False, **fields: Any) -> None:
    """Save one sending of ``request``, no longer being sent, with ``fields``."""
    for name, value in fields.items():
        setattr(request, name, value)
    request.attempts += 1
    request.sending_since = None
    if resolved:
        request.resolved_at = timezone.now()
    names = [*fields, "attempts", "sending_since", *(["resolved_at"] if resolved else [])]
    request.save(update_fields=names)


def _locked_payment(payment_or_ledgepay_id: Payment | str) -> Payment:
    payments = Payment.objects.select_for_update()
    try:
        if isinstance(payment_or_ledgepay_id, Payment):
            return payments.get(pk=payment_or_ledgepay_id.pk)
        return payments.get(ledgepay_id=payment_or_ledgepay_id)
    except Payment.DoesNotExist as err:
        raise RefundError(f"There is no payment {payment_or_ledgepay_id}.") from err
