"""The webhook benchmark (bench/run.py) in its short form: it runs and reports every path.

A smoke test of the script, not of speed: on PostgreSQL only (the benchmark's database is
PostgreSQL), with gunicorn installed; skipped otherwise. It takes about 15 s.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import environ
import pytest

ROOT = Path(__file__).resolve().parent.parent
PATHS = (
    "succeeded",
    "redelivery",
    "final",
    "unseen",
    "refund-created",
    "refund-succeeded",
    "refund-unseen",
    "receiver",
    "redelivery-soon",
)

DATABASE_URL = os.environ.get("DATABASE_URL", "")
pytestmark = [
    pytest.mark.skipif(
        not DATABASE_URL.startswith(("postgres://", "postgresql://")),
        reason="the benchmark runs on PostgreSQL (set DATABASE_URL)",
    ),
    pytest.mark.skipif(
        importlib.util.find_spec("gunicorn") is None, reason="needs the bench extra (gunicorn)"
    ),
]


def bench_database_url(name: str) -> str:
    """The database ``name`` on the test's PostgreSQL server."""
    db = environ.Env.db_url_config(DATABASE_URL)
    credentials = db["USER"] + (f":{db['PASSWORD']}" if db["PASSWORD"] else "")
    port = f":{db['PORT']}" if db["PORT"] else ""
    return f"postgres://{credentials}@{db['HOST'] or '127.0.0.1'}{port}/{name}"


@pytest.fixture
def bench_database() -> Iterator[str]:
    """A database of the smoke test's own, created by the script and dropped afterwards,
    so that neither the tests' database nor a benchmark running beside is touched.
    ``LEDGEPAY_TEST_BENCH_DB_NAME`` names it (default ``ledgepay_bench_smoke_<pid>``)."""
    import psycopg
    from psycopg import sql

    name = os.environ.get("LEDGEPAY_TEST_BENCH_DB_NAME") or f"ledgepay_bench_smoke_{os.getpid()}"
    yield bench_database_url(name)
    db = environ.Env.db_url_config(DATABASE_URL)
    with psycopg.connect(
        dbname="postgres",
        user=db["USER"] or "postgres",
        password=db["PASSWORD"] or None,
        host=db["HOST"] or "127.0.0.1",
        port=db["PORT"] or 5432,
        autocommit=True,
    ) as admin:
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def test_quick_run_reports_every_path(bench_database):
    env = {**os.environ, "BENCH_DATABASE_URL": bench_database}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    done = subprocess.run(
        [
            sys.executable,
            "bench/run.py",
            "--quick",
            "--deliveries",
            "20",
            "--warmup",
            "4",
            "--workers",
            "2",
            "--concurrency",
            "8",
            "--paths",
            ",".join(PATHS),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "CORRECTNESS FAILED" not in done.stdout
    # The machine: cores and CPU model; Python and PostgreSQL versions.
    assert re.search(r"machine: \S+, \d+ cores, \S", done.stdout)
    assert re.search(r"software: Python \d+\.\d+\.\d+, .*PostgreSQL \d+", done.stdout)
    table = done.stdout.split("Medians over the runs", 1)[1]
    for name in PATHS:
        # One row per path: deliveries/s of each view, the ratio, its range, the statements.
        row = re.search(
            rf"^\s*\S+ {re.escape(name)}\s+8\s+(\d+)\s+(\d+)\s+(\d+\.\d\d)\s+"
            rf"\d+\.\d\d-\d+\.\d\d\s+(\d+)/(\d+)\s",
            table,
            re.MULTILINE,
        )
        assert row, f"no row for {name} in:\n{table}"
        real_rate, bare_rate, _, real_statements, bare_statements = row.groups()
        assert int(real_rate) > 0 and int(bare_rate) > 0
        assert int(real_statements) >= 1 and int(bare_statements) >= 1
        # And its statements, one line per view.
        for view in ("real", "bare"):
            assert re.search(rf"{re.escape(name)}\s+{view}\s+\d+\s+[A-Z]", done.stdout)
