"""The webhook signature scheme: sign a body, verify a ``LedgePay-Signature`` header.

``LedgePay-Signature: t=<unix seconds>,v1=<hex>[,v1=<hex>...]`` where each ``v1`` is the
lower-case hex HMAC-SHA256 of ``f"{t}.".encode() + body`` keyed with a signing secret.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Iterable

from django.utils.crypto import constant_time_compare

from django_ledgepay.exceptions import WebhookSignatureError

SIGNATURE_HEADER = "LedgePay-Signature"


def compute_signature(body: bytes, secret: str, timestamp: int) -> str:
    """The hex ``v1`` value for ``body`` signed at ``timestamp`` with ``secret``."""
    message = f"{timestamp}.".encode() + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def signature_header(
    body: bytes, secrets: str | Iterable[str], timestamp: int | None = None
) -> str:
    """A complete header value, with one ``v1`` entry per secret (as during a rotation)."""
    if timestamp is None:
        timestamp = int(time.time())
    if isinstance(secrets, str):
        secrets = [secrets]
    entries = [f"t={timestamp}"]
    entries += [f"v1={compute_signature(body, secret, timestamp)}" for secret in secrets]
    return ",".join(entries)


def parse_signature_header(header: str) -> tuple[int, list[str]]:
    """Split a header into its timestamp and its ``v1`` signatures."""
    timestamp: int | None = None
    signatures: list[str] = []
    for item in header.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep:
            continue
        if key == "t":
            if not value.isascii() or not value.isdigit():
                raise WebhookSignatureError("The signature's timestamp is not a number.")
            timestamp = int(value)
        elif key == "v1" and value:
            signatures.append(value)
    if timestamp is None:
        raise WebhookSignatureError("The signature header has no timestamp.")
    if not signatures:
        raise WebhookSignatureError("The signature header has no v1 signature.")
    return timestamp, signatures


def verify_signature(
    body: bytes,
    header: str | None,
    secrets: Iterable[str],
    *,
    tolerance: int = 300,
    now: float | None = None,
) -> int:
    """Check ``header`` against ``body``; return its timestamp or raise WebhookSignatureError.

    Any ``v1`` entry that matches any secret passes. Each comparison takes constant time.
    """
    secrets = [secret for secret in secrets if secret]
    if not secrets:
        raise WebhookSignatureError("No webhook secret is configured (LEDGEPAY_WEBHOOK_SECRET).")
    if not header:
        raise WebhookSignatureError(f"The {SIGNATURE_HEADER} header is missing.")
    timestamp, signatures = parse_signature_header(header)
    if now is None:
        now = time.time()
    if abs(now - timestamp) > tolerance:
        raise WebhookSignatureError("The signature's timestamp is outside the tolerance.")
    matched = False
    for secret in secrets:
        expected = compute_signature(body, secret, timestamp)
        for signature in signatures:
            # No early exit: the time taken does not depend on which entry matched.
            matched |= constant_time_compare(expected, signature)
    if not matched:
        raise WebhookSignatureError("No signature matches a configured secret.")
    return timestamp
