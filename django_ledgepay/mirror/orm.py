"""The general path of the mirror's writers: LedgePay's news applied through the ORM.

Every change that the SQL statements of :mod:`django_ledgepay.mirror.sql` do not make comes
here: the row is locked, the rulebook (:mod:`django_ledgepay.mirror.rules`) decides, and
the decision is written with its transitions in one transaction. One path for payment news
(webhooks, syncs, answers to calls) and one for refund news.

Locks are taken in one order everywhere: a payment's row before its refunds' rows
(:func:`lock_payment` first, then :func:`lock_refund`).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import F, Model, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from django_ledgepay import transitions
from django_ledgepay.client import get_client
from django_ledgepay.mirror import rules
from django_ledgepay.mirror.rules import Decision, PaymentFacts, Verdict
from django_ledgepay.mirror.values import IncompleteDataError, payment_values, refund_values
from django_ledgepay.models import Payment, Refund, Transition, WebhookEvent

logger = logging.getLogger("django_ledgepay.services")


class RefusedNews(Exception):
    """News about a refund that cannot be true: nothing was recorded or moved; ``note``
    says why."""

    def __init__(self, note: str) -> None:
        super().__init__(note)
        self.note = note


class _Contradicted(Exception):
    """A payment's fixed fact contradicted: LedgePay is asked."""

    def __init__(self, payment: Payment, found: Mapping[str, Any]) -> None:
        super().__init__(payment.ledgepay_id)
        self.payment, self.found = payment, found


def held(instance: Model) -> dict[str, Any]:
    """The recorded field values of ``instance``, by field name, for the rulebook."""
    return {
        field.name: getattr(instance, field.attname) for field in instance._meta.concrete_fields
    }


def log_fields(
    instance: Payment | Refund | None = None, *, event: WebhookEvent | None = None
) -> dict[str, Any]:
    """The ``extra`` fields of a log record about ``instance`` or ``event``: LedgePay's ids
    and the event's pk (for JSON formatters and django-structlog), never personal data."""
    fields: dict[str, Any] = {}
    if isinstance(instance, Refund):
        fields["ledgepay_refund"] = instance.ledgepay_id
        fields["ledgepay_payment"] = instance.payment.ledgepay_id
    elif instance is not None:
        fields["ledgepay_payment"] = instance.ledgepay_id
    if event is not None and event.pk is not None:
        fields["ledgepay_event"] = event.pk
    return fields


def note_event(event: WebhookEvent | None, note: str) -> None:
    """Keep ``note`` on the event (outside the caller's transaction's fate: an UPDATE of
    its own row, so a later failure of the caller still leaves the note)."""
    logger.error("%s", note, extra=log_fields(event=event))
    if event is not None and event.pk is not None:
        WebhookEvent.objects.filter(pk=event.pk).update(note=note)
        event.note = note


def unlinked_digest() -> str:
    """A ``body_sha256`` for an event whose payload lost personal data: random, so that
    the hash of the body as received (which could confirm a guess at what was erased) is
    not kept. A redelivery of that body is then stored anew, and blanked as it is applied."""
    return secrets.token_hex(32)


def forget_customer(event: WebhookEvent) -> None:
    """Keep ``event`` without its customer's e-mail and name: its payment's were erased."""
    payload = rules.blank_customer(event.payload)
    if payload is event.payload or event.pk is None:
        return
    event.payload, event.body_sha256 = payload, unlinked_digest()
    WebhookEvent.objects.filter(pk=event.pk).update(payload=payload, body_sha256=event.body_sha256)


def _log_kept(instance: Payment | Refund, said: Mapping[str, Any], decision: Decision) -> None:
    # "Pending" after a final status is older news overtaken (an API answer read before
    # the webhook that settled it was applied): expected, so not a warning. Another final
    # status is a contradiction someone should look at.
    logger.log(
        logging.WARNING if "status" in decision.contradicted else logging.INFO,
        "LedgePay says %s is %s, but it is already %s; nothing changed.",
        instance.ledgepay_id,
        said.get("status"),
        instance.status,
        extra=log_fields(instance),
    )


def _log_left_out(instance: Payment | Refund, found: Mapping[str, Any]) -> None:
    for name, (recorded, said) in found.items():
        logger.error(
            "LedgePay's data says %s's %s is %s, but it was recorded as %s and never "
            "changes; kept it.",
            instance.ledgepay_id,
            name,
            rules.shown(name, said),
            rules.shown(name, recorded),
            extra=log_fields(instance),
        )


