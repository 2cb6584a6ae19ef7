"""Websocket routes of the swarm app."""

from django.urls import path

from portal.swarm.consumers import HealthConsumer

websocket_urlpatterns = [path("ws/swarm/health/", HealthConsumer.as_asgi())]
