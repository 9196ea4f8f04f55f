"""The soak's receivers: each writes one Effect row per run, in its delivery's transaction.

``record_effect`` always succeeds. ``record_effect_flaky`` raises on the first attempt of
every tenth transition, after its write (rolled back with it), so retries are part of the
soak too: by the workers after the backoff, or by ``ledgepay_deliver --all``.
"""

from __future__ import annotations

import os
from typing import Any

from bench.soak.models import Effect

STEADY = "soak.record_effect"
FLAKY = "soak.record_effect_flaky"
FLAKY_EVERY = 10


def _record(receiver: str, transition: Any, payment: Any, refund: Any) -> None:
    Effect.objects.create(
        receiver=receiver,
        transition_id=transition.pk,
        signal=transition.signal,
        payment_id=payment.pk,
        refund_id=None if refund is None else refund.pk,
        pid=os.getpid(),
    )


def record_effect(
    sender: Any, transition: Any, payment: Any, refund: Any = None, **kwargs: Any
) -> None:
    _record(STEADY, transition, payment, refund)


def record_effect_flaky(
    sender: Any, transition: Any, payment: Any, refund: Any = None, **kwargs: Any
) -> None:
    _record(FLAKY, transition, payment, refund)
    if transition.attempts == 0 and transition.pk % FLAKY_EVERY == 0:
        raise RuntimeError(f"soak: the first attempt of transition {transition.pk} fails")
