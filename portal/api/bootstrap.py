"""``/api/v1/swarm/bootstrap/``: the DHT bootstrap addresses this portal publishes (#18, docs/dht.md)."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from portal.swarm.dht_reader import bootstrap_addrs


class SwarmBootstrap(APIView):
    """Multiaddrs for ``swarmnode serve --dht`` and ``from_pretrained(dht=...)`` (public)."""

    authentication_classes: list = []
    permission_classes = [AllowAny]

    @extend_schema(
        responses=inline_serializer(
            "SwarmBootstrap", {"bootstrap": serializers.ListField(child=serializers.CharField())}
        )
    )
    def get(self, request):
        return Response({"bootstrap": bootstrap_addrs()})
