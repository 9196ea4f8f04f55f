"""The rules of money: what LedgePay's news does to the mirror, decided without a database.

Pure functions over plain values (no query, no I/O), in the spirit of a state machine's
transition table. Every writer asks them and none restates them: the general ORM path
(:mod:`django_ledgepay.mirror.orm`), a sync's page write, and the SQL statements
(:mod:`django_ledgepay.mirror.sql`), whose guards and SET lists are built from the
decisions made here. A rule changes here, and only here.

The rules:

- A payment moves from ``pending`` to one of its final statuses, once; a refund from
  ``pending`` to ``succeeded`` or ``failed``, once. A final status never changes again:
  later news that says otherwise changes nothing (not even its other fields).
- A payment's fixed facts (:data:`PAYMENT_FACTS`: its amount and currency, and what the shop
  sent: description, customer, metadata) never change once recorded; a blank one (nothing
  recorded) is filled in by LedgePay's own answer only. News that says another value is
  not applied as it stands: the writer asks LedgePay, and even LedgePay's answer never
  changes a recorded fact.
- A refund's fixed facts (:data:`REFUND_FACTS`, and its payment) never change. News about a
  refund that cannot be true (another payment, amount or currency than recorded; a currency
  that is not its payment's; refunds past the payment's amount) changes nothing.
- For every payment, ``0 <= amount_refunded <= amount``: a refund that has not failed counts,
  so only a refund first seen can raise the total, and one that would take it past the
  amount is refused (:func:`decide_new_refund`).
- ``completed_at`` (:func:`completed_at_policy`): what LedgePay says, else what the mirror
  holds, else the moment the mirror learnt the payment was final.
- A payment whose customer's personal data was erased (``erased_at`` set) keeps
  :data:`PERSONAL_FACTS` blank for good: news of them is left out, neither applied nor taken
  for a contradiction (:func:`without_personal_facts`), and a webhook payload about it is
  stored without them (:func:`blank_customer`).
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Final

from django_ledgepay.models import Payment, Refund, Transition, WebhookEvent

PENDING: Final = "pending"

#: The payment events this app applies, and the status each announces.
PAYMENT_EVENTS: Final[Mapping[str, str]] = {
    "payment.succeeded": Payment.Status.SUCCEEDED,
    "payment.failed": Payment.Status.FAILED,
    "payment.canceled": Payment.Status.CANCELED,
}
#: The refund events this app applies, and the status each announces (None: the data's own).
REFUND_EVENTS: Final[Mapping[str, str | None]] = {
    "refund.created": None,
    "refund.succeeded": Refund.Status.SUCCEEDED,
    "refund.failed": Refund.Status.FAILED,
}

#: The transition (and signal) each final status of a payment or a refund records.
PAYMENT_TRANSITIONS: Final[Mapping[str, str]] = {
    Payment.Status.SUCCEEDED: Transition.Signal.PAYMENT_SUCCEEDED,
    Payment.Status.FAILED: Transition.Signal.PAYMENT_FAILED,
    Payment.Status.CANCELED: Transition.Signal.PAYMENT_CANCELED,
}
REFUND_TRANSITIONS: Final[Mapping[str, str]] = {
    Refund.Status.SUCCEEDED: Transition.Signal.REFUND_SUCCEEDED,
    Refund.Status.FAILED: Transition.Signal.REFUND_FAILED,
}

#: A payment's fixed facts, each with its blank value (what "nothing was sent" records).
#: ``amount`` and ``currency`` are never blank.
PAYMENT_FACTS: Final[Mapping[str, Any]] = {
    "amount": None,
    "currency": None,
    "description": "",
    "customer_email": "",
    "customer_name": "",
    "metadata": {},
}
#: A refund's fixed facts, besides its payment.
REFUND_FACTS: Final = ("amount", "currency")
#: The facts 0.2 called fixed, for both models (kept for code that imported the name).
FIXED_FACTS: Final = frozenset({"amount", "currency"})

#: The fields of a payment that ``completed_at``'s policy fills.
COMPLETED_AT: Final = "completed_at"

#: The fixed facts that are a customer's personal data, and the object key LedgePay's
#: payment holds them under (``{"customer": {"email": ..., "name": ...}}``).
PERSONAL_FACTS: Final[Mapping[str, str]] = {"customer_email": "email", "customer_name": "name"}
#: Set on a payment once its personal data is erased: they stay blank.
ERASED_AT: Final = "erased_at"


class Verdict(str, Enum):
    """What a writer does with a piece of news."""

    #: Write :attr:`Decision.writes` (and the defaults), and record :attr:`Decision.signal`.
    APPLY = "apply"
    #: Nothing to write: the mirror says it already.
    NOTHING = "nothing"
    #: Not applied: a final status that the news contradicts, or older news overtaken.
    KEPT = "kept"
    #: Not applied: it contradicts a fixed fact. For a payment, ask LedgePay; for a refund,
    #: note it (LedgePay has no endpoint to fetch a refund by).
    CONTRADICTED = "contradicted"
    #: Not applied: refund news that cannot be true.
    REFUSED = "refused"


@dataclass(frozen=True)
class Decision:
    """A writer's orders for one piece of news about one object."""

    verdict: Verdict
    #: Fields to set.
    writes: Mapping[str, Any] = field(default_factory=dict)
    #: Fields to set only where the mirror holds none (null): ``completed_at``'s policy.
    defaults: Mapping[str, Any] = field(default_factory=dict)
    #: The transitions (signals) to record, in order.
    signals: tuple[str, ...] = ()
    #: Why it is not applied, for the event's note or the log.
    note: str = ""
    #: The fixed facts contradicted, as ``{field: (recorded, said)}``.
    contradicted: Mapping[str, tuple[Any, Any]] = field(default_factory=dict)

    @property
    def changes(self) -> bool:
        return self.verdict == Verdict.APPLY


