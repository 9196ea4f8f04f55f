"""Settings of django-ledgepay, read from ``django.conf.settings`` each time they are used."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TypeAlias

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

DEFAULT_API_BASE = "https://api.ledgepay.com/v1"
WEBHOOK_PROCESSING_INLINE = "inline"
WEBHOOK_PROCESSING_TASK = "task"
WEBHOOK_PROCESSING_MODES = (WEBHOOK_PROCESSING_INLINE, WEBHOOK_PROCESSING_TASK)
#: The most minutes a setting in minutes takes (100 years): any more is a mistake.
MAX_MINUTES = 100 * 365 * 24 * 60

#: A webhook signing secret: text (as read from the environment) or bytes.
Secret: TypeAlias = "str | bytes"


class Settings:
    """Each property reads the project's setting on access, so ``override_settings`` works."""

    @property
    def LEDGEPAY_API_KEY(self) -> str:
        return str(getattr(settings, "LEDGEPAY_API_KEY", "") or "")

    @property
    def LEDGEPAY_API_BASE(self) -> str:
        base = getattr(settings, "LEDGEPAY_API_BASE", DEFAULT_API_BASE) or DEFAULT_API_BASE
        return str(base).rstrip("/")

    @property
    def LEDGEPAY_WEBHOOK_SECRET(self) -> Secret | Sequence[Secret]:
        value: Secret | Sequence[Secret] = getattr(settings, "LEDGEPAY_WEBHOOK_SECRET", "")
        return value

    @property
    def webhook_secrets(self) -> list[Secret]:
        """The configured signing secrets as a list, without empty entries or entries that
        are not a secret (``manage.py check`` reports those)."""
        value = self.LEDGEPAY_WEBHOOK_SECRET
        if isinstance(value, (str, bytes)):
            return [value] if value else []
        if not isinstance(value, (list, tuple)):
            return []
        return [secret for secret in value if isinstance(secret, (str, bytes)) and secret]

    @property
    def LEDGEPAY_WEBHOOK_TOLERANCE(self) -> int:
        tolerance = _number("LEDGEPAY_WEBHOOK_TOLERANCE", 300)
        if tolerance < 0:
            raise ImproperlyConfigured("LEDGEPAY_WEBHOOK_TOLERANCE must not be negative.")
        return int(tolerance)

    @property
    def LEDGEPAY_TIMEOUT(self) -> float:
        timeout = _number("LEDGEPAY_TIMEOUT", 10)
        if timeout <= 0:
            raise ImproperlyConfigured("LEDGEPAY_TIMEOUT must be a number of seconds above 0.")
        return timeout

    @property
    def LEDGEPAY_MAX_RETRIES(self) -> int:
        return max(0, int(_number("LEDGEPAY_MAX_RETRIES", 3)))

    @property
    def LEDGEPAY_MAX_WAIT(self) -> float:
        """The most one call to LedgePay waits in all between its attempts (backoff and
        rate-limit waits together); a retry that would wait longer is not made."""
        wait = _number("LEDGEPAY_MAX_WAIT", 20)
        if wait < 0:
            raise ImproperlyConfigured("LEDGEPAY_MAX_WAIT must not be negative.")
        return wait

    @property
    def LEDGEPAY_TASK_BACKEND(self) -> str:
        """The alias in ``TASKS`` of the backend that runs this app's tasks."""
        return str(getattr(settings, "LEDGEPAY_TASK_BACKEND", "default"))

    @property
    def LEDGEPAY_DELIVERY_MAX_ATTEMPTS(self) -> int:
        """How many times a transition's failing receivers are tried before giving up."""
        return max(1, int(_number("LEDGEPAY_DELIVERY_MAX_ATTEMPTS", 10)))

    @property
    def LEDGEPAY_DELIVERY_LEASE(self) -> float:
        """Seconds a deliverer holds its claim on a receiver it runs: no other deliverer
        runs that receiver meanwhile, and a crashed deliverer's claim ends with it."""
        lease = _number("LEDGEPAY_DELIVERY_LEASE", 300)
        if lease <= 0:
            raise ImproperlyConfigured("LEDGEPAY_DELIVERY_LEASE must be a positive number.")
        return lease

    @property
    def LEDGEPAY_WEBHOOK_PROCESSING(self) -> str:
        """``"inline"``: a delivery is applied in the request; ``"task"``: in a worker."""
        mode = getattr(settings, "LEDGEPAY_WEBHOOK_PROCESSING", WEBHOOK_PROCESSING_INLINE)
        if mode not in WEBHOOK_PROCESSING_MODES:
            raise ImproperlyConfigured(
                "LEDGEPAY_WEBHOOK_PROCESSING must be one of "
                f"{', '.join(map(repr, WEBHOOK_PROCESSING_MODES))}."
            )
        return str(mode)

    @property
    def LEDGEPAY_RATE_LIMIT_CACHE(self) -> str | None:
        """The alias in ``CACHES`` of the cache every process shares the rate-limit budget
        and the circuit breaker through; ``None``: each process keeps its own."""
        alias = getattr(settings, "LEDGEPAY_RATE_LIMIT_CACHE", "default")
        if alias is not None and not isinstance(alias, str):
            raise ImproperlyConfigured(
                "LEDGEPAY_RATE_LIMIT_CACHE must be an alias of CACHES, or None."
            )
        return alias

    @property
    def LEDGEPAY_RATE_LIMIT_RESERVE(self) -> int:
        """How many requests of each rate-limit window background callers (the sync and
        reconcile commands) leave to checkout and refunds."""
        reserve = _number("LEDGEPAY_RATE_LIMIT_RESERVE", 10)
        if reserve < 0:
            raise ImproperlyConfigured("LEDGEPAY_RATE_LIMIT_RESERVE must not be negative.")
        return int(reserve)

    @property
    def LEDGEPAY_BREAKER_THRESHOLD(self) -> int:
        """How many calls in a row that found LedgePay down open the circuit breaker;
        ``0`` turns it off."""
        threshold = _number("LEDGEPAY_BREAKER_THRESHOLD", 5)
        if threshold < 0:
            raise ImproperlyConfigured("LEDGEPAY_BREAKER_THRESHOLD must not be negative.")
        return int(threshold)

    @property
    def LEDGEPAY_BREAKER_COOLDOWN(self) -> float:
        """Seconds an open circuit breaker refuses calls before it lets one through."""
        cooldown = _number("LEDGEPAY_BREAKER_COOLDOWN", 30)
        if cooldown < 0:
            raise ImproperlyConfigured("LEDGEPAY_BREAKER_COOLDOWN must not be negative.")
        return cooldown

    @property
    def LEDGEPAY_STALE_PENDING_AFTER(self) -> float:
        """Minutes after which a pending payment is stale: the health check ``pending``
        reports it (``ledgepay_sync --stale`` asks LedgePay about it)."""
        return _minutes("LEDGEPAY_STALE_PENDING_AFTER", 60)

    @property
    def LEDGEPAY_HEALTH_OVERDUE_AFTER(self) -> float:
        """Minutes a transition may be past its next attempt, a stored delivery past its
        grace, or a refund request without an answer, before ``ledgepay_health`` warns."""
        overdue = _number("LEDGEPAY_HEALTH_OVERDUE_AFTER", 15)
        if not 0 <= overdue <= MAX_MINUTES:
            raise ImproperlyConfigured(
                "LEDGEPAY_HEALTH_OVERDUE_AFTER must be a number of minutes, 0 or more."
            )
        return overdue

    @property
    def LEDGEPAY_HEALTH_CRITICAL_AFTER(self) -> float:
        """Minutes after which what ``ledgepay_health`` warns about (a transition past due,
        an event failed or not applied, a refund's outcome unknown) is critical."""
        return _minutes("LEDGEPAY_HEALTH_CRITICAL_AFTER", 24 * 60)

    @property
    def LEDGEPAY_HEALTH_WEBHOOK_SILENCE(self) -> float:
        """Minutes without a valid webhook delivery, while payments were created, after
        which the health check ``webhooks`` reports the silence."""
        return _minutes("LEDGEPAY_HEALTH_WEBHOOK_SILENCE", 60)

    @property
    def LEDGEPAY_HEALTH_PENDING_CRITICAL(self) -> int:
        """The health check ``pending`` is critical when at least this many of the last 20
        payments created more than ``LEDGEPAY_STALE_PENDING_AFTER`` minutes ago are still
        pending (above 20: never)."""
        count = _number("LEDGEPAY_HEALTH_PENDING_CRITICAL", 10)
        if count < 1:
            raise ImproperlyConfigured("LEDGEPAY_HEALTH_PENDING_CRITICAL must be at least 1.")
        return math.ceil(count)


def _number(name: str, default: float) -> float:
    """The setting ``name`` as a finite number; anything else raises ImproperlyConfigured
    naming the setting, never its value (``manage.py check`` reports it too)."""
    value = getattr(settings, name, default)
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not math.isfinite(number):
        raise ImproperlyConfigured(f"{name} must be a number.")
    return number


def _minutes(name: str, default: float) -> float:
    """The setting ``name`` as a number of minutes above 0 (at most 100 years)."""
    minutes = _number(name, default)
    if not 0 < minutes <= MAX_MINUTES:
        raise ImproperlyConfigured(
            f"{name} must be a number of minutes above 0, at most 100 years."
        )
    return minutes


conf = Settings()
