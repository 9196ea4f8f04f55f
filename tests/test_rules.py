"""The rulebook alone: (what the mirror holds, what LedgePay says) -> decision.

No database: :mod:`django_ledgepay.mirror.rules` is pure, so each row of these tables is
one call on plain values.
"""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from django_ledgepay.mirror import rules
from django_ledgepay.mirror.rules import PaymentFacts, Verdict

NOW = datetime.datetime(2026, 12, 8, 12, 0, tzinfo=datetime.timezone.utc)
EARLIER = datetime.datetime(2026, 12, 8, 11, 0, tzinfo=datetime.timezone.utc)
SAID_AT = datetime.datetime(2026, 12, 8, 11, 30, tzinfo=datetime.timezone.utc)


def payment(**fields: Any) -> dict[str, Any]:
    """A payment as the mirror holds it."""
    return {
        "ledgepay_id": "pay_1",
        "status": "pending",
        "amount": 5000,
        "currency": "EUR",
        "description": "Order 1",
        "customer_email": "a@example.com",
        "customer_name": "Ann",
        "metadata": {"order_id": 1},
        "checkout_url": "https://checkout.example/pay_1",
        "success_url": "https://shop.example/ok",
        "cancel_url": "https://shop.example/no",
        "created_at": EARLIER,
        "completed_at": None,
        **fields,
    }


PAYMENT_CASES = [
    # (held, said, verified) -> (verdict, writes, defaults, signals)
    pytest.param(
        payment(),
        {"status": "succeeded"},
        False,
        (Verdict.APPLY, {"status": "succeeded"}, {"completed_at": NOW}, ("payment_succeeded",)),
        id="pending moves; completed now",
    ),
    pytest.param(
        payment(),
        {"status": "failed", "completed_at": SAID_AT},
        False,
        (Verdict.APPLY, {"status": "failed", "completed_at": SAID_AT}, {}, ("payment_failed",)),
        id="pending moves; LedgePay's completed_at",
    ),
    pytest.param(
        payment(completed_at=EARLIER),
        {"status": "canceled"},
        False,
        (Verdict.APPLY, {"status": "canceled"}, {}, ("payment_canceled",)),
        id="pending moves; the held completed_at kept",
    ),
    pytest.param(
        payment(description="", metadata={}),
        {"status": "succeeded", "description": "Order 1", "metadata": {"order_id": 1}},
        True,
        (
            Verdict.APPLY,
            {"status": "succeeded", "description": "Order 1", "metadata": {"order_id": 1}},
            {"completed_at": NOW},
            ("payment_succeeded",),
        ),
        id="blank facts filled in by LedgePay's answer",
    ),
    pytest.param(
        payment(description=""),
        {"status": "succeeded", "description": "Order 666"},
        False,
        (Verdict.CONTRADICTED, {}, {}, ()),
        id="a blank fact is not filled by an event: asked about",
    ),
    pytest.param(
        payment(),
        {"status": "succeeded", "metadata": {"order_id": 666}},
        False,
        (Verdict.CONTRADICTED, {}, {}, ()),
        id="a rewritten order is asked about",
    ),
    pytest.param(
        payment(),
        {"status": "succeeded", "amount": 9999},
        False,
        (Verdict.CONTRADICTED, {}, {}, ()),
        id="another amount is asked about",
    ),
    pytest.param(
        payment(),
        {"status": "succeeded", "customer_email": "b@example.com"},
        True,
        (Verdict.APPLY, {"status": "succeeded"}, {"completed_at": NOW}, ("payment_succeeded",)),
        id="LedgePay's answer never changes a fact either",
    ),
    pytest.param(
        payment(status="succeeded", completed_at=EARLIER),
        {"status": "failed"},
        False,
        (Verdict.KEPT, {}, {}, ()),
        id="a final status never changes",
    ),
    pytest.param(
        payment(status="succeeded", completed_at=EARLIER),
        {"status": "pending"},
        False,
        (Verdict.KEPT, {}, {}, ()),
        id="older news overtaken",
    ),
    pytest.param(
        payment(status="succeeded", completed_at=EARLIER),
        {"status": "succeeded", "checkout_url": "https://elsewhere.example/"},
        False,
        (Verdict.NOTHING, {}, {}, ()),
        id="a final payment never changes",
    ),
    pytest.param(
        payment(),
        {"status": "pending", "checkout_url": "https://checkout.example/new"},
        False,
        (Verdict.APPLY, {"checkout_url": "https://checkout.example/new"}, {}, ()),
        id="a pending payment's other fields follow LedgePay",
    ),
    pytest.param(
        payment(),
        {"status": "pending", "amount": 5000, "currency": "EUR"},
        False,
        (Verdict.NOTHING, {}, {}, ()),
        id="nothing new",
    ),
]


@pytest.mark.parametrize(("held", "said", "verified", "expected"), PAYMENT_CASES)
def test_payment_decisions(held, said, verified, expected):
    decision = rules.decide_payment(held, said, NOW, verified=verified)
    verdict, writes, defaults, signals = expected
    assert decision.verdict == verdict
    assert dict(decision.writes) == writes
    assert dict(decision.defaults) == defaults
    assert decision.signals == signals


