"""The admin's LedgePay pages under a strict Content Security Policy, in a real browser.

Django 6.0's ``SECURE_CSP`` with nothing inline allowed (no ``'unsafe-inline'``, no nonce):
every page the app adds or changes (the lists, a payment's page, the refund page, the bulk
refund's confirmation and the dashboard) must load without a single violation, so a project
that sets such a policy keeps a working admin. Skipped on Django 5.2, which has no
``SECURE_CSP``; Chromium is Debian's, as for the other browser tests.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

import django
from django.contrib.staticfiles.handlers import StaticFilesHandler
from django.test.testcases import LiveServerThread

from django_ledgepay.models import Payment, Refund, Transition, WebhookEvent
from tests.factories import make_payment, make_refund
from tests.test_admin_browser import shop_month

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(django.VERSION < (6, 0), reason="SECURE_CSP is new in Django 6.0"),
]

#: In the page before any of its own scripts: each violation the browser reports, kept.
LISTEN = """
window.__violations = [];
document.addEventListener('securitypolicyviolation', event => {
    window.__violations.push(
        `${event.effectiveDirective} blocked ${event.blockedURI || 'inline'} ` +
        `in ${event.sourceFile || event.documentURI}:${event.lineNumber}`
    );
});
"""


@pytest.fixture
def strict_server(settings: Any) -> Iterator[str]:
    """A live server whose every answer carries the strict policy, from Django's own
    ``ContentSecurityPolicyMiddleware`` and ``SECURE_CSP``.

    pytest-django's ``live_server`` builds its middleware once per session, before this
    test's settings, so the server here is a thread of its own, started after them.
    """
    # Every directive a page could use, limited to the site itself: no inline script or
    # style, no style attribute, no data: or blob: URL, no eval.
    from django.utils.csp import CSP  # type: ignore[import-untyped, unused-ignore]

    settings.MIDDLEWARE = [
        settings.MIDDLEWARE[0],
        "django.middleware.csp.ContentSecurityPolicyMiddleware",
        *settings.MIDDLEWARE[1:],
    ]
    settings.SECURE_CSP = {
        "default-src": [CSP.SELF],
        "script-src": [CSP.SELF],
        "style-src": [CSP.SELF],
        "img-src": [CSP.SELF],
        "font-src": [CSP.SELF],
        "connect-src": [CSP.SELF],
        "object-src": [CSP.NONE],
        "base-uri": [CSP.NONE],
        "form-action": [CSP.SELF],
        "frame-ancestors": [CSP.SELF],
    }
    # The test database is a file on SQLite too (tests/settings.py): the server's threads
    # open connections of their own, none to share.
    server = LiveServerThread("localhost", StaticFilesHandler, port=0)
    server.daemon = True
    server.start()
    server.is_ready.wait()
    if server.error:
        raise server.error
    try:
        yield f"http://localhost:{server.port}"
    finally:
        server.terminate()


def test_every_ledgepay_admin_page_loads_without_a_violation(
    chromium, strict_server, django_user_model
):
    shop_month()
    payment = make_payment(amount=5000, currency="EUR", description="Order 1: Blue mug")
    make_refund(payment, amount=1000)
    django_user_model.objects.create_superuser("root", password="root-pw")
    admin = f"{strict_server}/admin/django_ledgepay"
    change = f"{admin}/payment/{payment.pk}/change/"
    pages = [
        f"{admin}/payment/",
        f"{admin}/payment/?status__exact=succeeded&q=example.com",
        change,
        f"{admin}/payment/{payment.pk}/refund/",
        f"{admin}/payment/dashboard/",
        f"{admin}/payment/dashboard/?days=7",
        f"{admin}/refund/",
        f"{admin}/refund/{Refund.objects.filter(payment=payment).get().pk}/change/",
        f"{admin}/transition/",
        f"{admin}/transition/{Transition.objects.earliest('pk').pk}/change/",
        f"{admin}/webhookevent/",
        f"{admin}/webhookevent/{WebhookEvent.objects.earliest('pk').pk}/change/",
    ]
    succeeded = list(
        Payment.objects.filter(status=Payment.Status.SUCCEEDED).values_list("pk", flat=True)[:2]
    )
    policies: dict[str, str] = {}
    console: list[str] = []
    violations: list[str] = []
    seen: dict[str, str] = {}

    with chromium() as page:
        page.add_init_script(LISTEN)

        def on_console(message: Any) -> None:
            if "Content Security Policy" in message.text:
                console.append(f"{page.url}: {message.text}")

        page.on("console", on_console)

        def visit(url: str) -> None:
            response = page.goto(url)
            assert response is not None and response.ok, url
            policies[url] = response.headers.get("content-security-policy", "")
            settle(url)

        def settle(url: str) -> None:
            page.wait_for_load_state("load")
            seen[url] = page.title()
            violations.extend(f"{url}: {v}" for v in page.evaluate("window.__violations"))

        visit(f"{strict_server}/admin/login/?next=/admin/")
        page.fill("#id_username", "root")
        page.fill("#id_password", "root-pw")
        page.click("input[type=submit]")
        page.wait_for_url(f"{strict_server}/admin/")
        settle(page.url)
        for url in pages:
            visit(url)

        # What the pages' scripts do when used: the dashboard's table per day, the admin's
        # theme switch, the list's checkboxes and its bulk refund's confirmation page,
        # and the refund form's answer to an amount it refuses.
        visit(f"{admin}/payment/dashboard/")
        page.click("#currency-EUR details.ledgepay-per-day summary")
        page.click("button.theme-toggle")
        settle(page.url)
        visit(f"{admin}/payment/?status__exact=succeeded")
        for pk in succeeded:
            page.check(f"input.action-select[value='{pk}']")
        page.select_option("select[name=action]", "refund_payments")
        page.click("button[name=index]")
        page.wait_for_selector(".ledgepay-refund-eligible")
        settle(page.url)
        visit(f"{admin}/payment/{payment.pk}/refund/")
        page.fill("#id_amount", "1000000")
        page.click("input[name=_refund]")
        page.wait_for_selector(".errornote")
        settle(page.url)
        reported = list(console)

        # The listeners work: an inline style attribute added now is reported to both.
        page.evaluate("document.body.insertAdjacentHTML('beforeend', '<p style=\"x\">')")
        page.wait_for_function("window.__violations.length > 0")
        control = page.evaluate("window.__violations")

    assert violations == [], "\n".join(violations)
    assert reported == [], "\n".join(reported)
    assert control[0].startswith("style-src-attr blocked inline"), control
    assert len(console) > len(reported)
    assert set(policies) >= set(pages)
    for url, policy in policies.items():
        assert "default-src 'self'" in policy, url
        assert "unsafe" not in policy and "nonce" not in policy, (url, policy)
    assert "dashboard" in seen[f"{admin}/payment/dashboard/"]
    assert not any(re.search(r"Server Error|Page not found", title) for title in seen.values())
