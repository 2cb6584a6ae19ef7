"""DRF authentication by bearer secret: API keys (programs) and node tokens (machines)."""

from __future__ import annotations

from rest_framework import authentication, exceptions

from portal.accounts.models import ApiKey, BearerSecret, NodeToken


class _BearerAuthentication(authentication.BaseAuthentication):
    model: type[BearerSecret]

    def authenticate(self, request):
        header = authentication.get_authorization_header(request).decode("latin-1")
        scheme, _, plain = header.partition(" ")
        if scheme.lower() != "bearer" or not plain.startswith(self.model.KIND + "_"):
            return None  # not ours: let the next class try
        secret = self.model.authenticate(plain.strip())
        if secret is None:
            raise exceptions.AuthenticationFailed(f"invalid, revoked or expired {self.model._meta.verbose_name}")
        return secret.user, secret

    def authenticate_header(self, request) -> str:
        return 'Bearer realm="layerswarm"'


class ApiKeyAuthentication(_BearerAuthentication):
    """``Authorization: Bearer lsk_...``: acts as the key's user."""

    model = ApiKey


class NodeTokenAuthentication(_BearerAuthentication):
    """``Authorization: Bearer lsn_...``: a contributed machine; ``request.auth`` is the :class:`NodeToken`."""

    model = NodeToken
