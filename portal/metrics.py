"""The portal's Prometheus metrics: ``GET /metrics``, for Prometheus only.

- Requests and latency come from ``django-prometheus`` (its middleware, ``django_http_*`` names).
- Our own: gateway generations by outcome and the tokens they generated (the gateway process), ledger
  settlements by result (wherever a receipt settles: the Celery worker), Celery task outcomes (the worker),
  and the tracker's size (read from the database at scrape time, so any daphne worker answers it right).

Several processes count (daphne workers, ``run_gateway``, Celery), so with ``PROMETHEUS_MULTIPROC_DIR`` set
each writes its counters to files under that folder (or a sub-folder: one per container in compose) and the
scrape adds up every file below it. Without it (a single process, tests) the default registry is served.

Access: only from ``METRICS_ALLOWED_IPS`` (loopback by default; the visitor's address as
``portal/middleware.py`` resolves it), or with ``Authorization: Bearer <METRICS_TOKEN>``. Anyone else gets
the 404 of an unknown page. Behind nginx, the nginx configs in ``deploy/`` refuse ``/metrics`` too.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.http import Http404, HttpRequest, HttpResponse
from prometheus_client import REGISTRY, CollectorRegistry, Counter, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

GATEWAY_GENERATIONS = Counter(
    "layerswarm_gateway_generations", "Chat and /v1 generations a gateway finished, by outcome", ["outcome"]
)
GATEWAY_TOKENS = Counter("layerswarm_gateway_tokens", "Tokens the gateways generated (completions)")
LEDGER_SETTLEMENTS = Counter("layerswarm_ledger_settlements", "Usage receipts settled, by result", ["result"])
CELERY_TASKS = Counter("layerswarm_celery_tasks", "Celery tasks run, by task and outcome", ["task", "outcome"])
GENERATION_OUTCOMES = ("done", "bad_request", "swarm_unavailable", "swarm_error", "cancelled")


def generation_finished(outcome: str, completion_tokens: int = 0) -> None:
    """Count one generation a gateway ended with ``outcome`` (one of :data:`GENERATION_OUTCOMES`)."""
    GATEWAY_GENERATIONS.labels(outcome if outcome in GENERATION_OUTCOMES else "other").inc()
    if completion_tokens > 0:
        GATEWAY_TOKENS.inc(completion_tokens)


def receipt_saved(sender, instance, update_fields=None, **kwargs) -> None:
    """``post_save`` of a receipt: count it once it left ``pending`` (after the transaction commits)."""
    if update_fields is None or "status" not in update_fields or instance.status == "pending":
        return
    result = str(instance.status)
    transaction.on_commit(lambda: LEDGER_SETTLEMENTS.labels(result).inc())


def task_finished(sender=None, state=None, **kwargs) -> None:
    """Celery's ``task_postrun``: count the task by name and final state (SUCCESS, FAILURE, RETRY ...)."""
    name = getattr(sender, "name", None) or "unknown"
    CELERY_TASKS.labels(name, str(state or "unknown").lower()).inc()


def connect_signals() -> None:
    """Hook the counters to the events they count (called once from ``PortalConfig.ready``)."""
    from celery.signals import task_postrun
    from django.db.models.signals import post_save

    from portal.ledger.models import Receipt

    post_save.connect(receipt_saved, sender=Receipt, dispatch_uid="layerswarm-metrics-receipt")
    task_postrun.connect(task_finished, dispatch_uid="layerswarm-metrics-celery", weak=False)


class TrackerCollector:
    """The tracker's size at scrape time: nodes by state, and the models they serve."""

    def collect(self):
        from django.db.models import Count

        from portal.swarm.models import Node

        nodes = GaugeMetricFamily("layerswarm_tracker_nodes", "Nodes the tracker knows, by state", labels=["state"])
        counts = dict(Node.objects.values_list("state").annotate(n=Count("id")))
        for state in Node.State.values:
            nodes.add_metric([state], counts.get(state, 0))
        yield nodes


class _MultiProcessTree:
    """Every process's counter files under ``root`` and its sub-folders, added up."""

    def __init__(self, root: str) -> None:
        self.root = Path(root)

    def collect(self):
        files = [str(p) for p in self.root.rglob("*.db")]
        return multiprocess.MultiProcessCollector.merge(files, accumulate=True)


def scrape() -> bytes:
    """The whole exposition: every process's counters plus the tracker's size."""
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if folder:
        processes = CollectorRegistry()
        processes.register(_MultiProcessTree(folder))
    else:
        processes = REGISTRY
    tracker = CollectorRegistry()
    tracker.register(TrackerCollector())
    return generate_latest(processes) + generate_latest(tracker)


def allowed(request: HttpRequest) -> bool:
    """Whether ``request`` may read the metrics: from an allowed address, or with the bearer token."""
    token = settings.METRICS_TOKEN
    auth = request.headers.get("Authorization", "")
    if token and auth.startswith("Bearer ") and hmac.compare_digest(auth[7:].encode(), token.encode()):
        return True
    try:
        ip = ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
    except ValueError:
        return False
    for cidr in settings.METRICS_ALLOWED_IPS:
        try:
            if ip in ipaddress.ip_network(cidr, strict=False):
                return True
        except ValueError:
            continue
    return False


def metrics_view(request: HttpRequest) -> HttpResponse:
    """``GET /metrics`` in Prometheus' text format, for allowed scrapers only (404 for anyone else)."""
    if not allowed(request):
        raise Http404
    return HttpResponse(scrape(), content_type=CONTENT_TYPE_LATEST)
