"""The CPU OpenTelemetry's instrumentation costs a webhook: the sale (a known pending payment
moved) delivered N times with the SDK recording every metric and span, beside the same
deliveries with the ``opentelemetry`` package out of reach (every hook a no-op).

Run from the repository root::

    .venv/bin/python bench/otel_overhead.py [--deliveries N] [--rounds R]

OpenTelemetry's providers are set once per process, so each measure is a child process:
``plain`` (the import of ``opentelemetry`` blocked) or ``sdk`` (a ``MeterProvider`` with an
in-memory reader, a ``TracerProvider`` with a batch processor to an exporter that drops
spans, as a production set-up records them). Rounds alternate plain, sdk, sdk, plain; each
child migrates a database of its own (SQLite in memory, or ``DATABASE_URL``'s server with a
``test_`` database), posts N signed deliveries through Django's test client and prints its
CPU per delivery (this process; the database's own work is the same either way). The
target: the SDK's median within 3 % of plain's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET = 1.03


def child(mode: str, deliveries: int) -> float:
    """In a child process: the CPU seconds per delivery of ``deliveries`` sales."""
    if mode == "plain":
        sys.modules["opentelemetry"] = None  # type: ignore[assignment]
    else:
        from opentelemetry import metrics, trace
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            SpanExporter,
            SpanExportResult,
        )

        class Dropped(SpanExporter):
            def export(self, spans: object) -> SpanExportResult:
                return SpanExportResult.SUCCESS

        traces = TracerProvider()
        traces.add_span_processor(BatchSpanProcessor(Dropped()))
        trace.set_tracer_provider(traces)
        metrics.set_meter_provider(MeterProvider(metric_readers=[InMemoryMetricReader()]))

    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    import django

    django.setup()
    from django.db import connection
    from django.test import Client
    from django.test.utils import setup_test_environment

    from django_ledgepay.testing import signed_webhook
    from tests.factories import make_payment

    setup_test_environment()
    connection.creation.create_test_db(verbosity=0, autoclobber=True)
    try:
        payments = [make_payment(status="pending") for _ in range(deliveries)]
        signed = [
            signed_webhook(
                {
                    "event": "payment.succeeded",
                    "data": {"id": p.ledgepay_id, "amount": p.amount, "currency": p.currency},
                }
            )
            for p in payments
        ]
        client = Client()
        began = time.process_time()
        for body, headers in signed:
            response = client.post(
                "/ledgepay/webhook/", body, content_type="application/json", headers=headers
            )
            assert response.status_code == 200, response.content
        return (time.process_time() - began) / deliveries
    finally:
        connection.creation.destroy_test_db(
            connection.settings_dict["NAME"], verbosity=0, keepdb=False
        )


def measure(mode: str, deliveries: int) -> float:
    done = subprocess.run(
        [sys.executable, __file__, "--child", mode, "--deliveries", str(deliveries)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"the {mode} child failed:\n{done.stderr[-2000:]}")
    return float(json.loads(done.stdout.strip().splitlines()[-1])["cpu_per_delivery"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deliveries", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", choices=["plain", "sdk"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.deliveries < 1 or args.rounds < 1:
        parser.error("--deliveries and --rounds must be at least 1")
    if args.child:
        print(json.dumps({"cpu_per_delivery": child(args.child, args.deliveries)}))
        return 0
    load = os.getloadavg()[0]
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.system()}; "
        f"load average {load:.2f} at the start; database: "
        f"{os.environ.get('DATABASE_URL', 'SQLite in memory').split('@')[-1]}"
    )
    runs: dict[str, list[float]] = {"plain": [], "sdk": []}
    for _ in range(args.rounds):
        for mode in ("plain", "sdk", "sdk", "plain"):
            runs[mode].append(measure(mode, args.deliveries))
    plain, sdk = statistics.median(runs["plain"]), statistics.median(runs["sdk"])
    ratio = sdk / plain
    for mode, values in runs.items():
        shown = ", ".join(f"{value * 1000:.3f}" for value in values)
        middle = statistics.median(values) * 1000
        print(f"{mode:>5}: CPU ms per delivery {shown} (median {middle:.3f})")
    verdict = "within" if ratio <= TARGET else "PAST"
    print(f"the SDK costs {ratio:.3f} times plain's CPU: {verdict} the {TARGET:.2f} target")
    return 0 if ratio <= TARGET else 1


if __name__ == "__main__":
    raise SystemExit(main())
