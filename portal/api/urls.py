"""Routes of the API (``/api/v1/...``) and its schema and docs."""

from django.urls import path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from portal.api import bootstrap, errors, ledger, reputation, views

app_name = "api"
urlpatterns = [
    path("schema/", SpectacularAPIView.as_view(permission_classes=[]), name="schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="api:schema", permission_classes=[]), name="docs"),
    path("v1/nodes/", views.MyNodes.as_view(), name="nodes"),
    path("v1/nodes/register/", views.RegisterNode.as_view(), name="node_register"),
    path("v1/nodes/key-challenge/", views.KeyChallenge.as_view(), name="key_challenge"),
    path("v1/nodes/span-challenge/", views.SpanChallenge.as_view(), name="span_challenge"),
    path("v1/nodes/<int:pk>/", views.MyNode.as_view(), name="node"),
    path("v1/nodes/<int:pk>/heartbeat/", views.NodeHeartbeat.as_view(), name="node_heartbeat"),
    path("v1/nodes/<int:pk>/leave/", views.NodeLeave.as_view(), name="node_leave"),
    path("v1/models/", views.Models.as_view(), name="models"),
    path("v1/models/<slug:model>/spans/", views.ModelSpans.as_view(), name="model_spans"),
    path("v1/swarm/health/", views.SwarmHealth.as_view(), name="swarm_health"),
    path("v1/swarm/bootstrap/", bootstrap.SwarmBootstrap.as_view(), name="swarm_bootstrap"),
    path("v1/reputation/evidence/", reputation.ReportEvidence.as_view(), name="reputation_evidence"),
    path("v1/reputation/steps/", reputation.ReportSteps.as_view(), name="reputation_steps"),
    path("v1/reputation/nodes/<int:pk>/", reputation.NodeReputation.as_view(), name="reputation_node"),
    path("v1/reputation/nodes/<int:pk>/report/", reputation.ReportNode.as_view(), name="reputation_report"),
    path("v1/receipts/", ledger.Receipts.as_view(), name="receipts"),
    path("v1/ledger/balance/", ledger.Balance.as_view(), name="ledger_balance"),
    path("v1/ledger/transactions/", ledger.Transactions.as_view(), name="ledger_transactions"),
    path("v1/ledger/client-keys/", ledger.ClientKeys.as_view(), name="ledger_client_keys"),
    path("v1/ledger/client-keys/<int:pk>/revoke/", ledger.RevokeClientKey.as_view(), name="ledger_client_key_revoke"),
    path("v1/ledger/payouts/", ledger.Payouts.as_view(), name="ledger_payouts"),
    re_path(r"^.*$", errors.not_found),  # last: a JSON 404 for anything else under /api/
]
