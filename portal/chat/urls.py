"""Routes of the chat pages."""

app_name = "chat"
urlpatterns: list = []
