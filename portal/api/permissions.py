"""Who may call what."""

from rest_framework.permissions import BasePermission

from portal.accounts.models import NodeToken


class IsNodeToken(BasePermission):
    """Authenticated by a node token (``request.auth`` is the token): the machine endpoints."""

    message = "send the node token: Authorization: Bearer lsn_..."

    def has_permission(self, request, view) -> bool:
        return isinstance(request.auth, NodeToken)
