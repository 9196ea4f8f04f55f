"""The soak's receivers: each writes one Effect row per run, in its delivery's transaction.

``record_effect`` always succeeds. ``record_effect_flaky`` raises on the first attempt of
every tenth transition, after its write (rolled back with it), so retries are part of the
soak too: by the workers after the backoff, or by ``ledgepay_deliver --all``.
``call_outside`` stands for a receiver that calls another system (an email, a warehouse):
before its write, it appends a line to the file ``SOAK_OUTSIDE_LOG`` names, which no
rollback takes back, and waits a few milliseconds as such a call would; it always succeeds.
The soak counts its lines: how often it ran for each transition.
"""

from __future__ import annotations

import os
import time
from typing import Any

from bench.soak.models import Effect

STEADY = "soak.record_effect"
FLAKY = "soak.record_effect_flaky"
OUTSIDE = "soak.call_outside"
FLAKY_EVERY = 10
#: How long the call to the other system takes, in seconds.
OUTSIDE_CALL = 0.005


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


def call_outside(
    sender: Any, transition: Any, payment: Any, refund: Any = None, **kwargs: Any
) -> None:
    path = os.environ.get("SOAK_OUTSIDE_LOG")
    if path:
        # One write of one short line to a file opened for appending: lines from several
        # processes never mix. Written before the call: a run killed during it counts.
        line = f"{transition.pk} {os.getpid()} {time.time():.6f}\n".encode()
        descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(descriptor, line)
        finally:
            os.close(descriptor)
    time.sleep(OUTSIDE_CALL)
    _record(OUTSIDE, transition, payment, refund)
