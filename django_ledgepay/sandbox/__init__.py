"""An offline LedgePay for development, demos and tests.

:class:`Sandbox` serves LedgePay's API (the endpoints docs/howto/sandbox.md lists) under
``/v1`` on 127.0.0.1 with state in memory, a hosted checkout page at each payment's
``checkout_url`` (Pay, Fail, Cancel), and signed webhook deliveries.
``manage.py ledgepay_sandbox`` runs one::

    with Sandbox(webhook_url="http://127.0.0.1:8000/ledgepay/webhook/",
                 webhook_secret="whsec_...") as sandbox:
        settings.LEDGEPAY_API_BASE = sandbox.api_base
        ...

With ``state_file=`` (``--state FILE``) its state outlives a restart.
"""

from __future__ import annotations

from django_ledgepay.sandbox.delivery import Delivery
from django_ledgepay.sandbox.server import Sandbox
from django_ledgepay.sandbox.storage import StateFileError

__all__ = ["Delivery", "Sandbox", "StateFileError"]