def _write(instance: Payment | Refund, decision: Decision) -> list[str]:
    """Set the decision's fields on ``instance`` and save them; return their names."""
    names = list(decision.writes)
    for name, value in decision.writes.items():
        setattr(instance, name, value)
    for name, value in decision.defaults.items():
        if getattr(instance, name) is None:
            setattr(instance, name, value)
            names.append(name)
    instance.save(update_fields=[*names, "updated_at"])
    return names


def _record_signals(
    decision: Decision, payment: Payment, refund: Refund | None, event: WebhookEvent | None
) -> None:
    for name in decision.signals:
        transitions.record(name, payment=payment, refund=refund, event=event)


# Payments


def lock_payment(ledgepay_id: str) -> Payment | None:
    return Payment.objects.select_for_update().filter(ledgepay_id=ledgepay_id).first()


def apply_payment(
    data: Mapping[str, Any],
    *,
    status: str | None = None,
    event: WebhookEvent | None = None,
    known: Mapping[str, Any] | None = None,
    verified: bool = False,
) -> tuple[Payment, bool]:
    """Apply LedgePay's news about a payment to the mirror; return the payment and whether
    it changed. The one path for payment news: webhooks, syncs and answers to calls.

    Its fixed facts (:data:`~django_ledgepay.mirror.rules.PAYMENT_FACTS`) never change once
    recorded. ``data`` that contradicts them is not applied: the payment is fetched from
    LedgePay and its answer applied instead (the event keeps a note), unless ``verified``
    says ``data`` is such an answer already; then the contradicting facts are left out and
    logged.

    ``status`` overrides the object's own (a webhook's type says what happened). ``known``
    is another payment object (what was sent, or fetched) whose fields fill in those that
    ``data`` lacks or holds ill-typed. The row is locked while the rulebook decides, so
    concurrent callers apply each change once and its signal fires once. A payment seen for
    the first time is created when the data holds its amount and currency; otherwise
    IncompleteDataError is raised (fetch it with ``sync_payment``).
    """
    ledgepay_id = _object_id(data, "payment")
    said = payment_values(data)
    values = {**payment_values(known), **said} if known is not None else dict(said)
    if status is not None:
        values["status"] = status
    try:
        return _apply_payment(ledgepay_id, values, event=event, verified=verified)
    except _Contradicted as contradicted:
        # Not applied as it stands: LedgePay is asked, and its answer applied.
        found = contradicted.found
        note_event(event, rules.describe_contradictions("payment", ledgepay_id, found))
    remote = get_client().retrieve_payment(ledgepay_id)
    return apply_payment({**remote, "id": ledgepay_id}, event=event, verified=True)


def _apply_payment(
    ledgepay_id: str, values: dict[str, Any], *, event: WebhookEvent | None, verified: bool
) -> tuple[Payment, bool]:
    """Decide on the payment as read, then write under the decision's guard (the row still
    as read where the decision depends on it); read and decide again when another caller
    changed it meanwhile, which can happen only a few times (a payment settles once)."""
    while True:
        payment = Payment.objects.filter(ledgepay_id=ledgepay_id).first()
        if payment is None:
            created = _create_payment(ledgepay_id, values, event)
            if created is not None:
                return created, True
            continue  # Inserted by another caller meanwhile: decide on it.
        if payment.erased_at is not None and event is not None:
            forget_customer(event)
        decision = rules.decide_payment(held(payment), values, timezone.now(), verified=verified)
        if decision.verdict == Verdict.CONTRADICTED:
            raise _Contradicted(payment, decision.contradicted)
        if decision.verdict == Verdict.KEPT:
            _log_kept(payment, values, decision)
        _log_left_out(payment, decision.contradicted)
        if not decision.changes:
            return payment, False
        if _write_guarded(payment, decision, event):
            return payment, True


def _write_guarded(payment: Payment, decision: Decision, event: WebhookEvent | None) -> bool:
    """Write ``decision`` where the row still holds the status and the fixed facts it was
    decided on, with its transitions, in one transaction; False (nothing written) when
    another caller changed them first."""
    guard = {"pk": payment.pk, "status": payment.status}
    guard.update(
        (name, getattr(payment, name)) for name in decision.writes if name in rules.PAYMENT_FACTS
    )
    if any(name in rules.PERSONAL_FACTS for name in decision.writes):
        guard[rules.ERASED_AT] = None  # Decided before an erasure: decide again after it.
    now = timezone.now()
    fields: dict[str, Any] = {**decision.writes, "updated_at": now}
    for name, value in decision.defaults.items():
        fields[name] = Coalesce(F(name), Value(value))
    with transaction.atomic():
        if not Payment.objects.filter(**guard).update(**fields):
            return False
        for name, value in {**decision.writes, "updated_at": now}.items():
            setattr(payment, name, value)
        for name, value in decision.defaults.items():
            if getattr(payment, name) is None:
                setattr(payment, name, value)
        _record_signals(decision, payment, None, event)
    return True