def test_a_contradiction_names_what_was_recorded_and_said():
    decision = rules.decide_payment(
        payment(), {"metadata": {"order_id": 666}, "description": "Order 1"}, NOW
    )
    assert decision.contradicted == {"metadata": ({"order_id": 1}, {"order_id": 666})}


def test_the_move_the_statements_compile():
    move = rules.payment_move(
        {"amount": 5000, "currency": "EUR", "description": "Order 1", "checkout_url": "u"},
        "succeeded",
        NOW,
    )
    # Guarded on every fact said; writes the rest.
    assert move.facts == {"amount": 5000, "currency": "EUR", "description": "Order 1"}
    assert move.writes == {"checkout_url": "u", "status": "succeeded"}
    assert move.defaults == {"completed_at": NOW}
    assert move.signal == "payment_succeeded"


@pytest.mark.parametrize(
    ("values", "completed_at"),
    [
        ({"amount": 1, "currency": "EUR"}, None),
        ({"amount": 1, "currency": "EUR", "status": "failed"}, NOW),
        ({"amount": 1, "currency": "EUR", "status": "failed", "completed_at": SAID_AT}, SAID_AT),
    ],
)
def test_a_payment_first_seen(values, completed_at):
    fields = rules.new_payment(values, NOW)
    assert fields["status"] == values.get("status", "pending")
    assert fields.get("completed_at") == completed_at


EUR_5000 = PaymentFacts("pay_1", 5000, "EUR", refunded=3000)

NEW_REFUND_CASES = [
    pytest.param(
        {"amount": 2000}, Verdict.APPLY, ("refund_created",), id="up to the amount exactly"
    ),
    pytest.param(
        {"amount": 2000, "status": "succeeded"},
        Verdict.APPLY,
        ("refund_created", "refund_succeeded"),
        id="first seen succeeded: created, then succeeded",
    ),
    pytest.param({"amount": 2001}, Verdict.REFUSED, (), id="past the amount"),
    pytest.param(
        {"amount": 50000, "currency": "JPY"}, Verdict.REFUSED, (), id="in another currency"
    ),
    pytest.param(
        {"amount": 4000, "status": "failed"},
        Verdict.APPLY,
        ("refund_created", "refund_failed"),
        id="a failed refund counts for nothing",
    ),
]


@pytest.mark.parametrize(("said", "verdict", "signals"), NEW_REFUND_CASES)
def test_new_refund_decisions(said, verdict, signals):
    decision = rules.decide_new_refund(EUR_5000, said)
    assert decision.verdict == verdict
    assert decision.signals == signals
    if verdict == Verdict.REFUSED:
        assert "nothing was recorded" in decision.note
    else:
        assert decision.writes["currency"] == "EUR"


def refund(**fields: Any) -> dict[str, Any]:
    return {
        "ledgepay_id": "re_1",
        "status": "pending",
        "amount": 2000,
        "currency": "EUR",
        "reason": "customer_request",
        "created_at": EARLIER,
        **fields,
    }


REFUND_CASES = [
    pytest.param(
        refund(),
        {"status": "succeeded"},
        "pay_1",
        Verdict.APPLY,
        ("refund_succeeded",),
        id="moves",
    ),
    pytest.param(
        refund(),
        {"status": "succeeded", "amount": 5000},
        "pay_1",
        Verdict.REFUSED,
        (),
        id="amount",
    ),
    pytest.param(
        refund(), {"currency": "USD"}, "pay_1", Verdict.REFUSED, (), id="currency contradicted"
    ),
    pytest.param(
        refund(), {"status": "succeeded"}, "pay_2", Verdict.REFUSED, (), id="another payment"
    ),
    pytest.param(
        refund(status="succeeded"), {"status": "failed"}, "pay_1", Verdict.KEPT, (), id="final"
    ),
    pytest.param(
        refund(status="succeeded"), {"status": "succeeded"}, "pay_1", Verdict.NOTHING, (), id="dup"
    ),
    pytest.param(
        refund(), {"reason": "duplicate"}, "pay_1", Verdict.APPLY, (), id="another reason"
    ),
]


@pytest.mark.parametrize(("held", "said", "named", "verdict", "signals"), REFUND_CASES)
def test_refund_decisions(held, said, named, verdict, signals):
    decision = rules.decide_refund(held, said, payment="pay_1", named=named)
    assert decision.verdict == verdict
    assert decision.signals == signals


@pytest.mark.parametrize(
    ("status", "announced", "outcome"),
    [
        ("succeeded", "succeeded", "processed"),
        ("succeeded", None, "processed"),
        ("failed", "succeeded", "ignored"),
        ("pending", "succeeded", "failed"),
    ],
)
def test_an_events_outcome(status, announced, outcome):
    assert rules.event_outcome(status, announced, "payment")[0] == outcome


def test_the_bound():
    assert rules.within_amount(5000, 5000)
    assert not rules.within_amount(5000, 5001)
    assert not rules.within_amount(5000, -1)
