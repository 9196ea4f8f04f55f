"""The hosted checkout page at each payment's ``checkout_url``: Pay, Fail or Cancel, then
back to the shop."""

from __future__ import annotations

import html
from typing import Any
from urllib.parse import parse_qsl, quote

from django_ledgepay.currencies import format_amount
from django_ledgepay.sandbox.api import APIFailure
from django_ledgepay.sandbox.state import LedgePayState

#: An answer of the page: status, headers, body.
Page = tuple[int, dict[str, str], bytes]

#: Each button's action, and the status it settles the payment as.
ACTIONS = {"pay": "succeeded", "fail": "failed", "cancel": "canceled"}


def serve_checkout(state: LedgePayState, method: str, payment_id: str, body: bytes) -> Page:
    """The page (GET), or a button pressed on it (POST): the payment settles and the
    shopper is sent back to the shop."""
    try:
        payment = state.retrieve_payment(payment_id)
    except APIFailure:
        return 404, {"Content-Type": "text/plain"}, b"No such payment."
    if method == "POST":
        action = dict(parse_qsl(body.decode("utf-8", "replace"))).get("action")
        if action not in ACTIONS:
            return 400, {"Content-Type": "text/plain"}, b"Unknown action."
        # A payment settled before (another tab, a second press) keeps its status, and
        # the shopper goes back as it says, whichever button this was.
        payment = state.settle(payment_id, ACTIONS[action])
        location = location_header(return_url(payment))
        return 303, {"Location": location, "Content-Type": "text/plain"}, b""
    if method != "GET":
        return 405, {"Allow": "GET, POST", "Content-Type": "text/plain"}, b""
    return 200, {"Content-Type": "text/html; charset=utf-8"}, checkout_page(payment).encode()


def location_header(url: str) -> str:
    """``url`` as a Location header can hold it: non-ASCII characters percent-encoded
    (http.server writes headers in Latin-1), the rest as it is."""
    return "".join(char if char.isascii() else quote(char) for char in url)


def return_url(payment: dict[str, Any]) -> str:
    """Where a settled payment sends the shopper: ``cancel_url`` if canceled, else
    ``success_url`` (the shop's return page reads the status, succeeded or failed)."""
    return str(
        payment["cancel_url"] if payment["status"] == "canceled" else payment["success_url"]
    )


def checkout_page(payment: dict[str, Any]) -> str:
    """The hosted checkout page: plain HTML, no JavaScript."""
    amount = html.escape(format_amount(payment["amount"], payment["currency"]))
    description = html.escape(payment.get("description") or "")
    if payment["status"] == "pending":
        actions = "".join(
            f'<form method="post"><button type="submit" name="action" value="{value}">'
            f"{label}</button></form>"
            for value, label in (("pay", "Pay"), ("fail", "Fail"), ("cancel", "Cancel"))
        )
    else:
        back = return_url(payment)
        actions = (
            f"<p>This payment is <strong>{html.escape(payment['status'])}</strong>.</p>"
            f'<p><a href="{html.escape(back)}">Back to the shop</a></p>'
        )
    return f"""<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>LedgePay sandbox checkout</title>
<style>body{{font-family:sans-serif;max-width:32rem;margin:3rem auto}}
form{{display:inline-block;margin-right:.5rem}}button{{font-size:1.1rem;padding:.4rem 1rem}}
</style></head>
<body>
<p><small>LedgePay sandbox: no money moves.</small></p>
<h1>Pay {amount}</h1>
<p class="description">{description}</p>
<p class="payment-id">{html.escape(payment["id"])}</p>
{actions}
</body>
</html>
"""
