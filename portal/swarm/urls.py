"""Routes of the swarm pages."""

from django.urls import path

from portal.swarm import browser_views, publishers, views

app_name = "swarm"
urlpatterns = [
    path("contribute/", views.contribute, name="contribute"),
    path("contribute/tokens/<int:pk>/revoke/", views.revoke_node_token, name="revoke_node_token"),
    path("contribute/browser/", browser_views.contribute_browser, name="contribute_browser"),
    path("contribute/browser/token/", browser_views.browser_token, name="browser_token"),
    path("browser-node/spans/<str:sha256>.onnx", browser_views.span_file, name="browser_span_file"),
    path("browser-node/models/<slug:model>/spans/", browser_views.span_list, name="browser_spans"),
    path("browser-node/<slug:folder>/<path:name>", browser_views.runtime, name="browser_runtime"),
    path("api/v1/publishers/", publishers.publishers_view, name="publishers"),  # trusted model publishers (#19)
    path("swarm/", views.health_map, name="health"),
    path("swarm/<slug:model>/", views.health_map, name="health_model"),
]
