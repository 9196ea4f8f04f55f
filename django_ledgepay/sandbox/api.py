"""What LedgePay's API reads and writes, as the sandbox speaks it: request bodies, keys,
times and URLs read; error answers and webhook bodies written. No state here.
"""

from __future__ import annotations

import datetime
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

PAYMENT_STATUSES = ("pending", "succeeded", "failed", "canceled")
#: How deep a request body may nest. Deeper bodies are refused: one that can barely be read
#: could fail later, when its payment is written out in an answer or a webhook.
MAX_NESTING = 100


class APIFailure(Exception):
    """An error answer in LedgePay's shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        error_type: str = "invalid_request_error",
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type
        self.param = param

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"type": self.error_type, "message": self.message}
        if self.param is not None:
            error["param"] = self.param
        return {"error": error}


@dataclass
class Answer:
    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)

    def json(self) -> str:
        return json.dumps(self.body)


def failure_answer(failure: APIFailure) -> Answer:
    return Answer(failure.status, failure.body())


def iso(moment: float) -> str:
    """``moment`` (Unix seconds) as LedgePay writes times: UTC, whole seconds, ``Z``.

    The year always has four digits, so these strings sort as the times do.
    """
    when = datetime.datetime.fromtimestamp(int(moment), datetime.timezone.utc)
    return when.replace(tzinfo=None).isoformat(timespec="seconds") + "Z"


def parse_time(value: str, param: str) -> str:
    """A time from a query (ISO 8601, UTC unless it says otherwise) as :func:`iso` writes it."""
    text = value.strip().replace("Z", "+00:00")
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError as err:
        raise APIFailure(400, f"{param} is not an ISO 8601 time.", param=param) from err
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    try:
        return iso(moment.timestamp())
    except (OverflowError, OSError, ValueError) as err:
        # A time near year 1 or 9999 whose offset takes it out of datetime's range in UTC.
        raise APIFailure(
            400, f"{param} must lie between the years 1 and 9999 in UTC.", param=param
        ) from err


def is_http_url(value: object) -> bool:
    """Whether ``value`` is an absolute http(s) URL that can go in a Location header."""
    if not isinstance(value, str):
        return False
    # Control characters and whitespace (isprintable() lets only the ASCII space through)
    # would break the checkout's redirect, or add headers to it.
    if not value.isprintable() or " " in value:
        return False
    try:
        parts = urlsplit(value)
    except ValueError:
        # An unclosed IPv6 bracket: "http://[::1".
        return False
    return parts.scheme in {"http", "https"} and bool(parts.netloc)


def bearer_key(headers: Mapping[str, str]) -> str:
    """The API key of an ``Authorization: Bearer`` header; ``headers`` has lower-case names."""
    value = headers.get("authorization") or ""
    scheme, _, key = value.partition(" ")
    return key.strip() if scheme.lower() == "bearer" else ""


def json_object(body: bytes) -> dict[str, Any]:
    """A POST's body: a JSON object nesting at most :data:`MAX_NESTING` levels."""
    try:
        params = json.loads(body or b"{}")
    except (ValueError, UnicodeDecodeError) as err:
        raise APIFailure(400, "The body is not valid JSON.") from err
    except RecursionError as err:
        raise APIFailure(400, f"The body nests deeper than {MAX_NESTING} levels.") from err
    if not isinstance(params, dict):
        raise APIFailure(400, "The body must be a JSON object.")
    if nests_deeper(params, MAX_NESTING):
        raise APIFailure(400, f"The body nests deeper than {MAX_NESTING} levels.")
    return params


def nests_deeper(value: Any, levels: int) -> bool:
    """Whether ``value`` has objects or arrays more than ``levels`` deep (without recursing,
    which is what fails on such a value)."""
    pending: list[tuple[Any, int]] = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            if depth > levels:
                return True
            pending.extend((child, depth + 1) for child in item)
    return False


def event_payload(
    event_type: str, data: Mapping[str, Any], *, clock: float | None = None
) -> dict[str, Any]:
    """A webhook body as LedgePay sends it."""
    return {
        "event": event_type,
        "timestamp": iso(time.time() if clock is None else clock),
        "data": dict(data),
    }
