"""API: the tracker endpoints for nodes and clients, swarm health, OpenAPI schema."""

from django.apps import AppConfig


class ApiConfig(AppConfig):
    """The ``api`` app."""

    name = "portal.api"
    label = "api"

    def ready(self) -> None:
        from portal.api import schema  # noqa: F401  (registers the OpenAPI auth extensions)
