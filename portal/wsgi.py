"""WSGI entry point: the portal's plain HTTP (the tracker API) under a multi-process WSGI server.

Production serves ``/api/`` here (gunicorn, several worker processes, ``deploy/portal-http.service``) and keeps
daphne (``portal.asgi``) for what needs ASGI: websockets (chat, relay, live pages), pages and the streamed
``/v1`` answers. A request then runs in the worker's own thread from start to end: no per-request thread
hand-off, and the thread's database and Redis connections are reused. That was most of what a heartbeat cost
under daphne (``make bench-portal``, docs/deploy.md).

The node heartbeat (every node, every few seconds) goes first to the fast path (``portal.swarm.fastbeat``:
a vouched online node's heartbeat answered with one Redis call, no Django request, no PostgreSQL), and what it
does not answer through ``TRACKER_MIDDLEWARE``, the part of the middleware that a bearer-token JSON endpoint
uses; everything else through the whole ``MIDDLEWARE``.
"""

from __future__ import annotations

import os
import re

from django.conf import settings
from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
full_application = get_wsgi_application()

from django.core.handlers.wsgi import WSGIHandler  # noqa: E402  (needs Django set up first)

from portal.swarm.fastbeat import FastHeartbeats  # noqa: E402

HEARTBEAT_PATH = re.compile(r"^/api/v1/nodes/[0-9]+/heartbeat/$")


class LeanHandler(WSGIHandler):
    """A WSGI handler whose middleware chain is ``middleware`` instead of ``settings.MIDDLEWARE``."""

    def __init__(self, middleware: list[str]) -> None:
        self.middleware_paths = list(middleware)
        super().__init__()

    def load_middleware(self, is_async: bool = False) -> None:
        # Django reads the chain from settings only; swapped for the build (at start-up, before any request).
        everything = settings.MIDDLEWARE
        settings.MIDDLEWARE = self.middleware_paths
        try:
            super().load_middleware(is_async)
        finally:
            settings.MIDDLEWARE = everything


class TrackerRouter:
    """Sends ``POST /api/v1/nodes/<id>/heartbeat/`` to ``lean`` (the fast path, then the lean chain), every
    other request to ``full``."""

    def __init__(self, full, lean) -> None:
        self.full, self.lean = full, lean

    def __call__(self, environ, start_response):
        if environ.get("REQUEST_METHOD") == "POST" and HEARTBEAT_PATH.match(environ.get("PATH_INFO", "")):
            return self.lean(environ, start_response)
        return self.full(environ, start_response)


application = TrackerRouter(full_application, FastHeartbeats(LeanHandler(settings.TRACKER_MIDDLEWARE)))
