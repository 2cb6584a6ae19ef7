"""Routes of the ledger pages."""

app_name = "ledger"
urlpatterns: list = []
