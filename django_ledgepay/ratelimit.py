"""The rate-limit budget every process of a project shares.

LedgePay's answers carry ``X-RateLimit-Limit``, ``X-RateLimit-Remaining`` and
``X-RateLimit-Reset``, and a 429 may ask for a pause (``Retry-After``). The last reading and
the pause are kept in the cache of :mod:`django_ledgepay.sharedcache`, so that a process that
has not called LedgePay for a while still waits for a window another process used up, and
every process waits out the same 429. Background callers (see
:func:`django_ledgepay.client.background`) stop at ``LEDGEPAY_RATE_LIMIT_RESERVE`` requests
left in a window, which stay for checkout and refunds.

Times are Unix seconds, passed in by the caller, so that every process (and every host)
reads the same moment.
"""

from __future__ import annotations

import email.utils
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from django_ledgepay import sharedcache

#: The names this module keeps in the shared cache.
WINDOW: Final = "ratelimit:window"
PAUSE: Final = "ratelimit:pause"
NAMES: Final = (WINDOW, PAUSE)
#: How long a reading without a reset time is kept, and the most any reading is kept.
READING_TTL: Final = 3600.0

#: Why a call waits before it is sent.
WINDOW_USED_UP: Final = "window"
RESERVE_REACHED: Final = "reserve"
PAUSED: Final = "pause"
#: What a RateLimitError says, and what is logged, for each reason to wait.
WAIT_REASONS: Final[Mapping[str, str]] = {
    WINDOW_USED_UP: "LedgePay's rate limit is used up",
    PAUSED: "LedgePay asked for a pause (429)",
    RESERVE_REACHED: (
        "LedgePay's rate limit is down to the requests left for checkout and refunds"
        " (LEDGEPAY_RATE_LIMIT_RESERVE)"
    ),
}
WAIT_LOGS: Final[Mapping[str, str]] = {
    WINDOW_USED_UP: "LedgePay rate limit reached; waiting for the window to reset",
    PAUSED: "LedgePay asked for a pause (429); waiting it out",
    RESERVE_REACHED: (
        "LedgePay rate limit down to the reserve for checkout and refunds; a background call"
        " waits for the window to reset"
    ),
}


def header_number(value: str | None) -> float | None:
    """A header's value as a finite number, or None."""
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def retry_after(headers: Mapping[str, str], now: float) -> float | None:
    """The seconds an answer asks to wait: its ``Retry-After`` (seconds or an HTTP date),
    else its ``X-RateLimit-Reset``; None when it names neither in a form that can be read.
    A time already past gives a number of 0 or less."""
    value = headers.get("Retry-After")
    if value is not None:
        seconds = header_number(value)
        if seconds is not None:
            return seconds
        try:
            moment = email.utils.parsedate_to_datetime(value)
            if moment is not None and moment.tzinfo is not None:
                return moment.timestamp() - now
        except (TypeError, ValueError, OverflowError):
            pass  # Not a date that can be read: the reset header, or nothing.
    reset = header_number(headers.get("X-RateLimit-Reset"))
    if reset is not None:
        return reset - now
    return None


@dataclass(frozen=True)
class RateLimit:
    """The rate-limit headers of one answer; None where the answer left a header out."""

    limit: int | None = None
    remaining: int | None = None
    reset: float | None = None

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> RateLimit | None:
        limit = header_number(headers.get("X-RateLimit-Limit"))
        remaining = header_number(headers.get("X-RateLimit-Remaining"))
        reset = header_number(headers.get("X-RateLimit-Reset"))
        if limit is None and remaining is None and reset is None:
            return None
        return cls(
            limit=None if limit is None else int(limit),
            remaining=None if remaining is None else int(remaining),
            reset=reset,
        )

    def as_value(self) -> tuple[int | None, int | None, float | None]:
        """What the shared cache keeps: numbers only."""
        return (self.limit, self.remaining, self.reset)

    @classmethod
    def from_value(cls, value: Any) -> RateLimit | None:
        """The reading :meth:`as_value` kept, or None for anything else (a value written by
        another version, say)."""
        if not isinstance(value, (tuple, list)) or len(value) != 3:
            return None
        limit, remaining, reset = value
        if not all(part is None or sharedcache.is_number(part) for part in value):
            return None
        return cls(
            limit=None if limit is None else int(limit),
            remaining=None if remaining is None else int(remaining),
            reset=None if reset is None else float(reset),
        )


@dataclass(frozen=True)
class Wait:
    """How long a call waits before it is sent, and why (:data:`WINDOW_USED_UP`,
    :data:`RESERVE_REACHED` or :data:`PAUSED`)."""

    seconds: float
    reason: str


def last() -> RateLimit | None:
    """The last rate-limit reading any process of the project kept, if any."""
    return RateLimit.from_value(sharedcache.read(WINDOW))


def record(reading: RateLimit, now: float) -> None:
    """Keep ``reading`` as the project's, unless it is older news about the same window."""
    kept = last()
    # Answers of concurrent calls arrive in any order: within one window, the fewest
    # requests left is the truest reading.
    if (
        kept is not None
        and kept.reset == reading.reset
        and kept.remaining is not None
        and (reading.remaining is None or kept.remaining < reading.remaining)
    ):
        return
    ttl = READING_TTL if reading.reset is None else min(reading.reset - now + 1, READING_TTL)
    sharedcache.write(WINDOW, reading.as_value(), ttl)


def record_pause(seconds: float, now: float) -> float:
    """Keep the pause a 429 asked for, so that every process waits it out (a longer pause
    kept already stays); return when this one ends."""
    until = now + seconds
    kept = sharedcache.read(PAUSE)
    if not (sharedcache.is_number(kept) and kept >= until):
        sharedcache.write(PAUSE, until, seconds + 1)
    return until


def wait_before_sending(
    now: float, *, background: bool, reserve: int, waited_until: float | None = None
) -> Wait | None:
    """How long a call must wait before it is sent, or None to send at once.

    Every call waits for a 429's pause (except one that the call waited out itself:
    ``waited_until``) and for a window with no request left; a ``background`` call also
    for a window with ``reserve`` requests or fewer left.
    """
    found = sharedcache.read_many(NAMES)
    waits: list[Wait] = []
    pause = found.get(PAUSE)
    if (
        sharedcache.is_number(pause)
        and pause > now
        and (waited_until is None or pause > waited_until)
    ):
        waits.append(Wait(float(pause) - now, PAUSED))
    reading = RateLimit.from_value(found.get(WINDOW))
    if (
        reading is not None
        and reading.remaining is not None
        and reading.reset is not None
        and reading.reset > now
    ):
        if reading.remaining <= 0:
            waits.append(Wait(reading.reset - now, WINDOW_USED_UP))
        elif background and reading.remaining <= reserve:
            waits.append(Wait(reading.reset - now, RESERVE_REACHED))
    return max(waits, key=lambda wait: wait.seconds, default=None)