def apply_payment_event(
    data: Mapping[str, Any], *, status: str, event: WebhookEvent | None = None
) -> tuple[Payment, bool]:
    """Apply a webhook's news that a payment reached the final ``status``: as
    :func:`apply_payment`, and a payment never seen that the event does not say enough
    about is fetched from LedgePay first (which may raise LedgePayError)."""
    try:
        return apply_payment(data, status=status, event=event)
    except IncompleteDataError:
        pass
    remote = get_client().retrieve_payment(_object_id(data, "payment"))
    return apply_payment(data, status=status, event=event, known=remote)


def _create_payment(
    ledgepay_id: str, values: Mapping[str, Any], event: WebhookEvent | None
) -> Payment | None:
    """Insert a payment seen for the first time; None when another caller inserted it first."""
    if "amount" not in values or "currency" not in values:
        raise IncompleteDataError(
            f"LedgePay's data for the new payment {ledgepay_id} lacks its amount or currency."
        )
    fields = rules.new_payment(values, timezone.now())
    try:
        # The payment and its transition in one transaction: no reader (a worker, a
        # deliverer) sees the one without the other, and no crash between them loses it.
        with transaction.atomic():
            payment = Payment.objects.create(ledgepay_id=ledgepay_id, **fields)
            if payment.status in rules.PAYMENT_TRANSITIONS:
                signal = rules.PAYMENT_TRANSITIONS[payment.status]
                transitions.record(signal, payment=payment, event=event)
    except IntegrityError:
        if not Payment.objects.filter(ledgepay_id=ledgepay_id).exists():
            raise
        return None
    return payment


def fetch_payment(ledgepay_id: str) -> Payment:
    """Fetch one payment from LedgePay and apply its answer, as a sync."""
    data = get_client().retrieve_payment(ledgepay_id)
    with transitions.origin(Transition.Source.SYNC):
        payment, _ = apply_payment({**data, "id": data.get("id") or ledgepay_id}, verified=True)
    return payment


def write_payment_page(values_by_id: Mapping[str, dict[str, Any]]) -> tuple[int, int, int, int]:
    """Write one page of a sync (LedgePay's own answers) in a constant number of queries:
    one locking read, one insert, one update, one insert of transitions. Returns how many
    payments were created, updated, unchanged and skipped."""
    now = timezone.now()
    with transaction.atomic():
        existing = {
            payment.ledgepay_id: payment
            for payment in Payment.objects.select_for_update().filter(
                ledgepay_id__in=list(values_by_id)
            )
        }
        new: list[Payment] = []
        changed: list[Payment] = []
        fields: set[str] = set()
        finished: list[Payment] = []
        skipped = unchanged = 0
        for ledgepay_id, values in values_by_id.items():
            payment = existing.get(ledgepay_id)
            if payment is None:
                if "amount" not in values or "currency" not in values:
                    logger.warning(
                        "Skipped payment %s: no amount or currency.",
                        ledgepay_id,
                        extra={"ledgepay_payment": ledgepay_id},
                    )
                    skipped += 1
                    continue
                payment = Payment(ledgepay_id=ledgepay_id, **rules.new_payment(values, now))
                new.append(payment)
                if payment.is_final:
                    finished.append(payment)
                continue
            decision = rules.decide_payment(held(payment), values, now, verified=True)
            if decision.verdict == Verdict.KEPT:
                _log_kept(payment, values, decision)
            _log_left_out(payment, decision.contradicted)
            if not decision.changes:
                unchanged += 1
                continue
            for name, value in decision.writes.items():
                setattr(payment, name, value)
            for name, value in decision.defaults.items():
                setattr(payment, name, value)
            payment.updated_at = now
            changed.append(payment)
            fields.update(decision.writes, decision.defaults)
            if decision.signals:
                finished.append(payment)
        if new:
            Payment.objects.bulk_create(new)
        if changed:
            Payment.objects.bulk_update(changed, sorted(fields | {"updated_at"}))
        transitions.record_many(
            [
                transitions.new_transition(
                    rules.PAYMENT_TRANSITIONS[payment.status], payment=payment
                )
                for payment in finished
            ]
        )
    return len(new), len(changed), unchanged, skipped


# Refunds


def lock_refund(ledgepay_id: str) -> Refund | None:
    # Locks the refund's row only: locking its payment's row too (the join) would take the
    # two locks in the opposite order to the callers that lock the payment first.
    return (
        Refund.objects.select_for_update(of=("self",))
        .select_related("payment")
        .filter(ledgepay_id=ledgepay_id)
        .first()
    )


