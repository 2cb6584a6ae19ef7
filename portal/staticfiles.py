"""``django.contrib.staticfiles`` for the portal: ``collectstatic`` copies ``frontend/`` without its npm packages.

The browser node's runtime (onnxruntime-web, msgpack, under ``frontend/node_modules``) is served by
``portal.swarm.browser_views.runtime`` with its MIME types and isolation headers, never copied.
"""

from django.contrib.staticfiles.apps import StaticFilesConfig as _StaticFilesConfig


class StaticFilesConfig(_StaticFilesConfig):
    """Ignores ``node_modules`` and the npm manifests."""

    ignore_patterns = [*_StaticFilesConfig.ignore_patterns, "node_modules", "package.json", "package-lock.json"]
