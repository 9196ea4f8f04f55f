from __future__ import annotations

import logging
import signal
import sys
import threading
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from django_ledgepay.conf import conf
from django_ledgepay.sandbox import Sandbox, StateFileError
from django_ledgepay.sandbox.server import MAX_REFUND_DELAY, is_webhook_url


class Command(BaseCommand):
    help = (
        "Run the LedgePay sandbox on 127.0.0.1: the API under /v1, a checkout page with Pay, "
        "Fail and Cancel, and webhook deliveries signed with LEDGEPAY_WEBHOOK_SECRET."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--port", type=int, default=8765, help="Port (default 8765; 0 picks a free one)."
        )
        parser.add_argument(
            "--webhook-url",
            help="Where to deliver events, e.g. http://127.0.0.1:8000/ledgepay/webhook/.",
        )
        parser.add_argument(
            "--failure-rate",
            type=float,
            default=0.0,
            metavar="F",
            help="Share of API requests that fail with 500, 429 or a dropped connection.",
        )
        parser.add_argument(
            "--rate-limit", type=int, metavar="N", help="Answer 429 past N requests a minute."
        )
        parser.add_argument(
            "--refund-delay",
            type=float,
            default=1.0,
            metavar="S",
            help=f"Seconds before a refund succeeds, 0 to {MAX_REFUND_DELAY} (default 1).",
        )
        parser.add_argument(
            "--state",
            metavar="FILE",
            help=(
                "Keep payments, refunds, idempotency keys and undelivered webhooks in FILE "
                "(JSON, created if missing) across restarts."
            ),
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if not 0 <= options["port"] <= 65535:
            raise CommandError("--port must be between 0 and 65535 (0 picks a free port).")
        if not 0.0 <= options["failure_rate"] <= 1.0:
            raise CommandError("--failure-rate must be between 0 and 1.")
        if options["rate_limit"] is not None and options["rate_limit"] < 1:
            raise CommandError("--rate-limit must be at least 1.")
        # Written so that NaN fails too; infinity once failed a thread at the first refund.
        if not 0 <= options["refund_delay"] <= MAX_REFUND_DELAY:
            raise CommandError(
                f"--refund-delay must be between 0 and {MAX_REFUND_DELAY} seconds (a day)."
            )
        if options["webhook_url"] is not None and not is_webhook_url(options["webhook_url"]):
            raise CommandError(
                "--webhook-url must be an absolute http(s) URL with a host, such as "
                "http://127.0.0.1:8000/ledgepay/webhook/."
            )
        secrets = conf.webhook_secrets
        if options["webhook_url"] and not secrets:
            raise CommandError(
                "Set LEDGEPAY_WEBHOOK_SECRET: the sandbox signs deliveries with it."
            )
        try:
            sandbox = Sandbox(
                port=options["port"],
                webhook_url=options["webhook_url"],
                webhook_secret=secrets[0] if secrets else "",
                failure_rate=options["failure_rate"],
                rate_limit=options["rate_limit"],
                refund_delay=options["refund_delay"],
                state_file=options["state"],
            )
        except StateFileError as err:
            raise CommandError(str(err)) from err
        if options["state"] is not None:
            try:
                sandbox.save()  # Now, so that a file that cannot be written fails here.
            except OSError as err:
                raise CommandError(
                    f"Cannot write the state file {options['state']}: {err.strerror}."
                ) from err
        # Counted before it serves: a client may add a payment as soon as it answers.
        held = len(sandbox.payments)
        stopping = threading.Event()
        previous: dict[signal.Signals, Any] = {}
        if threading.current_thread() is threading.main_thread():
            # Set, not inherited: a shell may start the command with SIGINT ignored. Set
            # before the sandbox starts, so that a signal as soon as it answers stops it.
            for signum in (signal.SIGINT, signal.SIGTERM):
                previous[signum] = signal.signal(signum, lambda *args: stopping.set())
        try:
            try:
                sandbox.start()
            except OSError as err:
                raise CommandError(f"Cannot listen on 127.0.0.1:{options['port']}: {err}") from err
            self._show_logs()
            self.stdout.write(self.style.SUCCESS(f"LedgePay sandbox at {sandbox.api_base}"))
            self.stdout.write(f"Set LEDGEPAY_API_BASE = {sandbox.api_base!r} (any API key works).")
            if options["webhook_url"]:
                self.stdout.write(f"Delivering webhooks to {options['webhook_url']}")
            if options["state"] is not None:
                payments = "payment" if held == 1 else "payments"
                self.stdout.write(f"State in {options['state']} ({held} {payments}).")
            self.stdout.write("Quit with Ctrl-C.")
            try:
                stopping.wait()
            except KeyboardInterrupt:
                pass
            finally:
                sandbox.stop()
                self.stdout.write("Sandbox stopped.")
        finally:
            for signum, handler in previous.items():
                if handler is not None:
                    signal.signal(signum, handler)

    def _show_logs(self) -> None:
        """Print the sandbox's log (a line per webhook attempt) when nothing else does.

        A project whose LOGGING handles it (on ``django_ledgepay``, say, or the root) shows
        it already; a handler here too would print every line twice.
        """
        sandbox_logger = logging.getLogger("django_ledgepay.sandbox")
        if not sandbox_logger.hasHandlers():
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
            sandbox_logger.addHandler(handler)
            sandbox_logger.setLevel(logging.INFO)
