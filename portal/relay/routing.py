"""Websocket routes of the relay app."""

websocket_urlpatterns: list = []