def _lock_payment_of_refund(ledgepay_id: str) -> None:
    """Lock the payment of a recorded refund, before the refund's row (the lock order)."""
    list(
        Payment.objects.select_for_update(no_key=True)
        .filter(pk__in=Refund.objects.filter(ledgepay_id=ledgepay_id).values("payment_id"))
        .values_list("pk", flat=True)
    )


def apply_refund(
    data: Mapping[str, Any],
    *,
    status: str | None = None,
    event: WebhookEvent | None = None,
    payment: Payment | None = None,
    known: Mapping[str, Any] | None = None,
) -> tuple[Refund, bool]:
    """Apply LedgePay's news about a refund to the mirror; return the refund and whether it
    changed.

    ``known`` fills in what ``data`` lacks or holds ill-typed, as for :func:`apply_payment`.
    A refund seen for the first time is created under the lock of its payment (fetched from
    LedgePay first if the mirror lacks it) and sends ``refund_created``, then
    ``refund_succeeded`` or ``refund_failed`` if it is already final. News that cannot be
    true (see :mod:`~django_ledgepay.mirror.rules`) changes nothing and raises RefusedNews.
    """
    ledgepay_id = _object_id(data, "refund")
    values = refund_values(data)
    if known is not None:
        values = {**refund_values(known), **values}
    if status is not None:
        values["status"] = status
    payment_id = payment.ledgepay_id if payment is not None else data.get("payment_id")
    if payment is None and not Refund.objects.filter(ledgepay_id=ledgepay_id).exists():
        if not isinstance(payment_id, str) or not payment_id:
            raise IncompleteDataError(f"LedgePay's refund {ledgepay_id} names no payment.")
        if not Payment.objects.filter(ledgepay_id=payment_id).exists():
            fetch_payment(payment_id)  # Outside the transaction: no lock held over HTTP.
    with transaction.atomic():
        _lock_payment_of_refund(ledgepay_id)
        refund = lock_refund(ledgepay_id)
        if refund is None:
            # Lock the payment first, as refund_payment does, then look again.
            locked = Payment.objects.select_for_update().get(ledgepay_id=payment_id)
            refund = lock_refund(ledgepay_id)
            if refund is None:
                created = _create_refund(locked, ledgepay_id, values, event)
                if created is not None:
                    return created, True
                # Inserted meanwhile by a caller the lock did not hold back (SQLite).
                refund = lock_refund(ledgepay_id)
                assert refund is not None
            # Otherwise inserted by a caller that held the lock first: decided below.
        decision = rules.decide_refund(
            held(refund),
            values,
            payment=refund.payment.ledgepay_id,
            named=data.get("payment_id"),
        )
        if decision.verdict == Verdict.REFUSED:
            raise RefusedNews(decision.note)
        if decision.verdict == Verdict.KEPT:
            _log_kept(refund, values, decision)
            return refund, False
        if not decision.changes:
            return refund, False
        _write(refund, decision)
        _record_signals(decision, refund.payment, refund, event)
    return refund, True


def _create_refund(
    payment: Payment, ledgepay_id: str, values: Mapping[str, Any], event: WebhookEvent | None
) -> Refund | None:
    """Insert a refund seen for the first time, under its payment's lock; None when another
    caller inserted it first; RefusedNews when it cannot be true."""
    if "amount" not in values:
        raise IncompleteDataError(f"LedgePay's data for the refund {ledgepay_id} has no amount.")
    facts = PaymentFacts(
        payment.ledgepay_id, payment.amount, payment.currency, payment.amount_refunded
    )
    decision = rules.decide_new_refund(facts, values)
    if decision.verdict == Verdict.REFUSED:
        raise RefusedNews(decision.note)
    try:
        with transaction.atomic():
            refund = Refund.objects.create(
                payment=payment, ledgepay_id=ledgepay_id, **decision.writes
            )
    except IntegrityError:
        if not Refund.objects.filter(ledgepay_id=ledgepay_id).exists():
            raise
        return None
    # The payment's row is written too, under its lock: under REPEATABLE READ or SERIALIZABLE
    # a refund_payment() waiting for that lock then fails to serialize, instead of reading
    # a snapshot without this refund and refunding again; and the SQL statements, seeing
    # the row changed since their snapshot, leave a concurrent refund to this path.
    Payment.objects.filter(pk=payment.pk).update(updated_at=timezone.now())
    _record_signals(decision, payment, refund, event)
    return refund


def _object_id(data: Mapping[str, Any], kind: str) -> str:
    ledgepay_id = data.get("id")
    if not isinstance(ledgepay_id, str) or not ledgepay_id:
        raise IncompleteDataError(f"LedgePay's {kind} has no id.")
    return ledgepay_id
