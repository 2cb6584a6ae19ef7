"""WSGI entry point: the portal's plain HTTP (tracker API, pages) under a multi-process WSGI server.

Production serves HTTP here (gunicorn, several worker processes, ``deploy/portal-http@.service``) and keeps
daphne (``portal.asgi``) for what needs ASGI: websockets (chat, relay, live pages) and the streamed ``/v1``
answers. A request then runs in the worker's own thread from start to end: no per-request thread hand-off,
and the thread's database and Redis connections are reused. That is most of what a heartbeat used to cost
under daphne (docs/deploy.md, ``make bench-portal``).
"""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
application = get_wsgi_application()
