"""Routes of the ledger pages."""

from django.urls import path

from portal.ledger import views

app_name = "ledger"
urlpatterns = [
    path("credits/", views.credits, name="credits"),
    path("credits/keys/", views.add_client_key, name="add_client_key"),
    path("credits/keys/<int:pk>/revoke/", views.revoke_client_key, name="revoke_client_key"),
    path("credits/payouts/", views.request_payout, name="request_payout"),
    path("credits/statements/<int:year>-<int:month>/", views.statement, name="statement"),
    path("nodes/dashboard/", views.node_dashboard, name="node_dashboard"),
    path("staff/payouts/", views.review_queue, name="review_queue"),
    path("staff/payouts/approved.csv", views.approved_payouts_csv, name="approved_payouts_csv"),
]
