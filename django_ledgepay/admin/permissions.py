"""What staff may do in the admin: never edit the mirror by hand (LedgePay is the source of
truth); each action needs its own permission and handles at most :data:`ACTION_LIMIT` rows."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_permission_codename
from django.http import HttpRequest

#: The most payments one action handles: each costs a call to LedgePay within the request.
#: To mirror more, ``manage.py ledgepay_sync`` pages through LedgePay's list instead.
ACTION_LIMIT = 100


class ReadOnlyMixin:
    """The mirror is never edited, added to or deleted from by hand; viewing is as usual."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


def has_model_perm(request: HttpRequest, opts: Any, action: str) -> bool:
    """Whether the user has the model's permission for ``action`` (``"change"``,
    ``"refund"``, ...), as Django names it (``django_ledgepay.change_payment``)."""
    codename = get_permission_codename(action, opts)
    return request.user.has_perm(f"{opts.app_label}.{codename}")
