"""The webhook signature scheme LedgePay signs its deliveries with.

``LedgePay-Signature: t=<unix seconds>,v1=<hex>[,v1=<hex>...]`` where each ``v1`` is the
lower-case hex HMAC-SHA256 of ``f"{t}.".encode() + body`` keyed with a signing secret.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Iterable
from typing import Final

from django.utils.crypto import constant_time_compare

from django_ledgepay.conf import Secret
from django_ledgepay.exceptions import WebhookSignatureError

SIGNATURE_HEADER = "LedgePay-Signature"
MAX_TIMESTAMP_DIGITS: Final = 15


def compute_signature(body: bytes, secret: Secret, timestamp: int | str) -> str:
    """The hex ``v1`` value for ``body`` signed at ``timestamp`` with ``secret``.

    ``timestamp`` is signed as the header writes it. A text secret is keyed by its UTF-8
    bytes; one read from a non-UTF-8 environment keeps its original bytes (surrogateescape).
    """
    message = f"{timestamp}.".encode() + body
    if isinstance(secret, str):
        secret = secret.encode("utf-8", "surrogateescape")
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def signature_header(
    body: bytes, secrets: Secret | Iterable[Secret], timestamp: int | None = None
) -> str:
    """A complete header value, with one ``v1`` entry per secret (as during a rotation)."""
    if timestamp is None:
        timestamp = int(time.time())
    if isinstance(secrets, (str, bytes)):
        secrets = [secrets]
    entries = [f"t={timestamp}"]
    entries += [f"v1={compute_signature(body, secret, timestamp)}" for secret in secrets]
    return ",".join(entries)


def parse_signature_header(header: str) -> tuple[int, list[str]]:
    """Split a header into its timestamp and its ``v1`` signatures."""
    stamp, signatures = _split_signature_header(header)
    return int(stamp), signatures


def _split_signature_header(header: str) -> tuple[str, list[str]]:
    """The timestamp as written (it is signed as written) and the ``v1`` signatures."""
    stamp: str | None = None
    signatures: list[str] = []
    for item in header.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep:
            continue
        if key == "t":
            # Bounded, so neither int() nor the tolerance check can overflow.
            if not value.isascii() or not value.isdigit() or len(value) > MAX_TIMESTAMP_DIGITS:
                raise WebhookSignatureError("The signature's timestamp is not a number.")
            stamp = value
        elif key == "v1" and value:
            signatures.append(value)
    if stamp is None:
        raise WebhookSignatureError("The signature header has no timestamp.")
    if not signatures:
        raise WebhookSignatureError("The signature header has no v1 signature.")
    return stamp, signatures


def verify_signature(
    body: bytes,
    header: str | None,
    secrets: Iterable[Secret],
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
    stamp, signatures = _split_signature_header(header)
    timestamp = int(stamp)
    if now is None:
        now = time.time()
    if abs(now - timestamp) > tolerance:
        raise WebhookSignatureError("The signature's timestamp is outside the tolerance.")
    matched = False
    for secret in secrets:
        expected = compute_signature(body, secret, stamp)
        for signature in signatures:
            # No early exit: the time taken does not depend on which entry matched.
            matched |= constant_time_compare(expected, signature)
    if not matched:
        raise WebhookSignatureError("No signature matches a configured secret.")
    return timestamp
