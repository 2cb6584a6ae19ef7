"""Routes of the reputation pages."""

app_name = "reputation"
urlpatterns: list = []
