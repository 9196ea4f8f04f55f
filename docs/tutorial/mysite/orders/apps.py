from django.apps import AppConfig


class OrdersConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "orders"

    def ready(self):
        # Importing the module connects its receivers, once, when Django starts.
        from . import receivers  # noqa: F401