def without_personal_facts(said: Mapping[str, Any]) -> dict[str, Any]:
    """``said`` without :data:`PERSONAL_FACTS`: what news may tell of an erased payment."""
    return {name: value for name, value in said.items() if name not in PERSONAL_FACTS}


def blank_customer(payload: Any) -> Any:
    """A webhook ``payload`` with its ``data.customer``'s e-mail and name blank (a copy; the
    payload itself when it holds none), as it is stored for an erased payment."""
    data = payload.get("data") if isinstance(payload, Mapping) else None
    customer = data.get("customer") if isinstance(data, Mapping) else None
    if not isinstance(data, Mapping) or not isinstance(customer, Mapping):
        return payload
    keys = [key for key in PERSONAL_FACTS.values() if customer.get(key) not in ("", None)]
    if not keys:
        return payload
    blanked = {**customer, **dict.fromkeys(keys, "")}
    return {**payload, "data": {**data, "customer": blanked}}


def is_blank(name: str, value: Any) -> bool:
    """Whether ``value`` is the blank of the fixed fact ``name`` (nothing was sent)."""
    blank = PAYMENT_FACTS.get(name)
    return blank is not None and value in (blank, None)


def payment_contradictions(
    held: Mapping[str, Any], said: Mapping[str, Any], *, verified: bool = False
) -> dict[str, tuple[Any, Any]]:
    """The fixed facts ``said`` holds that differ from ``held``'s, as ``{name: (recorded,
    said)}``. A blank recorded fact is contradicted by news too (only LedgePay's own
    answer, ``verified``, may fill it in)."""
    return {
        name: (held[name], said[name])
        for name in PAYMENT_FACTS
        if name in said
        and not is_blank(name, said[name])
        and said[name] != held[name]
        and not (verified and is_blank(name, held[name]))
    }


def refund_contradictions(
    held: Mapping[str, Any], said: Mapping[str, Any], *, payment: str, named: object
) -> dict[str, tuple[Any, Any]]:
    """The fixed facts of a recorded refund ``said`` contradicts; ``payment`` is the LedgePay
    id of its payment, ``named`` the one the news names (if any)."""
    found = {
        name: (held[name], said[name])
        for name in REFUND_FACTS
        if name in said and said[name] != held[name]
    }
    if isinstance(named, str) and named and named != payment:
        found["payment"] = (payment, named)
    return found


#: Fixed facts that are a person's data: named in notes and logs, never quoted.
PERSONAL: Final = frozenset({"customer_email", "customer_name"})


