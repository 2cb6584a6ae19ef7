"""URL routes of the portal."""

from django.contrib import admin
from django.http import HttpResponse
from django.urls import path


def home(request):
    """Placeholder home page until the portal issue lands."""
    return HttpResponse("<h1>Layerswarm</h1><p>The swarm portal.</p>")


urlpatterns = [path("", home, name="home"), path("admin/", admin.site.urls)]
