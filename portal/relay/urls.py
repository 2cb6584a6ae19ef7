"""Routes of the relay pages."""

app_name = "relay"
urlpatterns: list = []