def shown(name: str, value: Any) -> str:
    """``value`` of the field ``name`` as a note or a log line may show it: a person's data
    is never quoted there."""
    return "(personal data, not shown)" if name in PERSONAL else repr(value)


def describe_contradictions(kind: str, ledgepay_id: str, found: Mapping[str, Any]) -> str:
    said = ", ".join(
        f"{name} {shown(name, new)} (recorded: {shown(name, old)})"
        for name, (old, new) in found.items()
    )
    return f"The event contradicted the {kind} {ledgepay_id}'s fixed facts: {said}."


def completed_at_policy(
    said: Mapping[str, Any], now: datetime.datetime
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``completed_at`` for a payment becoming final, as ``(writes, defaults)``: LedgePay's
    time when it says one, else the mirror's own, else ``now``."""
    if said.get(COMPLETED_AT) is not None:
        return {COMPLETED_AT: said[COMPLETED_AT]}, {}
    return {}, {COMPLETED_AT: now}


@dataclass(frozen=True)
class Move:
    """A pending payment moved to a final status: the guard it needs, what it writes.

    The guard is: the status is pending, and each fixed fact in :attr:`facts` is recorded
    as it is said. The SQL statements compile this into their WHERE and SET lists.
    """

    status: str
    facts: Mapping[str, Any]
    writes: Mapping[str, Any]
    defaults: Mapping[str, Any]
    signal: str


def payment_move(said: Mapping[str, Any], status: str, now: datetime.datetime) -> Move:
    """The move of a pending payment to the final ``status`` with what ``said`` tells."""
    facts = {name: value for name, value in said.items() if name in PAYMENT_FACTS}
    writes = {
        name: value for name, value in said.items() if name not in facts and name != "status"
    }
    completed, defaults = completed_at_policy(said, now)
    writes.update(completed)
    writes["status"] = status
    return Move(status, facts, writes, defaults, PAYMENT_TRANSITIONS[status])


def new_payment(values: Mapping[str, Any], now: datetime.datetime) -> dict[str, Any]:
    """The fields of a payment first seen (with ``status``, pending when not said): one
    already final was completed by now at the latest."""
    fields = {"status": PENDING, **values}
    if fields["status"] != PENDING and fields.get(COMPLETED_AT) is None:
        fields[COMPLETED_AT] = now
    return fields


def decide_payment(
    held: Mapping[str, Any],
    said: Mapping[str, Any],
    now: datetime.datetime,
    *,
    verified: bool = False,
) -> Decision:
    """What news ``said`` (a payment's field values, ``status`` the status it announces, if
    any) does to a recorded payment ``held`` (its field values). ``verified``: ``said`` is
    LedgePay's own answer, so a contradicted fixed fact is left out, not asked about. Of a
    payment erased (``held["erased_at"]`` set), news of its personal data is left out."""
    if held.get(ERASED_AT) is not None:
        said = without_personal_facts(said)
    status, current = said.get("status"), held["status"]
    if current != PENDING and status is not None and status != current:
        stale = status == PENDING
        return Decision(
            Verdict.KEPT,
            note=f"LedgePay says {status}, but it is already {current}; nothing changed.",
            contradicted={} if stale else {"status": (current, status)},
        )
    found = payment_contradictions(held, said, verified=verified)
    if found and not verified:
        return Decision(Verdict.CONTRADICTED, contradicted=found)
    if current != PENDING:
        return Decision(Verdict.NOTHING, contradicted=found)  # Settled: it never changes.
    said = {name: value for name, value in said.items() if name not in found}
    writes: dict[str, Any] = {}
    defaults: dict[str, Any] = {}
    signals: tuple[str, ...] = ()
    if current == PENDING and isinstance(status, str) and status != PENDING:
        move = payment_move(said, status, now)
        writes, defaults, signals = dict(move.writes), dict(move.defaults), (move.signal,)
        writes.update((name, value) for name, value in move.facts.items() if verified)
    else:
        writes = {name: value for name, value in said.items() if name != "status"}
    writes = {name: value for name, value in writes.items() if held.get(name) != value}
    for name in FIXED_FACTS:
        writes.pop(name, None)  # Equal, or contradicted and left out: never written.
    defaults = {name: value for name, value in defaults.items() if held.get(name) is None}
    if not writes and not defaults:
        return Decision(Verdict.NOTHING, contradicted=found)
    return Decision(Verdict.APPLY, writes, defaults, signals, contradicted=found)


@dataclass(frozen=True)
class PaymentFacts:
    """What the refund rules need of a payment: its id, amount, currency, and the sum of
    its refunds that have not failed."""

    ledgepay_id: str
    amount: int
    currency: str
    refunded: int


def decide_new_refund(payment: PaymentFacts, said: Mapping[str, Any]) -> Decision:
    """A refund first seen: recorded (``refund_created``, then its final status's signal)
    unless it cannot be true. ``said`` must hold its amount; its currency defaults to the
    payment's."""
    amount = said["amount"]
    currency = said.get("currency", payment.currency)
    status = said.get("status", PENDING)
    if currency != payment.currency:
        return Decision(
            Verdict.REFUSED,
            note=f"A refund in {currency} of the payment {payment.ledgepay_id}, which is in "
            f"{payment.currency}, cannot be true; nothing was recorded.",
        )
    if status != Refund.Status.FAILED and payment.refunded + amount > payment.amount:
        return Decision(
            Verdict.REFUSED,
            note=f"A refund of {amount} would take the payment {payment.ledgepay_id}'s "
            f"refunds to {payment.refunded + amount}, past its amount {payment.amount} "
            "(minor units); nothing was recorded.",
        )
    signals: tuple[str, ...] = (Transition.Signal.REFUND_CREATED,)
    if status in REFUND_TRANSITIONS:
        signals += (REFUND_TRANSITIONS[status],)
    return Decision(Verdict.APPLY, {**said, "currency": currency, "status": status}, {}, signals)


def decide_refund(
    held: Mapping[str, Any], said: Mapping[str, Any], *, payment: str, named: object = None
) -> Decision:
    """What news ``said`` does to a recorded refund ``held`` of the payment ``payment`` (its
    LedgePay id); ``named``: the payment the news names."""
    status, current = said.get("status"), held["status"]
    if current != PENDING and status is not None and status != current:
        return Decision(
            Verdict.KEPT,
            note=f"LedgePay says {status}, but it is already {current}; nothing changed.",
            contradicted={} if status == PENDING else {"status": (current, status)},
        )
    found = refund_contradictions(held, said, payment=payment, named=named)
    if found:
        return Decision(
            Verdict.REFUSED,
            note=describe_contradictions("refund", held["ledgepay_id"], found),
            contradicted=found,
        )
    writes = {
        name: value
        for name, value in said.items()
        if name not in REFUND_FACTS and held.get(name) != value
    }
    if writes.get("status") == PENDING:
        del writes["status"]
    if not writes:
        return Decision(Verdict.NOTHING)
    signals = (REFUND_TRANSITIONS[writes["status"]],) if "status" in writes else ()
    return Decision(Verdict.APPLY, writes, {}, signals)


def refund_move(said: Mapping[str, Any], status: str) -> Move:
    """The move of a pending refund to the final ``status``: guarded by its fixed facts."""
    facts = {name: value for name, value in said.items() if name in REFUND_FACTS}
    writes = {
        name: value for name, value in said.items() if name not in facts and name != "status"
    }
    writes["status"] = status
    return Move(status, facts, writes, {}, REFUND_TRANSITIONS[status])


def event_outcome(status: str, announced: str | None, kind: str) -> tuple[str, str]:
    """An applied event's outcome, from the status its object has now: ``processed`` when it
    says what the event announced; ``ignored`` when a final status contradicts it (the
    status rules keep it); else ``failed``, to try again."""
    if announced is None or status == announced:
        return WebhookEvent.Status.PROCESSED, ""
    if status != PENDING:
        return WebhookEvent.Status.IGNORED, f"The {kind} is already {status}."
    return WebhookEvent.Status.FAILED, f"The {kind} is still {status}; not applied."


def within_amount(amount: int, refunded: int) -> bool:
    """The invariant: ``0 <= refunded <= amount``."""
    return 0 <= refunded <= amount
