"""The example shop in a real browser, and a screenshot of every page a shopper sees.

Buy in the shop, press Pay on the sandbox's checkout page, and land on a return page that
says paid; fail and cancel another order; meet LedgePay down. Each page is saved as
``shop-<name>.png`` in ``LEDGEPAY_SCREENSHOTS`` (a directory; ``LEDGEPAY_SCREENSHOTS=docs``
retakes the documentation's), or in the test's temporary directory.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import pytest

from django_ledgepay.sandbox import Sandbox
from shop.models import Order, Product

pytestmark = [pytest.mark.browser, pytest.mark.live, pytest.mark.django_db(transaction=True)]

#: Every page a shopper can see, by the name of its screenshot.
SHOPPER_PAGES = {
    "products",
    "bad-email",
    "order",
    "checkout",
    "paid",
    "failed",
    "canceled",
    "unavailable",
    "waiting",
}


@pytest.fixture
def screenshots(tmp_path: Path) -> Path:
    directory = Path(os.environ.get("LEDGEPAY_SCREENSHOTS") or tmp_path)
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def closed_port() -> int:
    """A port on loopback where nothing listens: LedgePay cannot be reached there."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def shoot(page: Any, directory: Path, name: str, taken: dict[str, bytes]) -> None:
    taken[name] = page.screenshot(path=str(directory / f"shop-{name}.png"), full_page=True)


def test_every_shopper_page_in_chromium(chromium, live_server, settings, screenshots):
    Product.objects.create(
        name="Blue mug", description="Stoneware, 350 ml.", price=1250, currency="EUR"
    )
    Product.objects.create(
        name="Matcha whisk", description="Bamboo chasen, 100 prongs.", price=2200, currency="JPY"
    )
    settings.LEDGEPAY_MAX_RETRIES = 0
    shop = f"{live_server.url}/shop/"
    taken: dict[str, bytes] = {}
    texts: dict[str, str] = {}
    statuses: dict[str, int] = {}
    with Sandbox(
        webhook_url=f"{live_server.url}/ledgepay/webhook/",
        webhook_secret=settings.LEDGEPAY_WEBHOOK_SECRET,
        delivery_backoff=0.05,
    ) as sandbox:
        settings.LEDGEPAY_API_BASE = sandbox.api_base
        with chromium() as page:
            page.set_viewport_size({"width": 1024, "height": 420})

            page.goto(shop)
            shoot(page, screenshots, "products", taken)

            # A malformed email, past the browser's own check: the shop's 400 page.
            page.eval_on_selector("form", "form => form.noValidate = true")
            page.locator("input[name=email]").first.fill("not an email")
            with page.expect_response(lambda r: "/buy/" in r.url) as info:
                page.get_by_role("button", name="Buy Blue mug").click()
            statuses["bad-email"] = info.value.status
            texts["bad-email"] = page.locator("body").inner_text()
            shoot(page, screenshots, "bad-email", taken)

            # Buy, look at the order, pay at the sandbox.
            page.goto(shop)
            page.get_by_role("button", name="Buy Blue mug").click()
            page.wait_for_url(f"{shop}orders/*/")
            texts["order"] = page.locator("#order-status").inner_text()
            shoot(page, screenshots, "order", taken)
            page.get_by_role("button", name="Pay 12.50 EUR").click()
            page.wait_for_url(f"{sandbox.url}/checkout/*")
            texts["checkout"] = page.locator("body").inner_text()
            shoot(page, screenshots, "checkout", taken)
            page.get_by_role("button", name="Pay").click()
            page.wait_for_url(f"{shop}orders/*/return/")
            texts["paid"] = page.locator("#order-status").inner_text()
            shoot(page, screenshots, "paid", taken)

            # Two more orders: one fails, one is canceled at the checkout page.
            for button, name in (("Fail", "failed"), ("Cancel", "canceled")):
                page.goto(shop)
                page.get_by_role("button", name="Buy Matcha whisk").click()
                page.get_by_role("button", name="Pay 2200 JPY").click()
                page.wait_for_url(f"{sandbox.url}/checkout/*")
                page.get_by_role("button", name=button).click()
                page.wait_for_url(f"{shop}orders/*/return/")
                texts[name] = page.locator("#order-status").inner_text()
                shoot(page, screenshots, name, taken)

            # LedgePay cannot be reached: when paying, and when checking on return.
            page.goto(shop)
            page.get_by_role("button", name="Buy Blue mug").click()
            page.wait_for_url(f"{shop}orders/*/")
            waiting_url = f"{page.url}return/"
            settings.LEDGEPAY_API_BASE = f"http://127.0.0.1:{closed_port()}/v1"
            with page.expect_response(lambda r: r.url.endswith("/pay/")) as info:
                page.get_by_role("button", name="Pay 12.50 EUR").click()
            statuses["unavailable"] = info.value.status
            texts["unavailable"] = page.locator("body").inner_text()
            shoot(page, screenshots, "unavailable", taken)
            settings.LEDGEPAY_API_BASE = sandbox.api_base
            page.get_by_role("button", name="Try again").click()  # LedgePay is back.
            page.wait_for_url(f"{sandbox.url}/checkout/*")
            settings.LEDGEPAY_API_BASE = f"http://127.0.0.1:{closed_port()}/v1"
            page.goto(waiting_url)
            texts["waiting"] = page.locator("#order-status").inner_text()
            shoot(page, screenshots, "waiting", taken)

            page.goto(shop)
            orders_list = page.locator("ul").inner_text()
        settings.LEDGEPAY_API_BASE = sandbox.api_base
        sandbox.wait_for_deliveries()

    assert set(taken) == SHOPPER_PAGES
    assert all(png.startswith(b"\x89PNG") for png in taken.values())
    assert statuses == {"bad-email": 400, "unavailable": 503}
    assert "Enter a valid email address." in texts["bad-email"]
    assert "Not paid yet." in texts["order"]
    assert "12.50 EUR" in texts["checkout"]
    assert "Paid" in texts["paid"]
    assert "failed" in texts["failed"]
    assert "canceled" in texts["canceled"]
    assert "could not start just now" in texts["unavailable"]
    assert "Error" not in texts["unavailable"]
    assert "could not be reached just now" in texts["waiting"]
    assert "paid" in orders_list and "failed" in orders_list and "canceled" in orders_list
    assert list(Order.objects.order_by("pk").values_list("status", flat=True)) == [
        "paid",
        "failed",
        "canceled",
        "pending",
    ]
