from __future__ import annotations

from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class LedgePayConfig(AppConfig):
    name = "django_ledgepay"
    verbose_name = _("LedgePay")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django_ledgepay import checks  # noqa: F401  (registers the system checks)
