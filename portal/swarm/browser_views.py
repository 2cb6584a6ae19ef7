"""Pages and files of the browser node: "Contribute from this browser", its runtime, its span files."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import FileResponse, Http404, JsonResponse
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from portal.accounts.models import NodeToken
from portal.swarm.browser_node import available_spans, runtime_file, span_file_path, span_manifest
from portal.swarm.models import SwarmModel

# Cross-origin isolation: SharedArrayBuffer (multi-threaded WASM) needs COOP + COEP on the page, and
# every script and file it loads must be same-origin or say so (CORP).
ISOLATION = {"Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Embedder-Policy": "require-corp"}


def _isolated(response):
    for name, value in ISOLATION.items():
        response[name] = value
    response["Cross-Origin-Resource-Policy"] = "same-origin"
    return response


@login_required
def contribute_browser(request):
    """The page that turns this tab into a node (the work happens in ``frontend/browser_node/``)."""
    models = []
    for model in SwarmModel.objects.all():
        spans = [
            {"start_block": f.start_block, "end_block": f.end_block, "size": f.size} for f in available_spans(model)
        ]
        models.append({"name": model.name, "num_blocks": model.num_blocks, "spans": spans})
    context = {
        "models": models,
        "config": {
            "models": models,
            "spans_url": reverse("swarm:browser_spans", args=["MODEL"]),
            "token_url": reverse("swarm:browser_token"),
            "runtime_url": reverse("swarm:browser_runtime", args=["ort", "x"]).rsplit("/", 2)[0] + "/",
            "relay_url": "/ws/relay/",
        },
    }
    return _isolated(render(request, "swarm/contribute_browser.html", context))


@login_required
@require_POST
def browser_token(request):
    """A node token for this browser tab (JSON; the page keeps it in memory and uses it to register)."""
    name = f"browser {timezone.now():%Y-%m-%d %H:%M:%S}"
    _, plain = NodeToken.create_for(request.user, name)
    return JsonResponse({"token": plain, "name": name}, status=201)


@require_GET
def runtime(request, folder: str, name: str):
    """onnxruntime-web, msgpack and the browser node's own modules, with the right types and isolation headers."""
    found = runtime_file(folder, name)
    if found is None:
        raise Http404("not a browser-node runtime file")
    path, content_type = found
    response = FileResponse(open(path, "rb"), content_type=content_type)  # noqa: SIM115 - closed by Django
    response["Cache-Control"] = "no-cache" if folder == "node" else "public, max-age=86400"
    return _isolated(response)


@require_GET
def span_list(request, model: str):
    """The spans of ``model`` a browser can serve, each with its SHA-256 (public, like the tracker)."""
    swarm_model = get_object_or_404(SwarmModel, name=model)
    spans = [
        span_manifest(f, request.build_absolute_uri(reverse("swarm:browser_span_file", args=[f.sha256])))
        for f in available_spans(swarm_model)
    ]
    return _isolated(JsonResponse({"model": model, "spans": spans}))


@require_GET
def span_file(request, sha256: str):
    """One span file by its SHA-256 (immutable: the name is the content's hash)."""
    path = span_file_path(sha256)
    if path is None:
        raise Http404("no such span file")
    response = FileResponse(open(path, "rb"), content_type="application/octet-stream")  # noqa: SIM115
    response.block_size = 1 << 20  # 1 MiB chunks: one thread hand-off per MiB under ASGI, not per 4 KiB
    response["Cache-Control"] = "public, max-age=31536000, immutable"
    return _isolated(response)
