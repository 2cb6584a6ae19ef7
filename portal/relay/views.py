"""``GET /api/v1/relays/``: where nodes behind NAT can attach (public, like the span list)."""

from __future__ import annotations

from django.conf import settings
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from portal.relay.directory import relay_directory


def portal_relay_url(request) -> str:
    """The portal relay's base URL as nodes reach it (``RELAY_PUBLIC_URL`` or from the request's host)."""
    if settings.RELAY_PUBLIC_URL:
        return settings.RELAY_PUBLIC_URL.rstrip("/")
    scheme = "wss" if request.is_secure() else "ws"
    return f"{scheme}://{request.get_host()}/ws/relay"


class Relays(APIView):
    """Relays for nodes behind NAT: the portal's own, then nodes started with ``--relay-capacity``."""

    permission_classes = [AllowAny]

    @extend_schema(
        responses=inline_serializer(
            "RelayList",
            {
                "relays": serializers.ListField(
                    child=inline_serializer(
                        "Relay",
                        {
                            "url": serializers.CharField(),
                            "kind": serializers.CharField(),
                            "capacity": serializers.IntegerField(),
                        },
                    )
                )
            },
        )
    )
    def get(self, request):
        return Response({"relays": relay_directory(portal_relay_url(request))})
