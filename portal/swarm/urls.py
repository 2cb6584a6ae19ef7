"""Routes of the swarm pages."""

from django.urls import path

from portal.swarm import views

app_name = "swarm"
urlpatterns = [
    path("contribute/", views.contribute, name="contribute"),
    path("contribute/tokens/<int:pk>/revoke/", views.revoke_node_token, name="revoke_node_token"),
    path("swarm/", views.health_map, name="health"),
    path("swarm/<slug:model>/", views.health_map, name="health_model"),
]
