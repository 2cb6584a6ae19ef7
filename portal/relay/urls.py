"""Routes of the relay app (its websockets are in ``routing.py``)."""

from django.urls import path

from portal.relay.views import Relays

app_name = "relay"
urlpatterns = [path("api/v1/relays/", Relays.as_view(), name="relays")]
