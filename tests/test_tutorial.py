"""The tutorial's project, docs/tutorial/mysite, does what the tutorial says it does.

The tutorial page includes its code from that directory, so the page and what runs here
cannot differ. Each test works on a copy, with the project's own settings, in a process of
its own, as a reader would run it.

The project runs with this Python and this checkout's django_ledgepay, or, when
``LEDGEPAY_TUTORIAL_PYTHON`` names another interpreter, with that one and the django_ledgepay
installed there: CI's is a fresh virtual environment with the release's wheel, as a reader's
would be.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import pytest
import requests

from django_ledgepay.sandbox import Sandbox

ROOT = Path(__file__).resolve().parent.parent
TUTORIAL = ROOT / "docs" / "tutorial"
PROJECT = TUTORIAL / "mysite"
WEBHOOK_SECRET = "whsec_tutorial"  # The default in the tutorial's settings.
INSTALLED = os.environ.get("LEDGEPAY_TUTORIAL_PYTHON", "")
PYTHON = INSTALLED or sys.executable


@pytest.fixture
def project(tmp_path: Path) -> Path:
    copy = tmp_path / "mysite"
    shutil.copytree(PROJECT, copy, ignore=shutil.ignore_patterns("db.sqlite3", "__pycache__"))
    return copy


def environment(**extra: str) -> dict[str, str]:
    """The reader's environment: no test settings; this checkout's django_ledgepay, unless
    the project runs with an installed one."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "LEDGEPAY_"))}
    env.pop("DATABASE_URL", None)
    if INSTALLED:
        env.pop("PYTHONPATH", None)
    else:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return {**env, **extra}


