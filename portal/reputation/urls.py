"""Routes of the reputation pages."""

from django.urls import path

from portal.reputation import views

app_name = "reputation"
urlpatterns = [
    path("nodes/<int:pk>/reputation/", views.node_reputation, name="node"),
]
