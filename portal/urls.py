"""URL routes of the portal."""

from django.conf import settings
from django.contrib import admin
from django.contrib.staticfiles.views import serve
from django.urls import include, path, re_path

from portal import views
from portal.metrics import metrics_view

admin.site.site_header = "Layerswarm admin"
admin.site.site_title = "Layerswarm"

urlpatterns = [
    path("", views.home, name="home"),
    path("accounts/", include("portal.accounts.urls")),
    path("", include("portal.swarm.urls")),
    path("", include("portal.chat.urls")),
    path("", include("portal.reputation.urls")),
    path("", include("portal.ledger.urls")),
    path("", include("portal.relay.urls")),
    path("api/", include("portal.api.urls")),
    path("v1/", include("portal.api.openai_urls")),  # OpenAI-compatible (base_url=<portal>/v1)
    path("admin/", admin.site.urls),
    path("metrics", metrics_view, name="metrics"),  # Prometheus; allowed scrapers only (portal/metrics.py)
]
if settings.SERVE_STATIC:  # embedded mode: daphne serves frontend/ itself (nginx does in production)
    # Through the staticfiles finders, so the admin's CSS is served too.
    urlpatterns.append(re_path(r"^static/(?P<path>.*)$", serve, {"insecure": True}))
