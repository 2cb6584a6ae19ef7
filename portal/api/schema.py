"""OpenAPI descriptions of the bearer-secret authentication schemes (drf-spectacular extensions)."""

from drf_spectacular.extensions import OpenApiAuthenticationExtension


class ApiKeyScheme(OpenApiAuthenticationExtension):
    """``Authorization: Bearer lsk_...``."""

    target_class = "portal.accounts.authentication.ApiKeyAuthentication"
    name = "apiKey"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer", "description": "API key (lsk_...) from your profile page"}


class NodeTokenScheme(OpenApiAuthenticationExtension):
    """``Authorization: Bearer lsn_...``."""

    target_class = "portal.accounts.authentication.NodeTokenAuthentication"
    name = "nodeToken"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer", "description": "node token (lsn_...) from 'Contribute a GPU'"}
