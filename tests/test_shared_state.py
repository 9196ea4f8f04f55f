"""One rate-limit budget and one circuit breaker for the whole project: two real processes
sharing a cache (a file-based one, and Redis when it is reachable) see each other's.

Redis: ``LEDGEPAY_TEST_REDIS_URL`` (default ``redis://127.0.0.1:6379``) and
``LEDGEPAY_TEST_REDIS_DB`` (default 0). Each run writes under a key prefix of its own and
deletes only those keys; no database is ever flushed. Without Redis its cases are skipped,
unless ``LEDGEPAY_REQUIRE_REDIS=1``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
REDIS_URL = os.environ.get("LEDGEPAY_TEST_REDIS_URL", "redis://127.0.0.1:6379")
REDIS_DB = int(os.environ.get("LEDGEPAY_TEST_REDIS_DB", "0"))


def redis_client() -> Any:
    """A redis-py client of the test database, or a reason to skip."""
    try:
        import redis
    except ImportError:
        return "redis-py is not installed"
    connection = redis.Redis.from_url(REDIS_URL, db=REDIS_DB, socket_connect_timeout=1)
    try:
        connection.ping()
    except redis.RedisError as err:
        return f"Redis is not reachable at {REDIS_URL} ({type(err).__name__})"
    return connection


@pytest.fixture(params=["file", "redis"])
def caches_setting(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """``CACHES`` for the processes of one test: a directory of its own, or Redis under a
    key prefix of its own (whose keys are deleted afterwards)."""
    if request.param == "file":
        backend = "django.core.cache.backends.filebased.FileBasedCache"
        yield {"default": {"BACKEND": backend, "LOCATION": str(tmp_path / "cache")}}
        return
    connection = redis_client()
    if isinstance(connection, str):
        if os.environ.get("LEDGEPAY_REQUIRE_REDIS") == "1":
            pytest.fail(f"LEDGEPAY_REQUIRE_REDIS=1 but {connection}.")
        pytest.skip(connection)
    prefix = f"ledgepay-tests-{uuid.uuid4().hex}"
    try:
        yield {
            "default": {
                "BACKEND": "django.core.cache.backends.redis.RedisCache",
                "LOCATION": REDIS_URL,
                "KEY_PREFIX": prefix,
                "OPTIONS": {"db": REDIS_DB},
            }
        }
    finally:
        keys = list(connection.scan_iter(match=f"{prefix}:*"))
        if keys:
            connection.delete(*keys)
        connection.close()


def run_process(
    caches: dict[str, Any], steps: list[tuple[str, str]], *, shared: bool = True
) -> list[dict[str, Any]]:
    """Run ``steps`` (action, API key) in a new Python process; return what each did."""
    config = {
        "caches": caches,
        "rate_limit_cache": "default" if shared else None,
        "steps": [{"action": action, "api_key": key} for action, key in steps],
    }
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings"}
    finished = subprocess.run(
        [sys.executable, "-m", "tests.shared_state_worker", json.dumps(config)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert finished.returncode == 0, finished.stderr
    results: list[dict[str, Any]] = json.loads(finished.stdout)
    return results


def summary(result: dict[str, Any]) -> tuple[int, str | None]:
    return result["sent"], result["error"]


# Each API key is an account of its own in the cache, so the cases below do not meet.
USED_UP, LOW, PAUSED, DOWN, FRESH = (f"sk_test_shared_{name}" for name in "abcde")


def test_a_window_used_up_in_one_process_holds_back_the_other(caches_setting):
    first = run_process(caches_setting, [("exhaust", USED_UP), ("rate-limited", PAUSED)])
    assert [summary(result) for result in first] == [(1, None), (1, "RateLimitError")]

    second = run_process(
        caches_setting, [("checkout", USED_UP), ("checkout", PAUSED), ("checkout", FRESH)]
    )

    # A shopper's call may not wait: it fails at once, and sends nothing.
    assert [summary(result) for result in second] == [
        (0, "RateLimitError"),
        (0, "RateLimitError"),
        (1, None),
    ]


def test_background_calls_leave_the_reserve_another_process_needs(caches_setting):
    run_process(caches_setting, [("low", LOW)])  # five requests left in the window

    second = run_process(caches_setting, [("checkout", LOW), ("sync", LOW)])

    checkout, sync = second
    assert summary(checkout) == (1, None)
    assert checkout["waits"] == []
    # The sync waited for the next window (about 30 s away) before sending.
    assert summary(sync) == (1, None)
    assert len(sync["waits"]) == 1
    assert 20 < sync["waits"][0] <= 30


def test_a_breaker_opened_in_one_process_refuses_the_others_calls(caches_setting):
    first = run_process(caches_setting, [("down", DOWN)])
    assert summary(first[0]) == (5, None)

    second = run_process(caches_setting, [("checkout", DOWN), ("checkout", FRESH)])

    assert [summary(result) for result in second] == [
        (0, "LedgePayUnavailableError"),
        (1, None),
    ]


def test_without_a_shared_cache_each_process_keeps_its_own(tmp_path):
    caches = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    run_process(caches, [("exhaust", USED_UP), ("down", DOWN)], shared=False)

    second = run_process(caches, [("checkout", USED_UP), ("checkout", DOWN)], shared=False)

    assert [summary(result) for result in second] == [(1, None), (1, None)]
