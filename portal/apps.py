"""The project package as an app: system checks of the settings and project-wide commands (``run_demo``)."""

from django.apps import AppConfig


class PortalConfig(AppConfig):
    """Registers :mod:`portal.checks` and pins the middleware to sync mode (:mod:`portal.middleware`)."""

    name = "portal"

    def ready(self) -> None:
        from portal import checks  # noqa: F401  (registers the checks)
        from portal.metrics import connect_signals
        from portal.middleware import pin_sync_mode

        pin_sync_mode()
        connect_signals()  # Prometheus counters of settlements and Celery tasks
