"""The cache through which every process of a project shares the client's state: the
rate-limit budget (:mod:`django_ledgepay.ratelimit`) and the circuit breaker
(:mod:`django_ledgepay.breaker`).

``LEDGEPAY_RATE_LIMIT_CACHE`` names it, an alias of ``CACHES``; ``None``, or an alias of a
``DummyCache`` (which keeps nothing), keeps the state in this process. Only Django's cache
API is used (``add``, ``incr``, ``get``, ``set``, ``delete``), so any backend serves; Redis,
Memcached and the database make ``add`` and ``incr`` hold across processes. A cache that
fails (Redis down, say) is logged, and this process's own store serves meanwhile: a payment
never fails because of the cache.

Every key is ``django_ledgepay:<namespace>:<name>``, and the cache's own ``KEY_PREFIX``
comes on top. The namespace is an HMAC, keyed with ``SECRET_KEY``, of the API base and key:
two projects, or two LedgePay accounts, sharing a Redis never share a budget or a breaker,
and the cache holds neither the key nor anything it can be checked against. Values are
numbers only.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, Final, TypeGuard, TypeVar

from django.core.cache import BaseCache, InvalidCacheBackendError, caches
from django.core.cache.backends.dummy import DummyCache
from django.core.cache.backends.locmem import LocMemCache
from django.core.exceptions import ImproperlyConfigured
from django.utils.crypto import salted_hmac

from django_ledgepay.conf import conf

logger = logging.getLogger(__name__)

#: The first part of every key this app writes.
KEY_PREFIX: Final = "django_ledgepay"
#: How long, at most, a failing cache is logged about once (seconds).
FAILURE_LOG_INTERVAL: Final = 60.0

T = TypeVar("T")


class _LocalStore:
    """This process's own store: the cache when none is shared, or while it fails."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.cache = LocMemCache(f"{KEY_PREFIX}-{os.getpid()}-{id(self)}", {})
        self.failure_logged_at: float | None = None
        #: Every namespace this process has used, so that :func:`reset` forgets them all
        #: after the settings changed (in tests).
        self.namespaces: set[str] = set()


_local = _LocalStore()


def _after_fork() -> None:
    # The store's lock may be held by a thread the child does not have.
    global _local
    _local = _LocalStore()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


def store() -> BaseCache:
    """The cache the state lives in: the one ``LEDGEPAY_RATE_LIMIT_CACHE`` names, or this
    process's own. An alias that is not in ``CACHES`` raises ``ImproperlyConfigured``."""
    alias = conf.LEDGEPAY_RATE_LIMIT_CACHE
    if alias is None:
        return _local.cache
    try:
        cache = caches[alias]
    except InvalidCacheBackendError as err:
        raise ImproperlyConfigured(
            "LEDGEPAY_RATE_LIMIT_CACHE names a cache that is not in CACHES or cannot be loaded."
        ) from err
    return _local.cache if isinstance(cache, DummyCache) else cache


def is_shared() -> bool:
    """Whether the state is shared with other processes (not kept in this one)."""
    return store() is not _local.cache


def namespace() -> str:
    """The part of the keys proper to this project and LedgePay account."""
    account = f"{conf.LEDGEPAY_API_BASE}\n{conf.LEDGEPAY_API_KEY}"
    return salted_hmac(f"{KEY_PREFIX}.sharedcache", account, algorithm="sha256").hexdigest()[:32]


def key(name: str, space: str | None = None) -> str:
    """The full key of ``name``, in the current namespace unless ``space`` is given."""
    if space is None:
        space = namespace()
        _local.namespaces.add(space)
    return f"{KEY_PREFIX}:{space}:{name}"


def _run(operation: Callable[[BaseCache], T]) -> T:
    cache = store()
    if cache is _local.cache:
        return operation(cache)
    try:
        return operation(cache)
    except Exception as err:  # Each backend raises its own (redis, pymemcache, database).
        _log_failure(err)
        return operation(_local.cache)


def _log_failure(err: Exception) -> None:
    # The type only: a cache's message may hold its URL, and a password in it.
    moment = time.monotonic()
    with _local.lock:
        last = _local.failure_logged_at
        if last is not None and moment - last < FAILURE_LOG_INTERVAL:
            return
        _local.failure_logged_at = moment
    logger.warning(
        "LEDGEPAY_RATE_LIMIT_CACHE failed (%s): this process keeps the rate-limit budget and "
        "the circuit breaker to itself until it answers again",
        type(err).__name__,
    )


def read(name: str) -> Any:
    """The value kept under ``name``, or None."""
    full = key(name)
    return _run(lambda cache: cache.get(full))


def read_many(names: Iterable[str]) -> dict[str, Any]:
    """The values kept under ``names`` (one round trip), by name; missing ones left out."""
    full = {key(name): name for name in names}
    found = _run(lambda cache: cache.get_many(list(full)))
    return {full[k]: value for k, value in found.items()}


def write(name: str, value: Any, timeout: float) -> None:
    """Keep ``value`` under ``name`` for ``timeout`` seconds."""
    full = key(name)
    seconds = _timeout(timeout)
    _run(lambda cache: cache.set(full, value, seconds))


def add(name: str, value: Any, timeout: float) -> bool:
    """Keep ``value`` under ``name`` unless something is kept there; whether it was."""
    full = key(name)
    seconds = _timeout(timeout)
    return _run(lambda cache: cache.add(full, value, seconds))


def increment(name: str, timeout: float) -> int:
    """Add one to the counter under ``name`` (0 when there is none) and return it."""
    full = key(name)
    seconds = _timeout(timeout)

    def operation(cache: BaseCache) -> int:
        cache.add(full, 0, seconds)
        try:
            return int(cache.incr(full))
        except ValueError:
            # Expired between the two calls: start again.
            cache.add(full, 0, seconds)
            return int(cache.incr(full))

    return _run(operation)


def delete(*names: str) -> None:
    full = [key(name) for name in names]
    _run(lambda cache: cache.delete_many(full))


def reset(names: Iterable[str]) -> None:
    """Forget ``names`` in the shared cache, for the current API base and key and for every
    other this process has used, and all that this process keeps of its own."""
    names = list(names)
    spaces = {namespace(), *_local.namespaces}
    full = [key(name, space) for space in sorted(spaces) for name in names]
    _run(lambda cache: cache.delete_many(full))
    _local.cache.clear()
    _local.failure_logged_at = None


def _timeout(seconds: float) -> int:
    # Whole seconds, at least one: some backends take 0 as "expire at once" or "never".
    return max(1, int(seconds + 0.999))


def is_number(value: object) -> TypeGuard[float]:
    """Whether a value read back is a finite number (a ``bool`` is not)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