def start(project: Path, *args: str, **env: str) -> subprocess.Popen[str]:
    """``python manage.py ARGS`` in the project, as the reader runs it."""
    return subprocess.Popen(
        [PYTHON, "manage.py", *args],
        cwd=project,
        env=environment(**env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen[str]) -> tuple[str, str]:
    """Wait for ``process``; its output, once it has succeeded."""
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, f"{process.args!r}:\n{stdout}{stderr}"
    return stdout, stderr


def manage(project: Path, *args: str, **env: str) -> tuple[str, str]:
    return finish(start(project, *args, **env))


def test_the_project_runs_the_django_ledgepay_it_is_given(project):
    code = (
        "import importlib.metadata, django_ledgepay.client as client; "
        "print(client.__file__); print(importlib.metadata.version('django-ledgepay')); "
        "print(client.USER_AGENT)"
    )
    process = subprocess.Popen(
        [PYTHON, "-c", code],
        cwd=project,
        env=environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    module, version, user_agent = finish(process)[0].split()
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")

    assert user_agent == f"django_ledgepay/{version}"
    if INSTALLED:
        # The installed package's, in the interpreter's environment, not this checkout's,
        # and of the version this checkout is.
        assert not Path(module).is_relative_to(ROOT), module
        assert Path(module).is_relative_to(Path(INSTALLED).parent.parent), module
        assert f'\nversion = "{version}"\n' in pyproject
    else:
        assert Path(module).is_relative_to(ROOT), module


def test_the_project_checks_clean_and_its_tests_pass_against_fake_ledgepay(project):
    # Side by side: each is a Django process of its own.
    migrations = start(project, "makemigrations", "--check", "--dry-run")
    check = start(project, "check", "--fail-level", "WARNING")
    tests = start(project, "test", "orders", "-v", "2")

    finish(migrations)
    assert "no issues" in finish(check)[0]
    _, report = finish(tests)
    assert "test_paid_then_refunded" in report
    assert re.search(r"Ran [1-9]\d* tests?", report)
    assert "\nOK\n" in report


@dataclass
class Form:
    action: str
    id: str | None
    data: dict[str, str] = field(default_factory=dict)


class Forms(HTMLParser):
    """The forms of a page: their action and the values their inputs would send."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[Form] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "form":
            self.forms.append(Form(action=found.get("action") or "", id=found.get("id")))
        elif tag == "input" and self.forms and found.get("name") and not _clicked(found):
            self.forms[-1].data.setdefault(str(found["name"]), found.get("value") or "")


def _clicked(attrs: dict[str, str | None]) -> bool:
    """Inputs sent only when clicked or checked; the test says which it clicks."""
    return attrs.get("type") in ("submit", "checkbox", "radio")


def forms_of(response: requests.Response) -> list[Form]:
    parser = Forms()
    parser.feed(response.text)
    return parser.forms


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def site(project: Path) -> Iterator[tuple[str, Sandbox]]:
    """The tutorial's steps 'Run it': migrate, a superuser, the sandbox, runserver."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with Sandbox(
        webhook_url=f"{url}/ledgepay/webhook/",
        webhook_secret=WEBHOOK_SECRET,
        refund_delay=0.1,
        delivery_backoff=0.05,
    ) as sandbox:
        env = {"LEDGEPAY_API_BASE": sandbox.api_base}
        manage(project, "migrate", "--no-input", **env)
        superuser = start(
            project,
            "createsuperuser",
            "--no-input",
            DJANGO_SUPERUSER_USERNAME="admin",
            DJANGO_SUPERUSER_EMAIL="admin@example.com",
            DJANGO_SUPERUSER_PASSWORD="admin-pw",
            **env,
        )
        log = (project / "runserver.log").open("w")
        server = subprocess.Popen(
            [PYTHON, "manage.py", "runserver", f"127.0.0.1:{port}", "--noreload"],
            cwd=project,
            env=environment(**env),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            finish(superuser)
            deadline = time.monotonic() + 30
            while True:
                try:
                    requests.get(f"{url}/", timeout=1)
                    break
                except requests.ConnectionError:
                    assert server.poll() is None, (project / "runserver.log").read_text()
                    assert time.monotonic() < deadline, "runserver did not start"
                    time.sleep(0.1)
            yield url, sandbox
        finally:
            server.terminate()
            server.wait(timeout=10)
            log.close()


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


def status_of(shopper: requests.Session, order_url: str) -> str:
    page = shopper.get(order_url, timeout=5).text
    found = re.search(r'<p id="status">([^<]*)</p>', page)
    return found.group(1) if found else ""


@pytest.mark.live
def test_from_an_order_to_its_refund_against_the_sandbox(project, site):
    url, sandbox = site
    shopper = requests.Session()

    # The shopper, logged out, orders a mug and presses Pay (a POST with its CSRF token).
    home = shopper.get(f"{url}/", timeout=5)
    (order_form,) = forms_of(home)
    order_page = shopper.post(f"{url}{order_form.action}", data=order_form.data, timeout=5)
    assert order_page.status_code == 200
    order_url = order_page.url
    assert status_of(shopper, order_url) == "Waiting for payment"
    (pay_form,) = forms_of(order_page)
    checkout = shopper.post(f"{url}{pay_form.action}", data=pay_form.data, timeout=5)
    assert checkout.url.startswith(f"{sandbox.url}/checkout/")
    assert "12.50 EUR" in checkout.text

    # At the sandbox's checkout page, Pay: back on the return URL, then the order's page.
    back = shopper.post(checkout.url, data={"action": "pay"}, timeout=5)
    assert back.history[-1].url.endswith("/return/")
    assert back.url == order_url
    assert status_of(shopper, order_url) == "Paid"
    assert sandbox.wait_for_deliveries()
    assert status_of(shopper, order_url) == "Paid"

    # Another visitor cannot see the order.
    assert requests.get(order_url, timeout=5).status_code == 404

    # Staff refund it in the admin: LedgePay -> Payments -> the payment -> Refund.
    staff = requests.Session()
    login = staff.get(f"{url}/admin/login/", timeout=5)
    (login_form,) = forms_of(login)
    credentials = {**login_form.data, "username": "admin", "password": "admin-pw"}
    assert staff.post(f"{url}/admin/login/?next=/admin/", data=credentials, timeout=5).url == (
        f"{url}/admin/"
    )
    # Step 10: the newest payment, 12.50 EUR, succeeded; the list shows no description,
    # its search finds one.
    payments = staff.get(f"{url}/admin/django_ledgepay/payment/", timeout=5).text
    found = staff.get(
        f"{url}/admin/django_ledgepay/payment/", params={"q": "Order 1"}, timeout=5
    ).text
    (change_path,) = set(re.findall(r'href="(/admin/django_ledgepay/payment/\d+/change/)', found))
    payment_page = staff.get(f"{url}{change_path}", timeout=5).text
    assert "12.50" in payments and "Succeeded" in payments
    assert "Blue mug" not in payments
    assert "Order 1: Blue mug" in payment_page
    refund_page = staff.get(f"{url}{change_path.replace('/change/', '/refund/')}", timeout=5)
    (refund_form,) = [form for form in forms_of(refund_page) if form.id == "refund_form"]
    data = {**refund_form.data, "reason": "customer_request", "_refund": "Refund"}
    refunded = staff.post(refund_page.url, data=data, timeout=5)
    assert refunded.url == f"{url}{change_path}", refunded.text

    # The sandbox completes the refund; its webhook's receiver marks the order refunded.
    assert wait_for(lambda: status_of(shopper, order_url) == "Refunded"), status_of(
        shopper, order_url
    )
    assert sandbox.wait_for_deliveries()


def test_the_page_includes_every_file_it_talks_about():
    page = (TUTORIAL / "index.md").read_text(encoding="utf-8")
    included = set(re.findall(r"```\{literalinclude\} (mysite/\S+)", page))

    assert included, "the tutorial includes no code"
    for path in included:
        assert (TUTORIAL / path).is_file(), path
    for path in PROJECT.rglob("*"):
        relative = path.relative_to(TUTORIAL).as_posix()
        if path.suffix in (".py", ".html") and "migrations" not in relative:
            if path.name in ("__init__.py", "asgi.py", "wsgi.py", "manage.py"):
                continue
            assert relative in included, f"{relative} is in the project but not on the page"
