"""The circuit breaker: while LedgePay is down, calls fail at once instead of each waiting
out its timeouts and retries.

After ``LEDGEPAY_BREAKER_THRESHOLD`` calls in a row found LedgePay down (no connection, a
timeout or a 5xx, after their retries), the breaker opens: for ``LEDGEPAY_BREAKER_COOLDOWN``
seconds every call raises :class:`~django_ledgepay.exceptions.LedgePayUnavailableError`
without sending anything. Then it is half-open: one call, the first to claim the trial in
any process, is let through; the others are still refused. Any answer from LedgePay but a
5xx closes the breaker; another failure opens it for a new cooldown. The state is kept in
the cache of :mod:`django_ledgepay.sharedcache`, so that every process opens and closes
together. ``LEDGEPAY_BREAKER_THRESHOLD = 0`` turns the breaker off.

Times are Unix seconds, passed in by the caller.
"""

from __future__ import annotations

import enum
import logging
from typing import Final

from django_ledgepay import sharedcache
from django_ledgepay.conf import conf
from django_ledgepay.exceptions import LedgePayUnavailableError

logger = logging.getLogger(__name__)

#: The names this module keeps in the shared cache: calls in a row that found LedgePay down,
#: when the open breaker lets a trial through, and the claim of that trial.
FAILURES: Final = "breaker:failures"
OPEN_UNTIL: Final = "breaker:open-until"
TRIAL: Final = "breaker:trial"
NAMES: Final = (FAILURES, OPEN_UNTIL, TRIAL)
#: How long the count and the open state are kept without news (seconds).
STATE_TTL: Final = 86400.0


class Outcome(enum.Enum):
    """What one call, retries included, tells of LedgePay's health."""

    #: LedgePay answered (anything but a 5xx): it is up.
    ANSWERED = "answered"
    #: No connection, a timeout, or a 5xx, after the retries.
    DOWN = "down"
    #: Nothing reached LedgePay (refused before sending, or could not be sent): no news.
    UNSENT = "unsent"


def admit(method: str, path: str, now: float) -> bool:
    """Let a call through, or raise ``LedgePayUnavailableError`` while the breaker is open.

    Returns whether the call is the one trial of a half-open breaker; whatever becomes of
    it, the caller passes that to :func:`settle`.
    """
    threshold = conf.LEDGEPAY_BREAKER_THRESHOLD
    if threshold == 0:
        return False
    until = sharedcache.read(OPEN_UNTIL)
    if not sharedcache.is_number(until):
        return False
    if now < until:
        wait = float(until) - now
        raise LedgePayUnavailableError(
            f"LedgePay is unavailable: {threshold} calls in a row found it down, so"
            f" {method} {path} was not sent. One call will be let through to try in"
            f" {wait:.0f}s (LEDGEPAY_BREAKER_COOLDOWN).",
            retry_after=wait,
        )
    if sharedcache.add(TRIAL, now, _trial_ttl()):
        logger.info("LedgePay circuit breaker half-open: %s %s is let through", method, path)
        return True
    raise LedgePayUnavailableError(
        f"LedgePay is unavailable: another call is trying whether it is back, so {method}"
        f" {path} was not sent."
    )


def settle(outcome: Outcome, *, trial: bool, now: float) -> None:
    """Count what a call let through by :func:`admit` found, opening or closing the
    breaker."""
    if outcome is Outcome.ANSWERED:
        found = sharedcache.read_many((FAILURES, OPEN_UNTIL))
        if found.get(FAILURES) or OPEN_UNTIL in found:
            sharedcache.delete(*NAMES)
            if OPEN_UNTIL in found:
                logger.info("LedgePay circuit breaker closed: LedgePay answered again")
        elif trial:
            sharedcache.delete(TRIAL)
        return
    if outcome is Outcome.UNSENT:
        if trial:
            sharedcache.delete(TRIAL)
        return
    threshold = conf.LEDGEPAY_BREAKER_THRESHOLD
    if threshold == 0:
        return
    failures = sharedcache.increment(FAILURES, STATE_TTL)
    if failures < threshold:
        return
    cooldown = conf.LEDGEPAY_BREAKER_COOLDOWN
    sharedcache.write(OPEN_UNTIL, now + cooldown, STATE_TTL)
    if trial:
        sharedcache.delete(TRIAL)
    if failures == threshold or trial:
        logger.warning(
            "LedgePay circuit breaker open: %d calls in a row found LedgePay down; calls "
            "fail at once for %.0fs, then one is let through to try",
            failures,
            cooldown,
        )


def is_open(now: float) -> bool:
    """Whether a call made now would be refused without a trial (for health checks)."""
    if conf.LEDGEPAY_BREAKER_THRESHOLD == 0:
        return False
    until = sharedcache.read(OPEN_UNTIL)
    return sharedcache.is_number(until) and now < until


def _trial_ttl() -> float:
    # A trial whose process died frees the claim after this; one that is merely slow
    # may see a second trial start meanwhile, which does no harm.
    return conf.LEDGEPAY_BREAKER_COOLDOWN + 2 * conf.LEDGEPAY_TIMEOUT
